r"""Spectra, traces and diagonals of symmetric operators from matrix-vector products.

Any object with ``mv`` (``(d,) -> (d,)``) and ``shape`` works (the operators of
:mod:`geomopt.curvature.operators`, :class:`~geomopt.curvature.KFAC`), and so does a dense symmetric
matrix; ``matmat`` is used when present (Hutchinson's probes in blocks).

- Lanczos (Lanczos 1950) with full reorthogonalization (classical Gram-Schmidt twice against all
  previous vectors): ``A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T``, ``T_m`` tridiagonal; the Ritz values
  ``theta_i`` (eigenvalues of ``T_m``) converge to the extreme eigenvalues; the residual of a Ritz pair
  ``(theta_i, u_i = Q_m s_i)`` is ``||A u_i - theta_i u_i|| = |beta_m s_{m,i}|`` in exact arithmetic.
- Rounding, independent of the dimension ``d``: the sums over the ``d`` entries (dot products, norms,
  Gram-Schmidt coefficients) add blocks of 16384 terms in float64, so a product ``A q`` and its
  reorthogonalization are exact up to about ``eps ||A||`` (``eps`` of the operator's dtype) whatever ``d``
  (a float32 BLAS dot product of length 10^7 is off by ~1e-3 relative); ``||A||`` is estimated by
  ``scale = max_j ||A q_j||`` over the products seen (a lower bound that the largest eigenvalues reach
  quickly). So a residual below ``floor = 16 eps scale`` is rounding noise:

  * breakdown (the Krylov space is invariant) is declared when ``beta_j <= floor``;
  * a pair has converged when its residual is ``<= max(tol |theta_i|, floor)``: the Ritz estimate
    ``|beta_m s_{m,i}|`` decides when to stop, and :func:`lanczos_top_eigenvalues` and
    :func:`power_iteration` report ``converged`` only after checking the true residual
    ``||A u_i - theta_i u_i||`` with one more product per pair (for a symmetric matrix an eigenvalue
    lies within that residual of ``theta_i``).
- Power iteration: ``v <- A v / ||A v||``; the Rayleigh quotient ``rho = v^T A v`` converges to the
  eigenvalue of largest magnitude; stops at the true residual rule above (``A v`` is computed anyway).
- Hutchinson (1989): ``tr(A) = E[z^T A z]`` and ``diag(A) = E[z * A z]`` for Rademacher ``z``. Stop rule
  (the stated tolerance): after at least ``min_samples`` probes, stop when the estimated standard error
  of the mean is at most ``tol / 2`` relative (``tol * |estimate| / 2``; for the diagonal in the
  Euclidean norm), so by the central limit theorem the estimate is within ``tol`` relative of the truth
  with about 95% probability.
- Stochastic Lanczos quadrature (Golub & Meurant; Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao
  2019): for a random unit ``v``, ``m`` Lanczos steps give the ``m``-node Gauss quadrature of the
  spectral measure ``mu_v = sum_i (v^T u_i)^2 delta(lambda_i)``: nodes ``theta_j``, weights ``tau_j^2``
  (first components of ``T_m``'s eigenvectors); ``E_v mu_v`` is the spectral density
  ``(1/d) sum_i delta(lambda_i)``. The quadrature is exact for polynomials of degree ``< 2m``, so its
  moments ``sum_j tau_j^2 theta_j^k`` equal ``v^T A^k v`` for ``k < 2m``. The smooth density averages
  the probes' quadratures convolved with a Gaussian of width ``sigma``.

Every product is checked: a NaN or inf in the operator's output (a NaN weight or input) raises
``FloatingPointError`` naming the function and the product, never a NaN result or a ``LinAlgError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from geomopt.checks import check_int, check_number


class _Dense:
    def __init__(self, matrix: Tensor):
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"spectral tools: expected a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix, self.shape, self.dtype, self.device = matrix, tuple(matrix.shape), matrix.dtype, matrix.device

    def mv(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    def matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V


class _OnParams:
    """An operator on flat vectors in the order of its ``params`` (K-FAC, EKFAC), given its size."""

    def __init__(self, op):
        p = op.params
        d = sum(t.numel() for t in p)
        self.op, self.shape, self.dtype, self.device = op, (d, d), p[0].dtype, p[0].device

    def mv(self, v: Tensor) -> Tensor:
        return self.op.mv(v)

    def matmat(self, V: Tensor) -> Tensor:
        return self.op.matmat(V) if hasattr(self.op, "matmat") else torch.stack(
            [self.op.mv(V[:, i]) for i in range(V.shape[1])], dim=1)


def as_operator(op):
    """A dense matrix, or an operator on flat parameter vectors without a ``shape`` (K-FAC and EKFAC
    have ``params``), wrapped as an operator; operators with ``mv`` and ``shape`` are returned as they are."""
    if isinstance(op, Tensor):
        return _Dense(op)
    if not hasattr(op, "mv"):
        raise ValueError(f"spectral tools: {type(op).__name__} is neither a matrix nor an operator with mv()")
    if not hasattr(op, "shape"):
        if hasattr(op, "params"):
            return _OnParams(op)
        raise ValueError(f"spectral tools: operator {type(op).__name__} has neither a shape nor params")
    return op


def _dim(op) -> int:
    return int(op.shape[0])


def _like(op) -> dict:
    return {"dtype": getattr(op, "dtype", torch.get_default_dtype()), "device": getattr(op, "device", "cpu")}


#: Rounding noise of a product and its reorthogonalization, in units of ``eps * scale`` (module docstring).
_NOISE = 16.0


def _floor(like: dict, scale: float) -> float:
    """The residual below which a product's rounding hides everything: ``16 eps scale``."""
    return _NOISE * torch.finfo(like["dtype"]).eps * scale


