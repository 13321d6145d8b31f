r"""Kronecker-factored curvature: K-FAC (Martens & Grosse 2015; KFC for convolutions, Grosse &
Martens 2016) and EKFAC (George, Laurent, Bouthillier, Ballas & Vincent, NeurIPS 2018).

For a supported layer with combined matrix ``[W | b]`` (``(d_out, d_in)``), expanded inputs
``a_nt`` and output gradients ``g_nkt`` (see :mod:`geomopt.curvature.capture`), the curvature
``F = (1/N) sum_{n,k} vec(M_nk) vec(M_nk)^T`` with ``M_nk = sum_t g_nkt a_nt^T`` is approximated by

- K-FAC: ``F ~ A (x) G`` with ``A = (1/(N T)) sum_{n,t} a_nt a_nt^T`` and
  ``G = (1/N) sum_{n,k,t} g_nkt g_nkt^T`` (for T = 1: ``A = E[a a^T]``, ``G = E[g g^T]``;
  for convolutions the KFC "expand" scaling);
- EKFAC: ``F ~ (U_A (x) U_G) diag(s) (U_A (x) U_G)^T`` with ``U_A, U_G`` the eigenvectors of
  ``A, G`` and ``s = (1/N) sum_{n,k} (U_G^T M_nk U_A)^2`` (elementwise) -- the exact diagonal of
  ``F`` in the Kronecker eigenbasis, hence a Frobenius approximation of ``F`` at least as good as
  K-FAC's (whose diagonal in that basis is ``e_A (x) e_G``).

Vectorization: with PyTorch's row-major flattening of ``[W | b]``, ``vec(M)`` has index
``o * d_in + i``, so the K-FAC block in that order is ``kron(G, A)`` (``kron(A, G)`` in the
column-stacking ``vec`` of the papers), and ``(A (x) G) vec(M) = vec(G M A)``.
:meth:`KFAC.to_dense` and :meth:`EKFAC.to_dense` are in the order of :attr:`params`
(``torch.cat([p.flatten() for p in params])``: each layer's weight, then its bias).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from geomopt.curvature.capture import Capture, backprop_output_grads
from geomopt.curvature.layers import LayerHandler, names_of_supported, per_example_gradients, supported_layers

CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------- statistics of one batch
def kronecker_factors(a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """``A = (1/(N T)) sum a a^T`` ``(d_in, d_in)`` and ``G = (1/N) sum g g^T`` ``(d_out, d_out)``
    from ``a`` ``(N, T, d_in)`` and ``g`` ``(K, N, T, d_out)``."""
    n, t, d_in = a.shape
    a2 = a.reshape(-1, d_in)
    g2 = g.reshape(-1, g.shape[-1])
    return (a2.T @ a2).div_(n * t), (g2.T @ g2).div_(n)


def eigenbasis_diagonal(a: Tensor | Callable[[], Tensor], g: Tensor | Callable[[], Tensor], u_a: Tensor, u_g: Tensor,
                        *, per_example: Callable[[int, int], Tensor] | None = None,
                        g_shape: Sequence[int] | None = None) -> Tensor:
    """``s = (1/N) sum_{n,k} (U_G^T M_nk U_A)^2`` ``(d_out, d_in)``, ``M_nk = sum_t g_nkt a_nt^T``.

    One position per example (T = 1): ``s = sum_k (g_k U_G)^2^T (a U_A)^2 / N``, two matmuls
    (:func:`diagonal_from_rotated`). Otherwise the rotated per-example gradients are formed in chunks
    of examples, each side rotated in the cheaper order: before forming them (``a U_A``: ``N T d_in^2``
    multiply-adds; ``g U_G``: ``N T d_out^2``) or after (``M_n U_A``: ``N d_out d_in^2``;
    ``U_G^T M_n``: ``N d_in d_out^2``), i.e. before iff ``T`` is at most the other side's width.

    ``per_example(i, j)``, when given, returns ``M_nk`` of examples ``i:j`` ``(K, j - i, d_out, d_in)``
    (e.g. :meth:`Capture.per_example_gradients`, which for a convolution needs no patches); it is
    used when both sides rotate after. ``a`` and ``g`` may be functions returning the inputs / output
    gradients, called only if they are needed (``g`` then with its shape ``g_shape``).
    """
    k, n, t, d_out = g.shape if g_shape is None else g_shape
    d_in = u_a.shape[0]
    a_first, g_first = t <= d_out, t <= d_in
    if t == 1 or a_first or g_first or per_example is None:
        a = a() if callable(a) else a
        g = g() if callable(g) else g
    if t == 1:
        return diagonal_from_rotated(g @ u_g, a @ u_a)
    aa = a @ u_a if a_first else None  # (N, T, d_in)
    ga = g @ u_g if g_first else g  # (K, N, T, d_out)
    s = torch.zeros(d_out, d_in, dtype=u_a.dtype, device=u_a.device)
    step = max(1, CHUNK_ELEMENTS // max(1, k * d_out * d_in))
    for i in range(0, n, step):
        if a_first or g_first:
            m = per_example_gradients(aa[i:i + step] if a_first else a[i:i + step], ga[:, i:i + step])
        elif per_example is not None:
            m = per_example(i, i + step)
        else:
            m = per_example_gradients(a[i:i + step], g[:, i:i + step])  # (K, n_i, d_out, d_in)
        if not a_first:
            m = m @ u_a
        if not g_first:
            m = u_g.T @ m
        s += m.square().sum((0, 1))
    return s.div_(n)


def captured_diagonal(capture: Capture, name: str, u_a: Tensor, u_g: Tensor, batch: int | None = None) -> Tensor:
    """:func:`eigenbasis_diagonal` of layer ``name`` (micro-batch ``batch``) recorded by ``capture``: per-example
    gradients by the layer's own rule (:meth:`Capture.per_example_gradients`), inputs expanded only if the
    order needs them."""
    return eigenbasis_diagonal(lambda: capture.inputs(name, batch), lambda: capture.output_grads(name, batch), u_a,
                               u_g, per_example=lambda i, j: capture.per_example_gradients(name, i, j, batch),
                               g_shape=capture.grad_shape(name, batch))


def diagonal_from_rotated(ga: Tensor, aa: Tensor) -> Tensor:
    """The eigenbasis diagonal for one position per example from ``ga = g U_G`` ``(K, N, 1, d_out)`` and
    ``aa = a U_A`` ``(N, 1, d_in)``: ``sum_k (ga_k^2)^T (aa^2) / N``."""
    n = aa.shape[0]
    return (ga[:, :, 0].square().sum(0).T @ aa[:, 0].square()).div_(n)


#: Random probe vectors of the exactness check of :func:`factored_rotation`.
PROBES = 8


@functools.lru_cache(maxsize=32)
def _probes(d_in: int, device: torch.device) -> Tensor:
    """The fixed probe vectors (rows) of :func:`factored_rotation`: Gaussian, variance ``1 / PROBES``, seed 0."""
    probes = torch.randn(PROBES, d_in, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return probes.div_(math.sqrt(PROBES)).to(device)


def factored_rotation(grad_matrix: Tensor, a: Tensor, g: Tensor, ga: Tensor, aa: Tensor) -> Tensor | None:
    """``U_G^T M U_A`` of a gradient matrix ``M`` ``(d_out, d_in)`` from the per-example quantities that
    produced it, without the two dense rotations.

    ``a`` ``(N, T, d_in)`` and ``g`` ``(1, N, T, d_out)`` are a :class:`~geomopt.curvature.Capture` record
    of one backward pass with a loss averaged over the batch (``g`` multiplied by ``N``), and
    ``ga = g U_G``, ``aa = a U_A``. When ``M = c g^T a / N`` (``c`` = 1 for the gradient of that loss;
    any ``c`` for a clipped or rescaled gradient), ``U_G^T M U_A = c ga^T aa / N``: ``2 N T d_out d_in``
    flops instead of ``2 d_out d_in (d_out + d_in)``.

    The identity is checked, never assumed, on ``PROBES`` = 8 Gaussian probe vectors ``V`` ``(d_in, 8)``
    (entries of variance 1/8, a fixed seed), in float64: with ``P = g^T (a V) / N`` (exact up to float64
    rounding, ``N T d_in 8`` multiply-adds instead of forming ``g^T a``), ``c`` is the least-squares scale
    of ``M V`` on ``P`` and the residual ``||M V - c P||_F`` must be at the rounding level of ``M``,
    ``4 sqrt(N T) eps ||g||_F ||a||_F / N`` (``eps`` of the dtype; the rounding of a length-``N T`` sum of
    products). ``E ||E V||_F^2 = ||E||_F^2`` for any mismatch ``E = M - c g^T a / N``, and a mismatch
    ``r`` times that level passes with probability ``P(chi2_8 < 8 / r^2)`` (below 1e-5 for ``r = 5``).
    Otherwise -- an L2 term in the loss, a parameter also used outside the layer, a gradient hook, an
    uncaptured second backward, several passes (``K > 1``) -- returns ``None``: rotate ``M`` densely.
    """
    if g.shape[0] != 1 or not all_finite(grad_matrix):
        return None
    n, t, d_in = a.shape
    d_out = g.shape[-1]
    a2, g2 = a.reshape(n * t, d_in), g.reshape(n * t, d_out)
    probes = _probes(d_in, grad_matrix.device)  # (8, d_in): products in this order are the fast ones
    mv = probes @ grad_matrix.T.double()
    pv = (probes @ a2.T.double()) @ g2.double() / n
    pp = float(torch.dot(pv.reshape(-1), pv.reshape(-1)))
    c = float(torch.dot(mv.reshape(-1), pv.reshape(-1))) / pp if pp > 0 else 1.0
    if not math.isfinite(c):
        return None
    residual = float(torch.linalg.vector_norm(mv - pv.mul_(c)))
    eps = torch.finfo(grad_matrix.dtype).eps
    tol = 4 * math.sqrt(n * t) * eps * float(torch.linalg.vector_norm(g2)) * float(torch.linalg.vector_norm(a2)) / n
    if not residual <= tol * abs(c):
        return None
    rotated = ga.reshape(n * t, d_out).T @ aa.reshape(n * t, d_in)
    return rotated.mul_(c / n)


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite, by one reduction: a NaN/inf entry makes the sum
    non-finite; only when the sum is non-finite (or overflowed) are the entries checked one by one."""
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _nonfinite_factor(name: str) -> FloatingPointError:
    return FloatingPointError(f"{name}: the Kronecker factor has NaN/inf entries (a NaN/inf gradient or "
                              "activation reached it); lower the learning rate or raise the damping")


