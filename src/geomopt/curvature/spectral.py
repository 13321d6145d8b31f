r"""Spectra, traces and diagonals of symmetric operators from matrix-vector products.

Any object with ``mv`` (``(d,) -> (d,)``) and ``shape`` works (the operators of
:mod:`geomopt.curvature.operators`, :class:`~geomopt.curvature.KFAC`), and so does a dense symmetric
matrix; ``matmat`` is used when present (Hutchinson's probes in blocks).

- Lanczos (Lanczos 1950) with full reorthogonalization (classical Gram-Schmidt twice against all
  previous vectors): ``A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T``, ``T_m`` tridiagonal; the Ritz values
  ``theta_i`` (eigenvalues of ``T_m``) converge to the extreme eigenvalues; the residual of a Ritz pair
  is ``|beta_m s_{m,i}|`` (``s_i`` the eigenvector of ``T_m``), which is the stop rule of
  :func:`lanczos_top_eigenvalues`: every wanted pair has residual ``<= tol * |theta_i|``.
- Power iteration: ``v <- A v / ||A v||``; the Rayleigh quotient converges to the eigenvalue of largest
  magnitude; stops when it changes by at most ``tol`` relative (the PyHessian rule).
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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


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


def _matmat(op, V: Tensor) -> Tensor:
    if hasattr(op, "matmat"):
        return op.matmat(V)
    return torch.stack([op.mv(V[:, i]) for i in range(V.shape[1])], dim=1)


def _unit(d: int, generator: torch.Generator | None, like: dict) -> Tensor:
    v = torch.randn(d, generator=generator, dtype=torch.float64).to(**like)
    return v / torch.linalg.vector_norm(v)


@dataclass
class Lanczos:
    """``m`` Lanczos steps: ``alpha`` ``(m,)`` and ``beta`` ``(m,)`` (``beta[-1]`` couples to the next,
    unformed vector; 0 at breakdown), orthonormal ``Q`` ``(d, m)``; ``products`` = matrix-vector products."""

    alpha: Tensor
    beta: Tensor
    Q: Tensor
    products: int

    def tridiagonal(self) -> Tensor:
        """``T_m`` ``(m, m)`` in float64."""
        a, b = self.alpha.double(), self.beta[:-1].double()
        return torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)


def lanczos(op, steps: int, *, v0: Tensor | None = None, generator: torch.Generator | None = None,
            callback: Callable[[Lanczos], bool] | None = None) -> Lanczos:
    """Lanczos tridiagonalization with full reorthogonalization, from ``v0`` (default: a random unit vector).

    Stops after ``steps`` steps, at breakdown (an invariant subspace: ``beta`` below ``d eps ||T||``),
    or when ``callback(partial result)`` returns true (checked after every step).

    Raises:
        ValueError: ``steps < 1`` or a ``v0`` of the wrong shape.
    """
    op = as_operator(op)
    d = _dim(op)
    if steps < 1:
        raise ValueError(f"lanczos: steps must be >= 1, got {steps}")
    steps = min(steps, d)
    like = _like(op)
    if v0 is None:
        q = _unit(d, generator, like)
    else:
        if v0.shape != (d,):
            raise ValueError(f"lanczos: v0 of shape {tuple(v0.shape)} for an operator of size {d}")
        q = (v0 / torch.linalg.vector_norm(v0)).to(**like)
    Q = torch.zeros(d, steps, **like)
    alpha = torch.zeros(steps, dtype=torch.float64)
    beta = torch.zeros(steps, dtype=torch.float64)
    eps = torch.finfo(like["dtype"]).eps
    scale = 0.0
    m = 0
    for j in range(steps):
        Q[:, j] = q
        w = op.mv(q).to(**like)
        alpha[j] = float(torch.dot(q, w))
        basis = Q[:, :j + 1]
        for _ in range(2):  # classical Gram-Schmidt, twice ("twice is enough")
            w = w - basis @ (basis.T @ w)
        b = float(torch.linalg.vector_norm(w))
        beta[j] = b
        m = j + 1
        scale = max(scale, abs(float(alpha[j])) + b)
        if b <= d * eps * max(scale, 1e-300):
            beta[j] = 0.0
            break
        if callback is not None and callback(Lanczos(alpha[:m], beta[:m], Q[:, :m], m)):
            break
        q = w / b
    return Lanczos(alpha[:m], beta[:m], Q[:, :m], m)


@dataclass
class EigenResult:
    """Eigenvalues ``(k,)`` (descending in the chosen order), eigenvectors ``(d, k)``, the Ritz residual
    bounds ``(k,)``, matrix-vector products spent, and whether the stop rule was met."""

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


def lanczos_top_eigenvalues(op, k: int = 1, *, tol: float = 1e-6, max_steps: int | None = None, which: str = "LA",
                            generator: torch.Generator | None = None, v0: Tensor | None = None) -> EigenResult:
    """The ``k`` largest eigenvalues (``which='LA'``, algebraic; ``'LM'``: largest magnitude) of a
    symmetric operator by Lanczos with full reorthogonalization.

    Stop rule: every wanted Ritz pair has residual ``|beta_m s_{m,i}| <= tol * |theta_i|`` (for a symmetric
    matrix an eigenvalue lies within that residual of each Ritz value), or ``max_steps`` steps
    (default ``min(d, max(2k + 20, 50))``; ``converged`` says which).

    Raises:
        ValueError: ``k`` outside ``1..d``, an unknown ``which``, or a non-positive ``tol``.
    """
    op = as_operator(op)
    d = _dim(op)
    if not 1 <= k <= d:
        raise ValueError(f"lanczos_top_eigenvalues: k={k} must be between 1 and the operator size {d}")
    if which not in ("LA", "LM"):
        raise ValueError(f"lanczos_top_eigenvalues: which must be 'LA' or 'LM', got {which!r}")
    if tol <= 0:
        raise ValueError(f"lanczos_top_eigenvalues: tol must be > 0, got {tol}")
    max_steps = min(d, max_steps if max_steps is not None else max(2 * k + 20, 50))

    def done(run: Lanczos) -> bool:
        if run.products < k:
            return False
        theta, _, res = _ritz(run, k, which)
        return bool((res <= tol * theta.abs()).all())

    run = lanczos(op, max_steps, v0=v0, generator=generator, callback=done)
    theta, s, res = _ritz(run, min(k, run.products), which)
    exhausted = run.beta[-1] == 0  # invariant subspace: the Ritz values are exact eigenvalues
    converged = bool(exhausted or (len(theta) == k and (res <= tol * theta.abs()).all()))
    if len(theta) < k:
        raise ValueError(f"lanczos_top_eigenvalues: the start vector lies in an invariant subspace of dimension "
                         f"{len(theta)} < k={k}; pass another v0 or generator")
    vectors = run.Q @ s.to(run.Q.dtype)
    return EigenResult(theta, vectors, res, run.products, converged)


def power_iteration(op, *, tol: float = 1e-4, max_iter: int = 100, generator: torch.Generator | None = None,
                    v0: Tensor | None = None) -> EigenResult:
    """The eigenvalue of largest magnitude by power iteration (the simple reference).

    Stop rule: the Rayleigh quotient ``v^T A v`` changes by at most ``tol`` relative between two
    iterations, or ``max_iter`` iterations.
    """
    op = as_operator(op)
    d = _dim(op)
    like = _like(op)
    v = _unit(d, generator, like) if v0 is None else (v0 / torch.linalg.vector_norm(v0)).to(**like)
    value, converged, it = None, False, 0
    for it in range(1, max_iter + 1):
        w = op.mv(v).to(**like)
        new = float(torch.dot(v, w))
        norm = torch.linalg.vector_norm(w)
        if norm == 0:
            value, converged = 0.0, True
            break
        v = w / norm
        if value is not None and abs(new - value) <= tol * abs(value):
            value, converged = new, True
            break
        value = new
    residual = torch.tensor([float(torch.linalg.vector_norm(op.mv(v).to(**like) - value * v))])
    return EigenResult(torch.tensor([value], dtype=torch.float64), v[:, None], residual, it + 1, converged)


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
    op = as_operator(op)
    d = _dim(op)
    if tol <= 0 or min_samples < 2 or max_samples < min_samples or block < 1 or not 0 <= deflate < d:
        raise ValueError(f"hutchinson: need tol > 0, 2 <= min_samples <= max_samples, block >= 1 and "
                         f"0 <= deflate < {d}; got tol={tol}, min_samples={min_samples}, max_samples={max_samples}, "
                         f"block={block}, deflate={deflate}")
    like = _like(op)
    exact, Q = 0.0, None
    if deflate:  # Hutch++: the trace on range(A S) exactly, Hutchinson on its complement
        Q = torch.linalg.qr(_matmat(op, _rademacher(d, deflate, generator, like)).to(**like))[0]
        exact = float(torch.sum(Q * _matmat(op, Q).to(**like)))
    s1 = torch.zeros(d if kind == "diag" else 1, dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    n = 0
    while n < max_samples:
        b = min(block, max_samples - n)
        Z = _rademacher(d, b, generator, like)
        if Q is not None:
            Z = Z - Q @ (Q.T @ Z)
        prod = (Z * _matmat(op, Z).to(**like)).double().cpu()  # (d, b): z * A z
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
    """
    return _hutchinson(op, "trace", tol, min_samples, max_samples, block, generator, deflate)


def hutchinson_diagonal(op, *, tol: float = 1e-1, min_samples: int = 10, max_samples: int = 1000, block: int = 10,
                        generator: torch.Generator | None = None) -> HutchinsonResult:
    """``diag(A)`` ``(d,)`` by ``mean(z * A z)`` over Rademacher probes; stops when the standard errors'
    Euclidean norm is ``<= tol ||estimate|| / 2``."""
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
    vectors, ``steps`` Lanczos steps each (full reorthogonalization)."""
    op = as_operator(op)
    if probes < 1:
        raise ValueError(f"slq_density: probes must be >= 1, got {probes}")
    m = min(steps, _dim(op))
    nodes = torch.zeros(probes, m, dtype=torch.float64)
    weights = torch.zeros(probes, m, dtype=torch.float64)
    products = 0
    for p in range(probes):
        run = lanczos(op, m, generator=generator)
        theta, s = torch.linalg.eigh(run.tridiagonal())
        j = len(theta)
        nodes[p, :j], weights[p, :j] = theta, s[0] ** 2
        nodes[p, j:] = theta[-1]
        products += run.products
    return SpectralDensity(nodes, weights, products)