#: Block length of the sums over ``d`` (below).
_BLOCK = 16384


def _dots(rows: Tensor, w: Tensor) -> Tensor:
    """``rows @ w`` in float64 for ``rows`` ``(m, d)`` or ``(d,)``: the products summed by blocks of 16384 in
    the working dtype, the blocks' sums in float64, so the rounding does not grow with ``d``."""
    parts = [rows[..., s:s + _BLOCK] @ w[s:s + _BLOCK] for s in range(0, w.shape[0], _BLOCK)]
    return torch.stack(parts).double().sum(0)


def _norm(w: Tensor) -> float:
    return math.sqrt(float(_dots(w, w)))


def _finite(t: Tensor, who: str, what: str) -> Tensor:
    """``t``, or ``FloatingPointError`` naming ``what`` and how many of its entries are NaN / inf."""
    if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):  # the sum: one cheap pass
        nan, total = int(torch.isnan(t).sum()), t.numel()
        inf = int(torch.isinf(t).sum())
        raise FloatingPointError(f"{who}: {what} is non-finite ({nan} NaN and {inf} inf of {total} entries; "
                                 "a NaN or inf weight or input?)")
    return t


def _apply(op, V: Tensor, like: dict, who: str, first: int) -> Tensor:
    """``A V`` for a vector or the columns of a matrix (products ``first``, ``first + 1``, ...), checked finite."""
    if V.dim() == 1:
        out = op.mv(V)
    elif hasattr(op, "matmat"):
        out = op.matmat(V)
    else:
        out = torch.stack([op.mv(V[:, i]) for i in range(V.shape[1])], dim=1)
    n = 1 if V.dim() == 1 else V.shape[1]
    where = f"product {first}" if n == 1 else f"products {first}-{first + n - 1}"
    return _finite(out.to(**like), who, f"the operator's output at {where}")


def _start(d: int, v0: Tensor | None, generator: torch.Generator | None, like: dict, who: str) -> Tensor:
    """A unit start vector: ``v0`` normalized, or a random Gaussian direction."""
    if v0 is None:
        v = torch.randn(d, generator=generator, dtype=torch.float64)
        return (v / torch.linalg.vector_norm(v)).to(**like)
    if not isinstance(v0, Tensor) or v0.shape != (d,):
        got = tuple(v0.shape) if isinstance(v0, Tensor) else type(v0).__name__
        raise ValueError(f"{who}: v0 of shape {got} for an operator of size {d}")
    v = _finite(v0.to(**like), who, "v0")
    norm = _norm(v)
    if norm == 0:
        raise ValueError(f"{who}: v0 is the zero vector")
    return v / norm