def symeig(matrix: Tensor, *, name: str = "factor", max_tries: int = 4) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending, clamped at 0) and eigenvectors of a symmetric PSD ``matrix``.

    Computed in the matrix's precision when it is float32 or float64 (float64 otherwise), on the
    symmetrized matrix; if LAPACK fails or returns non-finite values, retried with jitter
    ``1e-10 * tr/d * 10^i`` added to the diagonal, and finally in float64. Results are cast back
    to ``matrix.dtype``.

    Raises:
        FloatingPointError: ``matrix`` has NaN/inf entries, or every try failed (naming ``name``).
    """
    if not all_finite(matrix):
        raise _nonfinite_factor(name)
    last: Exception | None = None
    dtypes = [matrix.dtype] if matrix.dtype in (torch.float32, torch.float64) else []
    if torch.float64 not in dtypes:
        dtypes.append(torch.float64)
    for dtype in dtypes:
        m = matrix.to(dtype)
        m = (m + m.T) / 2
        scale = max(float(m.diagonal().abs().mean()), 1e-30)
        for i in range(max_tries):
            try:
                jitter = 0.0 if i == 0 else 1e-10 * scale * 10 ** i
                evals, evecs = torch.linalg.eigh(m + jitter * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
                                                 if jitter else m)
                if all_finite(evals) and all_finite(evecs):
                    return (evals - jitter).clamp_min(0).to(matrix.dtype), evecs.to(matrix.dtype)
            except RuntimeError as exc:  # torch.linalg.LinAlgError subclasses RuntimeError
                last = exc
    raise FloatingPointError(f"{name}: eigendecomposition failed after {max_tries} tries with growing jitter"
                             + (f" ({last})" if last else ""))


def eigen_clusters(evals: Tensor, rtol: float | None = None) -> Tensor:
    """Labels ``0, 1, ...`` (in ``evals.dtype``) of the runs of ascending ``evals`` whose consecutive gaps
    are at most ``rtol * max |evals|`` (default ``sqrt(eps)`` of the dtype): numerically repeated
    eigenvalues, e.g. the zero eigenvalues of a factor whose inputs never vary along some direction
    (constant pixels). Their eigenvectors are any orthonormal basis of the eigenspace, turned by rounding:
    a relative change ``delta`` of the matrix turns eigenvectors with gap ``g`` by ``delta max|e| / g``."""
    if rtol is None:
        rtol = torch.finfo(evals.dtype).eps ** 0.5
    apart = (evals[1:] - evals[:-1]) > rtol * evals.abs().max()
    return torch.cat([apart.new_zeros(1), apart]).cumsum(0).to(evals.dtype)


def cluster_mean(s: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``s`` (``(d_G, d_A)``, an eigenbasis diagonal) averaged over each block of equal labels ``rows`` x
    ``cols`` (:func:`eigen_clusters` of ``G`` and ``A``); returned as it is where every label is distinct.

    Within a block of repeated eigenvalues the eigenvectors are arbitrary, and so is ``s_ij =
    E[(g.u_i)^2 (a.v_j)^2]`` entry by entry; the block's mean is not: ``sum_{j in C} (a.v_j)^2 =
    |P_C a|^2`` for any orthonormal basis ``v_j`` of the eigenspace ``C``. With it the preconditioner on
    the block, ``U_C diag(1 / (s_C + damping)) U_C^T = P_C / (s_C + damping)``, no longer depends on
    which basis rounding picked."""
    for dim, labels in ((0, rows), (1, cols)):
        index = labels.long()
        count = int(index[-1]) + 1
        if count == index.numel():
            continue
        shape = [1, 1]
        shape[dim] = count
        sums = s.new_zeros(*(count if d == dim else s.shape[d] for d in range(2))).index_add_(dim, index, s)
        s = (sums / torch.bincount(index, minlength=count).to(s.dtype).view(shape)).index_select(dim, index)
    return s


#: Largest upper bound on the condition number of ``matrix + shift I`` for which a float32 (or
#: lower-precision) factor is factorized in float32: the Cholesky inverse's relative error is about
#: ``cond * eps_32`` (``eps_32 = 6e-8``), i.e. at most ~1e-2 here, and usually far less because the
#: bound (the Frobenius norm for ``lambda_max``) is pessimistic. Worse-conditioned factors are
#: factorized in float64.
FLOAT32_MAX_CONDITION = 1e5


def factor_precision(matrix: Tensor, shift: float) -> torch.dtype:
    """The precision in which :func:`damped_inverse` factorizes ``matrix + shift I``: float64 for a
    float64 ``matrix``, else float32 when ``(||matrix||_F + shift) / shift <= FLOAT32_MAX_CONDITION``
    (the Frobenius norm bounds the largest eigenvalue; a non-finite norm gives float64)."""
    if matrix.dtype == torch.float64:
        return torch.float64
    bound = float(torch.linalg.vector_norm(matrix.float())) if matrix.numel() else 0.0
    return torch.float32 if (bound + shift) / shift <= FLOAT32_MAX_CONDITION else torch.float64


def _checked(matrix: Tensor, shift: float, name: str, caller: str) -> None:
    if not shift > 0:
        raise ValueError(f"{name}: {caller} needs a positive shift, got {shift}")
    if not all_finite(matrix):
        raise _nonfinite_factor(name)