@dataclass
class Lanczos:
    """``m`` Lanczos steps: ``alpha`` ``(m,)`` and ``beta`` ``(m,)`` (``beta[j]`` couples step ``j`` to the
    next; 0 at a breakdown, after which a restart goes on from a new direction), orthonormal ``Q``
    ``(d, m)``; ``products`` = matrix-vector products; ``scale`` = ``max_j ||A q_j||`` (a lower bound on
    ``||A||``, the scale of the rounding noise)."""

    alpha: Tensor
    beta: Tensor
    Q: Tensor
    products: int
    scale: float = 0.0

    def tridiagonal(self) -> Tensor:
        """``T_m`` ``(m, m)`` in float64."""
        a, b = self.alpha.double(), self.beta[:-1].double()
        return torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)


def _orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
    """``w`` minus its projection on the rows of ``basis``: classical Gram-Schmidt, twice ("twice is enough")."""
    for _ in range(2):
        w = w - basis.T @ _dots(basis, w).to(w.dtype)
    return w


def _lanczos(op, steps: int, v0: Tensor | None, generator: torch.Generator | None,
             callback: Callable[[Lanczos], bool] | None, restart: bool, who: str) -> Lanczos:
    op = as_operator(op)
    d = _dim(op)
    steps = min(check_int(who, "steps", steps, low=1), d)
    like = _like(op)
    q = _start(d, v0, generator, like, who)
    Q = torch.empty(steps, d, **like)  # rows: only the pages of the steps taken are touched
    alpha = torch.zeros(steps, dtype=torch.float64)
    beta = torch.zeros(steps, dtype=torch.float64)
    scale = 0.0
    for j in range(steps):
        Q[j] = q
        w = _apply(op, q, like, who, j + 1)
        scale = max(scale, _norm(w))
        alpha[j] = float(_dots(q, w))
        w = _orthogonalize(w, Q[:j + 1])
        b = _norm(w)
        m = j + 1
        breakdown = b <= _floor(like, scale)  # A q_j lies in the span of Q up to rounding
        beta[j] = 0.0 if breakdown else b
        run = Lanczos(alpha[:m], beta[:m], Q[:m].T, m, scale)
        if m == steps or (breakdown and not restart) or (callback is not None and callback(run)):
            break
        if breakdown:  # an invariant subspace: go on from a random direction orthogonal to it
            w = _orthogonalize(_start(d, None, generator, like, who), Q[:m])
            b = _norm(w)
        q = w / b
    return run


def lanczos(op, steps: int, *, v0: Tensor | None = None, generator: torch.Generator | None = None,
            callback: Callable[[Lanczos], bool] | None = None, restart: bool = False) -> Lanczos:
    """Lanczos tridiagonalization with full reorthogonalization, from ``v0`` (default: a random unit vector).

    Stops after ``steps`` steps, or when ``callback(partial result)`` returns true (checked after every
    step), or at a breakdown (an invariant subspace: ``beta_j <= 16 eps max_i ||A q_i||``, module
    docstring); with ``restart``, a breakdown sets ``beta_j = 0`` and goes on from a random direction
    orthogonal to the vectors so far (the top eigenvalues need it, a quadrature of ``v0`` does not).

    Raises:
        ValueError: ``steps < 1``, or a ``v0`` of the wrong shape or zero.
        FloatingPointError: a non-finite ``v0`` or operator output.
    """
    return _lanczos(op, steps, v0, generator, callback, restart, "lanczos")