def _with_cholesky(matrix: Tensor, shift: float, apply: Callable[[Tensor], Tensor]) -> Tensor | None:
    """``apply(L)`` for the lower Cholesky factor ``L`` of ``matrix + shift I`` (lower triangle of
    ``matrix`` read), factorized in :func:`factor_precision` and again in float64 when that
    factorization fails or ``apply`` gives non-finite values; ``None`` when float64 fails too (an
    indefinite ``matrix``)."""
    dtype = factor_precision(matrix, shift)
    for dt in ([dtype] if dtype == torch.float64 else [dtype, torch.float64]):
        m = matrix.to(dt, copy=True)
        m.diagonal().add_(shift)
        chol, info = torch.linalg.cholesky_ex(m)
        if int(info) == 0 and all_finite(chol.diagonal()):
            out = apply(chol)
            if all_finite(out):
                return out
    return None


def _eigen_damped_inverse(matrix: Tensor, shift: float, name: str) -> Tensor:
    evals, evecs = symeig(matrix.double(), name=name)  # eigenvalues clamped at 0: a PSD projection
    inv = (evecs / (evals + shift)) @ evecs.T
    if not all_finite(inv):
        raise FloatingPointError(f"{name}: the damped inverse is not finite (shift {shift})")
    return inv.to(matrix.dtype)


def damped_inverse(matrix: Tensor, shift: float, *, name: str = "factor") -> Tensor:
    """``(matrix + shift I)^{-1}`` of a symmetric PSD ``matrix`` (``shift > 0``), in ``matrix.dtype``.

    By a Cholesky factorization in the factor's precision when ``matrix + shift I`` is well enough
    conditioned for it (:func:`factor_precision`; float64 otherwise), retried in float64 when the
    factorization fails or its inverse is not finite; a factor that is not PSD even in float64 (an
    indefinite input) falls back to the float64 eigendecomposition with eigenvalues clamped at 0
    (:func:`symeig`). Never returns NaN/inf silently.

    Raises:
        ValueError: ``shift <= 0``. FloatingPointError: NaN/inf entries (naming ``name``), or a non-finite result.
    """
    _checked(matrix, shift, name, "damped_inverse")
    inv = _with_cholesky(matrix, shift, torch.cholesky_inverse)
    return inv.to(matrix.dtype) if inv is not None else _eigen_damped_inverse(matrix, shift, name)


def damped_solve(matrix: Tensor, shift: float, rhs: Tensor, *, name: str = "factor") -> Tensor:
    """``rhs (matrix + shift I)^{-1}`` for ``rhs`` of shape ``(r, d)`` (rows), in ``rhs.dtype``.

    Two triangular solves with the Cholesky factor (the precision policy and float64 retry of
    :func:`damped_inverse`; cheaper than forming the inverse, ``~d^3/3 + 2 r d^2`` flops against
    ``~d^3 + 2 r d^2``, when ``r < d``; with ``r >= d`` rows the inverse and one matrix product were
    faster on the benchmark machine, GEMM running faster than TRSM per flop); a factor that is not
    PSD even in float64 falls back to :func:`damped_inverse`.

    Raises:
        ValueError: ``shift <= 0``. FloatingPointError: NaN/inf entries (naming ``name``).
    """
    _checked(matrix, shift, name, "damped_solve")

    def solve(chol: Tensor) -> Tensor:
        r = rhs.to(chol.dtype)
        if r.shape[0] >= chol.shape[0]:  # many rows: forming the inverse and one GEMM beats two TRSMs
            return r @ torch.cholesky_inverse(chol)
        x = torch.linalg.solve_triangular(chol.mT, r.contiguous(), upper=True, left=False)
        return torch.linalg.solve_triangular(chol, x, upper=False, left=False)  # rhs L^-T L^-1 = rhs (L L^T)^-1

    x = _with_cholesky(matrix, shift, solve)
    return x.to(rhs.dtype) if x is not None else rhs @ damped_inverse(matrix, shift, name=name).to(rhs.dtype)


def pi_split(a_mat: Tensor, g_mat: Tensor, damping: float) -> tuple[float, float]:
    """Factored Tikhonov damping (Martens & Grosse 2015, sec. 6.3): ``A + pi sqrt(l) I`` and
    ``G + sqrt(l)/pi I`` with ``pi = sqrt((tr A / d_A) / (tr G / d_G))`` (1 when either is 0)."""
    ta = float(a_mat.diagonal().mean())
    tg = float(g_mat.diagonal().mean())
    pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
    root = math.sqrt(damping)
    return pi * root, root / pi


# ---------------------------------------------------------------- linear operators
def _check_damping(damping: float) -> None:
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got {damping}")


def spectral_inverse(evals: Tensor, damping: float) -> Tensor:
    """``1 / (evals + damping)`` for the eigenvalues ``evals`` of a PSD operator; for ``damping = 0`` the
    pseudo-inverse's: ``1 / evals`` where ``evals > eps * evals.numel() * max(evals)`` (the default cutoff
    of ``torch.linalg.pinv``), 0 elsewhere (the null space), so it is never inf."""
    if damping > 0:
        return 1.0 / (evals + damping)
    cutoff = torch.finfo(evals.dtype).eps * evals.numel() * evals.max().clamp_min(0)
    keep = evals > cutoff
    return torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))


@dataclass
class _Block:
    name: str
    module: nn.Module
    handler: LayerHandler
    params: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.params = self.handler.params(self.module)
        self.shape = self.handler.shape(self.module)
        self.numel = sum(p.numel() for p in self.params)

    def to_matrix(self, flat: Tensor) -> Tensor:
        """Flat ``(numel, *cols)`` in param order -> ``(d_out, d_in, *cols)``."""
        cols = flat.shape[1:]
        parts, i = [], 0
        for p in self.params:
            parts.append(flat[i:i + p.numel()].reshape(p.shape + cols))
            i += p.numel()
        if not cols:
            return self.handler.to_matrix(self.module, parts)
        # move the column dims first, combine, move back
        nc = len(cols)
        parts = [x.movedim(tuple(range(x.dim() - nc, x.dim())), tuple(range(nc))) for x in parts]
        mats = torch.stack([self.handler.to_matrix(self.module, [x[j] for x in parts])
                            for j in range(parts[0].shape[0])]) if nc == 1 else None
        if mats is None:
            raise ValueError("only vectors (P,) or matrices (P, k) are supported")
        return mats.movedim(0, -1)

    def to_flat(self, matrix: Tensor) -> Tensor:
        """``(d_out, d_in)`` -> flat ``(numel,)`` in param order."""
        return torch.cat([x.reshape(-1) for x in self.handler.from_matrix(self.module, matrix)])

    def permutation(self) -> Tensor:
        """``perm[j]`` = row-major index in ``[W | b]`` of the ``j``-th entry in param order."""
        idx = torch.arange(self.shape[0] * self.shape[1]).reshape(self.shape).to(torch.float64)
        return self.to_flat(idx).long()