@dataclass
class EigenResult:
    """Eigenvalues ``(k,)`` (descending in the chosen order), eigenvectors ``(d, k)``, the residuals
    ``||A u_i - lambda_i u_i||`` ``(k,)`` (true residuals, from one more product per pair), matrix-vector
    products spent (those included), and whether every residual met the stop rule."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    products: int
    converged: bool


def _ritz(run: Lanczos, k: int, which: str) -> tuple[Tensor, Tensor, Tensor]:
    theta, s = torch.linalg.eigh(run.tridiagonal())
    order = torch.argsort(theta.abs() if which == "LM" else theta, descending=True)[:k]
    res = (run.beta[-1] * s[-1, order]).abs()
    return theta[order], s[:, order], res


def _met(residuals: Tensor, theta: Tensor, tol: float, like: dict, scale: float) -> bool:
    """Every residual ``<= max(tol |theta_i|, 16 eps scale)`` (module docstring)."""
    return bool((residuals <= torch.clamp(tol * theta.abs(), min=_floor(like, scale))).all())


def lanczos_top_eigenvalues(op, k: int = 1, *, tol: float = 1e-6, max_steps: int | None = None, which: str = "LA",
                            generator: torch.Generator | None = None, v0: Tensor | None = None) -> EigenResult:
    """The ``k`` largest eigenvalues (``which='LA'``, algebraic; ``'LM'``: largest magnitude) of a
    symmetric operator by Lanczos with full reorthogonalization (restarted at a breakdown).

    Stop rule: every wanted Ritz pair has residual ``|beta_m s_{m,i}| <= max(tol |theta_i|, 16 eps ||A||)``
    (for a symmetric matrix an eigenvalue lies within that residual of each Ritz value; the second term is
    the rounding floor of the dtype, module docstring), or ``max_steps`` steps (default
    ``min(d, max(2k + 20, 50))``). Then the true residuals ``||A u_i - theta_i u_i||`` are computed
    (``k`` more products) and ``converged`` is true only if they meet the same rule; ``residuals`` are
    those true residuals.

    Raises:
        ValueError: ``k`` outside ``1..d``, ``max_steps < k``, an unknown ``which``, or ``tol`` not a
            finite number > 0.
        FloatingPointError: the operator's output is non-finite (a NaN weight or input).
    """
    who = "lanczos_top_eigenvalues"
    op = as_operator(op)
    d = _dim(op)
    k = check_int(who, "k", k, low=1)
    if k > d:
        raise ValueError(f"{who}: k={k} must be between 1 and the operator size {d}")
    if which not in ("LA", "LM"):
        raise ValueError(f"{who}: which must be 'LA' or 'LM', got {which!r}")
    tol = check_number(who, "tol", tol, low=0, low_open=True)
    max_steps = min(d, check_int(who, "max_steps", max_steps, low=k) if max_steps is not None else max(2 * k + 20, 50))
    like = _like(op)

    def done(run: Lanczos) -> bool:
        if run.products < k:
            return False
        theta, _, res = _ritz(run, k, which)
        return _met(res, theta, tol, like, run.scale)

    run = _lanczos(op, max_steps, v0, generator, done, True, who)
    theta, s, _ = _ritz(run, k, which)
    vectors = run.Q @ s.to(run.Q.dtype)
    residuals = torch.tensor([_norm(_apply(op, u, like, who, run.products + i + 1) - theta[i].item() * u)
                              for i, u in enumerate(vectors.T)])  # one mv each (no vmap through a model's hooks)
    converged = _met(residuals, theta, tol, like, run.scale)
    return EigenResult(theta, vectors, residuals, run.products + k, converged)


def power_iteration(op, *, tol: float = 1e-4, max_iter: int = 100, generator: torch.Generator | None = None,
                    v0: Tensor | None = None) -> EigenResult:
    """The eigenvalue of largest magnitude by power iteration (the simple reference).

    Stop rule: the true residual of the current iterate, ``||A v - rho v|| <= max(tol |rho|, 16 eps ||A v||)``
    with ``rho = v^T A v`` (so ``rho`` is within ``tol |rho|`` of an eigenvalue; free: ``A v`` is the
    iteration's product), or ``max_iter`` iterations (``converged`` says which).

    Raises:
        ValueError: ``tol`` not a finite number > 0, ``max_iter < 1``, a bad ``v0``.
        FloatingPointError: the operator's output is non-finite (a NaN weight or input).
    """
    who = "power_iteration"
    op = as_operator(op)
    tol = check_number(who, "tol", tol, low=0, low_open=True)
    max_iter = check_int(who, "max_iter", max_iter, low=1)
    like = _like(op)
    v = _start(_dim(op), v0, generator, like, who)
    scale = 0.0
    for it in range(1, max_iter + 1):
        w = _apply(op, v, like, who, it)
        value = float(_dots(v, w))
        residual, norm = _norm(w - value * v), _norm(w)
        scale = max(scale, norm)
        converged = _met(torch.tensor([residual]), torch.tensor([value]), tol, like, scale)
        if converged or it == max_iter:
            break
        v = w / norm
    return EigenResult(torch.tensor([value], dtype=torch.float64), v[:, None], torch.tensor([residual]), it, converged)


@dataclass
class HutchinsonResult:
    """The estimate (a float for the trace, ``(d,)`` for the diagonal), its standard error (same form),
    the random probes used, the matrix-vector products spent (probes plus ``2 * deflate``), and whether
    the stop rule was met within ``max_samples``."""

    estimate: float | Tensor
    stderr: float | Tensor
    samples: int
    converged: bool
    products: int = 0


def _rademacher(d: int, b: int, generator: torch.Generator | None, like: dict) -> Tensor:
    return (torch.randint(0, 2, (d, b), generator=generator) * 2 - 1).to(**like)


def _hutchinson(op, kind: str, tol: float, min_samples: int, max_samples: int, block: int,
                generator: torch.Generator | None, deflate: int = 0) -> HutchinsonResult:
    who = "hutchinson_trace" if kind == "trace" else "hutchinson_diagonal"
    op = as_operator(op)
    d = _dim(op)
    tol = check_number(who, "tol", tol, low=0, low_open=True)
    min_samples = check_int(who, "min_samples", min_samples, low=2)
    max_samples = check_int(who, "max_samples (>= min_samples)", max_samples, low=min_samples)
    block = check_int(who, "block", block, low=1)
    if check_int(who, "deflate", deflate, low=0) >= d:
        raise ValueError(f"{who}: deflate must be < the operator size {d}, got {deflate}")
    like = _like(op)
    exact, Q = 0.0, None
    if deflate:  # Hutch++: the trace on range(A S) exactly, Hutchinson on its complement
        Q = torch.linalg.qr(_apply(op, _rademacher(d, deflate, generator, like), like, who, 1))[0]
        exact = float(torch.sum(Q * _apply(op, Q, like, who, deflate + 1)))
    s1 = torch.zeros(d if kind == "diag" else 1, dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    n = 0
    while n < max_samples:
        b = min(block, max_samples - n)
        Z = _rademacher(d, b, generator, like)
        if Q is not None:
            Z = Z - Q @ (Q.T @ Z)
        prod = (Z * _apply(op, Z, like, who, 2 * deflate + n + 1)).double().cpu()  # (d, b): z * A z
        samples = prod if kind == "diag" else prod.sum(0, keepdim=True)
        s1 += samples.sum(1)
        s2 += samples.square().sum(1)
        n += b
        mean = s1 / n
        var = (s2 / n - mean.square()).clamp(min=0) * n / (n - 1) if n > 1 else torch.full_like(mean, math.inf)
        stderr = (var / n).sqrt()
        err, size = torch.linalg.vector_norm(stderr), torch.linalg.vector_norm(mean + exact)
        if n >= min_samples and err <= 0.5 * tol * size:
            break
    converged = bool(n >= min_samples and err <= 0.5 * tol * size)
    if kind == "trace":
        return HutchinsonResult(exact + float(mean), float(stderr), n, converged, n + 2 * deflate)
    return HutchinsonResult(mean, stderr, n, converged, n)


def hutchinson_trace(op, *, tol: float = 1e-2, min_samples: int = 10, max_samples: int = 1000, block: int = 10,
                     deflate: int = 0, generator: torch.Generator | None = None) -> HutchinsonResult:
    """``tr(A)`` by Hutchinson's estimator with Rademacher probes, ``block`` probes per ``matmat``.

    ``deflate = k > 0``: Hutch++ (Meyer, Musco, Musco & Woodruff 2021): ``Q = orth(A S)`` for ``k`` random
    sign vectors ``S``, ``tr(A) = tr(Q^T A Q) + tr((I - QQ^T) A (I - QQ^T))``, the first exactly
    (``2k`` products), the second by Hutchinson; far fewer probes when a few eigenvalues dominate
    (a network Hessian's outliers).

    Stop rule (module docstring): standard error ``<= tol |estimate| / 2`` (about 95% probability of a
    relative error ``<= tol``), after at least ``min_samples`` and at most ``max_samples`` probes.

    Raises:
        ValueError: ``tol`` not a finite number > 0, ``min_samples < 2``, ``max_samples < min_samples``,
            ``block < 1``, or ``deflate`` outside ``[0, d)``.
        FloatingPointError: the operator's output is non-finite (a NaN weight or input).
    """
    return _hutchinson(op, "trace", tol, min_samples, max_samples, block, generator, deflate)


def hutchinson_diagonal(op, *, tol: float = 1e-1, min_samples: int = 10, max_samples: int = 1000, block: int = 10,
                        generator: torch.Generator | None = None) -> HutchinsonResult:
    """``diag(A)`` ``(d,)`` by ``mean(z * A z)`` over Rademacher probes; stops when the standard errors'
    Euclidean norm is ``<= tol ||estimate|| / 2``. Raises as :func:`hutchinson_trace`."""
    return _hutchinson(op, "diag", tol, min_samples, max_samples, block, generator)


@dataclass
class SpectralDensity:
    """Gauss quadratures of ``P`` probes: ``nodes`` and ``weights`` ``(P, m)`` (each probe's weights sum
    to 1; a probe stopped early at breakdown has zero-weight padding)."""

    nodes: Tensor
    weights: Tensor
    products: int

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """The smoothed density ``(1/P) sum_{p,j} w_pj N(t; theta_pj, sigma^2)`` at the points ``grid``."""
        if sigma <= 0:
            raise ValueError(f"SpectralDensity.density: sigma must be > 0, got {sigma}")
        t = grid.double().reshape(-1, 1, 1)
        g = torch.exp(-0.5 * ((t - self.nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (g * self.weights).sum((1, 2)) / self.nodes.shape[0]

    def moment(self, k: int) -> float:
        """``(1/P) sum_{p,j} w_pj theta_pj^k``: an estimate of ``tr(A^k) / d``."""
        return float((self.weights * self.nodes ** k).sum() / self.nodes.shape[0])

    def grid(self, points: int = 400, margin: float = 0.05, sigma: float | None = None) -> Tensor:
        """Evenly spaced points covering every node, ``margin`` of the range (and 5 ``sigma``) beyond each end."""
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        pad = max(margin * (hi - lo), 5 * sigma if sigma else 0.0, 1e-12)
        return torch.linspace(lo - pad, hi + pad, points, dtype=torch.float64)


def slq_density(op, *, steps: int = 30, probes: int = 10, generator: torch.Generator | None = None
                ) -> SpectralDensity:
    """The spectral density by stochastic Lanczos quadrature: ``probes`` random unit Gaussian start
    vectors, ``steps`` Lanczos steps each (full reorthogonalization; a probe stops at a breakdown, its
    quadrature then exact).

    Raises:
        ValueError: ``steps`` or ``probes`` not an integer >= 1.
        FloatingPointError: the operator's output is non-finite (a NaN weight or input).
    """
    who = "slq_density"
    op = as_operator(op)
    m = min(check_int(who, "steps", steps, low=1), _dim(op))
    probes = check_int(who, "probes", probes, low=1)
    nodes = torch.zeros(probes, m, dtype=torch.float64)
    weights = torch.zeros(probes, m, dtype=torch.float64)
    products = 0
    for p in range(probes):
        run = _lanczos(op, m, None, generator, None, False, who)
        theta, s = torch.linalg.eigh(run.tridiagonal())
        j = len(theta)
        nodes[p, :j], weights[p, :j] = theta, s[0] ** 2
        nodes[p, j:] = theta[-1]
        products += run.products
    return SpectralDensity(nodes, weights, products)