class _Kronecker:
    """Shared plumbing: flat vectors in the order of :attr:`params` <-> per-layer matrices."""

    blocks: list[_Block]

    @property
    def params(self) -> list[Tensor]:
        """The parameters covered, in the order of flat vectors and of :meth:`to_dense`."""
        return [p for b in self.blocks for p in b.params]

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def _split(self, v: Tensor | Sequence[Tensor]) -> tuple[list[Tensor], bool]:
        if isinstance(v, Tensor):
            total = sum(b.numel for b in self.blocks)
            if v.shape[0] != total or v.dim() > 2:
                raise ValueError(f"expected a vector ({total},) or matrix ({total}, k) in the order of .params, "
                                 f"got shape {tuple(v.shape)}")
            out, i = [], 0
            for b in self.blocks:
                out.append(b.to_matrix(v[i:i + b.numel]))
                i += b.numel
            return out, True
        mats = list(v)
        if len(mats) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} per-layer matrices, got {len(mats)}")
        for b, m in zip(self.blocks, mats):
            if tuple(m.shape[:2]) != b.shape:
                raise ValueError(f"layer {b.name}: expected a ({b.shape[0]}, {b.shape[1]}) matrix, got {tuple(m.shape)}")
        return mats, False

    def _join(self, mats: list[Tensor], flat: bool) -> Tensor | list[Tensor]:
        if not flat:
            return mats
        out = []
        for b, m in zip(self.blocks, mats):
            if m.dim() == 2:
                out.append(b.to_flat(m))
            else:
                out.append(torch.stack([b.to_flat(m[..., j]) for j in range(m.shape[-1])], dim=-1))
        return torch.cat(out)

    def _apply(self, v, fn):
        mats, flat = self._split(v)
        res = []
        for i, (b, m) in enumerate(zip(self.blocks, mats)):
            if m.dim() == 3:
                res.append(torch.stack([fn(i, m[..., j]) for j in range(m.shape[-1])], dim=-1))
            else:
                res.append(fn(i, m))
        return self._join(res, flat)

    def _dense(self, block_dense) -> Tensor:
        ds = []
        for i, b in enumerate(self.blocks):
            d = block_dense(i)  # row-major order of [W | b]
            perm = b.permutation().to(d.device)
            ds.append(d[perm][:, perm])
        return torch.block_diag(*ds)

    def matmat(self, v: Tensor) -> Tensor:
        """Product with a ``(P, k)`` matrix (columns in the order of :attr:`params`)."""
        return self.mv(v)

    def mv(self, v):  # pragma: no cover - abstract
        raise NotImplementedError


class KFAC(_Kronecker):
    r"""Block-diagonal K-FAC curvature ``blockdiag(A_l (x) G_l)`` as a linear operator.

    Args:
        blocks: per layer ``(name, module, handler)``.
        factors: per layer ``(A, G)``.

    ``v`` arguments are either one flat tensor ``(P,)`` / ``(P, k)`` in the order of
    :attr:`params`, or a list of per-layer matrices ``(d_out, d_in)``; results come back in the
    same form.
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module, LayerHandler]], factors: Sequence[tuple[Tensor, Tensor]]):
        self.blocks = [_Block(n, m, h) for n, m, h in layers]
        self.factors = [(a, g) for a, g in factors]
        for b, (a, g) in zip(self.blocks, self.factors):
            if a.shape != (b.shape[1], b.shape[1]) or g.shape != (b.shape[0], b.shape[0]):
                raise ValueError(f"layer {b.name}: factors of shapes {tuple(a.shape)}, {tuple(g.shape)} do not fit "
                                 f"[W | b] of shape {b.shape}")

    def mv(self, v):
        """``(A (x) G) vec(M) = vec(G M A)`` per layer."""
        return self._apply(v, lambda i, m: self.factors[i][1] @ m @ self.factors[i][0])

    def solve(self, v, damping: float, *, factored: bool = False):
        r"""Damped inverse times ``v``.

        ``factored=False``: ``(A (x) G + damping I)^{-1} v``, exact, through the eigendecompositions
        of ``A`` and ``G``. ``factored=True``: ``((A + pi sqrt(d) I) (x) (G + sqrt(d)/pi I))^{-1} v``,
        K-FAC's pi-damping (:func:`pi_split`). ``damping=0`` (either form): the pseudo-inverse
        ``(A (x) G)^+ v`` (:func:`spectral_inverse`: zero on the null space, exact on the range), never inf.

        Raises:
            ValueError: ``damping`` negative or not finite.
        """
        _check_damping(damping)
        mats, flat = self._split(v)
        res = []
        for b, (a, g), m in zip(self.blocks, self.factors, mats):
            cols = m.dim() == 3
            mk = m.movedim(-1, 0) if cols else m[None]  # (k, d_out, d_in): each factor once for all columns
            k, d_out, d_in = mk.shape
            if factored and damping > 0:
                ca, cg = pi_split(a, g, damping)
                # (G + c_G)^-1 M = (M^T (G + c_G)^-1)^T, then times (A + c_A)^-1 on the right
                left = damped_solve(g, cg, mk.mT.reshape(k * d_in, d_out), name=f"{b.name}.G")
                left = left.reshape(k, d_in, d_out).mT.reshape(k * d_out, d_in)
                out = damped_solve(a, ca, left, name=f"{b.name}.A").reshape(k, d_out, d_in)
            else:
                ea, ua = symeig(a, name=b.name + ".A")
                eg, ug = symeig(g, name=b.name + ".G")
                out = ug @ ((ug.T @ mk @ ua) * spectral_inverse(eg[:, None] * ea[None, :], damping)) @ ua.T
            res.append(out.movedim(0, -1) if cols else out[0])
        return self._join(res, flat)

    def to_dense(self) -> Tensor:
        """Dense ``(P, P)`` matrix in the order of :attr:`params` (row-major block ``kron(G, A)``)."""
        return self._dense(lambda i: torch.kron(self.factors[i][1], self.factors[i][0]))

    def to_ekfac(self) -> EKFAC:
        """EKFAC with this K-FAC's eigenbasis and diagonal ``e_G (x) e_A`` (equal to K-FAC)."""
        bases, diags = [], []
        for b, (a, g) in zip(self.blocks, self.factors):
            ea, ua = symeig(a, name=b.name + ".A")
            eg, ug = symeig(g, name=b.name + ".G")
            bases.append((ua, ug))
            diags.append(eg[:, None] * ea[None, :])
        return EKFAC([(b.name, b.module, b.handler) for b in self.blocks], bases, diags)


class EKFAC(_Kronecker):
    r"""Eigenvalue-corrected K-FAC ``blockdiag((U_A (x) U_G) diag(s) (U_A (x) U_G)^T)``.

    Args:
        layers: per layer ``(name, module, handler)``.
        bases: per layer ``(U_A, U_G)`` (orthogonal).
        diagonals: per layer ``s`` of shape ``(d_out, d_in)``.
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module, LayerHandler]], bases: Sequence[tuple[Tensor, Tensor]],
                 diagonals: Sequence[Tensor]):
        self.blocks = [_Block(n, m, h) for n, m, h in layers]
        self.bases = list(bases)
        self.diagonals = list(diagonals)
        for b, (ua, ug), s in zip(self.blocks, self.bases, self.diagonals):
            if tuple(s.shape) != b.shape or ua.shape[0] != b.shape[1] or ug.shape[0] != b.shape[0]:
                raise ValueError(f"layer {b.name}: basis/diagonal shapes do not fit [W | b] of shape {b.shape}")

    def _scaled(self, i: int, m: Tensor, scale: Tensor) -> Tensor:
        ua, ug = self.bases[i]
        return ug @ ((ug.T @ m @ ua) * scale) @ ua.T

    def mv(self, v):
        """``U_G (s * (U_G^T M U_A)) U_A^T`` per layer."""
        return self._apply(v, lambda i, m: self._scaled(i, m, self.diagonals[i]))

    def solve(self, v, damping: float):
        """``(F_EKFAC + damping I)^{-1} v``: ``U_G ((U_G^T M U_A) / (s + damping)) U_A^T``; ``damping=0``: the
        pseudo-inverse (:func:`spectral_inverse`), never inf.

        Raises:
            ValueError: ``damping`` negative or not finite.
        """
        _check_damping(damping)
        return self._apply(v, lambda i, m: self._scaled(i, m, spectral_inverse(self.diagonals[i], damping)))

    def to_dense(self) -> Tensor:
        def block(i):
            ua, ug = self.bases[i]
            u = torch.kron(ug, ua)
            return u @ torch.diag(self.diagonals[i].reshape(-1)) @ u.T
        return self._dense(block)


# ---------------------------------------------------------------- from a model and data
def _batches(data) -> Iterable[tuple]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return [tuple(data)]
    return data


def _layers_or_raise(model: nn.Module) -> list[tuple[str, nn.Module, LayerHandler]]:
    layers = supported_layers(model, include=lambda m: any(p.requires_grad for p in m.parameters(recurse=False)))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no trainable layer that Kronecker-factored curvature supports "
                         f"(supported: {names_of_supported()}; grouped convolutions are not)")
    return layers


def _records(model, data, layers, *, fisher, likelihood, generator, mc_samples, device):
    params = [p for _, m, h in layers for p in h.params(m)]
    capture = Capture(layers, grad_scale=1.0, keep_outputs=True)
    with capture:
        for x, y in _batches(data):
            x, y = x.to(device), y.to(device)
            capture.clear()
            with torch.enable_grad():
                out = model(x)
                # backpropagate to the layers' outputs (no parameter gradient is needed), unless one was
                # modified in place after the layer (then to the parameters, which also records every g)
                targets = capture.output_tensors() or params
                backprop_output_grads(out, targets, fisher=fisher, likelihood=likelihood, target=y,
                                      generator=generator, mc_samples=mc_samples)
            yield capture
            capture.clear()


def compute_kfac(model: nn.Module, data, *, fisher: str = "empirical", likelihood: str = "categorical",
                 generator: torch.Generator | None = None, mc_samples: int = 1) -> KFAC:
    """K-FAC of ``model`` on ``data`` (a ``(x, y)`` pair or an iterable of them, e.g. a DataLoader).

    Factors are averaged over all examples (batches weighted by their sizes). ``fisher``:
    ``empirical`` | ``true`` | ``ggn`` and ``likelihood`` as in :mod:`geomopt.curvature.capture`.

    Raises:
        ValueError: the model has no supported layer, or an unknown option.
    """
    layers = _layers_or_raise(model)
    device = next(model.parameters()).device
    sums: dict[str, list] = {}
    count = 0
    for capture in _records(model, data, layers, fisher=fisher, likelihood=likelihood, generator=generator,
                            mc_samples=mc_samples, device=device):
        n = capture.grad_shape(layers[0][0])[1]
        for name, _, _ in layers:
            fa, fg = kronecker_factors(*capture.get(name))
            if name in sums:  # running mean weighted by batch sizes (nothing to rescale for one batch)
                w = n / (count + n)
                sums[name][0].mul_(1 - w).add_(fa, alpha=w)
                sums[name][1].mul_(1 - w).add_(fg, alpha=w)
            else:
                sums[name] = [fa, fg]
        count += n
    if count == 0:
        raise ValueError("compute_kfac: no data")
    return KFAC(layers, [(sums[n][0], sums[n][1]) for n, _, _ in layers])


def compute_ekfac(model: nn.Module, data, *, fisher: str = "empirical", likelihood: str = "categorical",
                  generator: torch.Generator | None = None, mc_samples: int = 1) -> EKFAC:
    """EKFAC of ``model`` on ``data``: K-FAC eigenbasis, then the exact eigenbasis diagonal from
    per-example gradients (two passes over ``data``; with ``fisher='true'`` each pass samples)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        data = [tuple(data)]
    single = isinstance(data, list) and len(data) == 1
    if single:  # one batch: one forward/backward serves both the factors and the diagonal
        layers = _layers_or_raise(model)
        records = _records(model, data, layers, fisher=fisher, likelihood=likelihood, generator=generator,
                           mc_samples=mc_samples, device=next(model.parameters()).device)
        capture = next(iter(records))
        kfac = KFAC(layers, [kronecker_factors(*capture.get(n)) for n, _, _ in layers])
    else:
        kfac = compute_kfac(model, data, fisher=fisher, likelihood=likelihood, generator=generator,
                            mc_samples=mc_samples)
    base = kfac.to_ekfac()
    if single:
        diagonals = [captured_diagonal(capture, b.name, *base.bases[i]) for i, b in enumerate(kfac.blocks)]
        records.close()  # removes the hooks
        return EKFAC([(b.name, b.module, b.handler) for b in kfac.blocks], base.bases, diagonals)
    layers = [(b.name, b.module, b.handler) for b in kfac.blocks]
    sums = [torch.zeros_like(s) for s in base.diagonals]
    count = 0
    for capture in _records(model, data, layers, fisher=fisher, likelihood=likelihood, generator=generator,
                            mc_samples=mc_samples, device=sums[0].device):
        n = capture.grad_shape(layers[0][0])[1]
        for i, (name, _, _) in enumerate(layers):
            sums[i] += captured_diagonal(capture, name, *base.bases[i]) * n
        count += n
    return EKFAC(layers, base.bases, [s / count for s in sums])
