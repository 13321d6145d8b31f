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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from geomopt.curvature.capture import Capture, backprop_output_grads
from geomopt.curvature.layers import LayerHandler, names_of_supported, supported_layers

CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------- statistics of one batch
def kronecker_factors(a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """``A = (1/(N T)) sum a a^T`` ``(d_in, d_in)`` and ``G = (1/N) sum g g^T`` ``(d_out, d_out)``
    from ``a`` ``(N, T, d_in)`` and ``g`` ``(K, N, T, d_out)``."""
    n, t, d_in = a.shape
    a2 = a.reshape(-1, d_in)
    g2 = g.reshape(-1, g.shape[-1])
    return a2.T @ a2 / (n * t), g2.T @ g2 / n


def eigenbasis_diagonal(a: Tensor, g: Tensor, u_a: Tensor, u_g: Tensor) -> Tensor:
    """``s = (1/N) sum_{n,k} (U_G^T M_nk U_A)^2`` ``(d_out, d_in)``, ``M_nk = sum_t g_nkt a_nt^T``.

    One position per example (T = 1): ``s = sum_k (g_k U_G)^2^T (a U_A)^2 / N``, two matmuls;
    otherwise the rotated per-example gradients are formed in chunks of examples.
    """
    k, n, t, d_out = g.shape
    ga = g @ u_g  # (K, N, T, d_out)
    aa = a @ u_a  # (N, T, d_in)
    d_in = aa.shape[-1]
    if t == 1:
        a2 = aa[:, 0].square()
        g2 = ga[:, :, 0].square().sum(0)
        return g2.T @ a2 / n
    s = torch.zeros(d_out, d_in, dtype=a.dtype, device=a.device)
    step = max(1, CHUNK_ELEMENTS // max(1, k * d_out * d_in))
    for i in range(0, n, step):
        m = torch.einsum("knto,nti->knoi", ga[:, i:i + step], aa[i:i + step])
        s += m.square().sum((0, 1))
    return s / n


def per_example_gradients(a: Tensor, g: Tensor) -> Tensor:
    """``M_nk = sum_t g_nkt a_nt^T``: ``(K, N, d_out, d_in)`` (memory ``K N d_out d_in``)."""
    return torch.einsum("knto,nti->knoi", g, a)


def symeig(matrix: Tensor, *, name: str = "factor", max_tries: int = 4) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending, clamped at 0) and eigenvectors of a symmetric PSD ``matrix``.

    Computed in the matrix's precision when it is float32 or float64 (float64 otherwise), on the
    symmetrized matrix; if LAPACK fails or returns non-finite values, retried with jitter
    ``1e-10 * tr/d * 10^i`` added to the diagonal, and finally in float64. Results are cast back
    to ``matrix.dtype``.

    Raises:
        FloatingPointError: ``matrix`` has NaN/inf entries, or every try failed (naming ``name``).
    """
    if not bool(torch.isfinite(matrix).all()):
        raise FloatingPointError(f"{name}: the Kronecker factor has NaN/inf entries (a NaN/inf gradient or "
                                 "activation reached it); lower the learning rate or raise the damping")
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
                if bool(torch.isfinite(evals).all()) and bool(torch.isfinite(evecs).all()):
                    return (evals - jitter).clamp_min(0).to(matrix.dtype), evecs.to(matrix.dtype)
            except RuntimeError as exc:  # torch.linalg.LinAlgError subclasses RuntimeError
                last = exc
    raise FloatingPointError(f"{name}: eigendecomposition failed after {max_tries} tries with growing jitter"
                             + (f" ({last})" if last else ""))


def damped_inverse(matrix: Tensor, shift: float, *, name: str = "factor") -> Tensor:
    """``(matrix + shift I)^{-1}`` of a symmetric PSD ``matrix`` (``shift > 0``) by a float64
    Cholesky factorization; falls back to :func:`symeig` when the factorization fails.

    Raises:
        FloatingPointError: NaN/inf entries (naming ``name``).
    """
    if not bool(torch.isfinite(matrix).all()):
        raise FloatingPointError(f"{name}: the Kronecker factor has NaN/inf entries (a NaN/inf gradient or "
                                 "activation reached it); lower the learning rate or raise the damping")
    m = matrix.to(torch.float64)
    m = (m + m.T) / 2 + shift * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) == 0:
        inv = torch.cholesky_inverse(chol)
        if bool(torch.isfinite(inv).all()):
            return inv.to(matrix.dtype)
    evals, evecs = symeig(matrix, name=name)
    return ((evecs / (evals + shift)) @ evecs.T).to(matrix.dtype)


def pi_split(a_mat: Tensor, g_mat: Tensor, damping: float) -> tuple[float, float]:
    """Factored Tikhonov damping (Martens & Grosse 2015, sec. 6.3): ``A + pi sqrt(l) I`` and
    ``G + sqrt(l)/pi I`` with ``pi = sqrt((tr A / d_A) / (tr G / d_G))`` (1 when either is 0)."""
    ta = float(a_mat.diagonal().mean())
    tg = float(g_mat.diagonal().mean())
    pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
    root = math.sqrt(damping)
    return pi * root, root / pi


# ---------------------------------------------------------------- linear operators
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
        K-FAC's pi-damping (:func:`pi_split`).
        """
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")

        def fn(i, m):
            a, g = self.factors[i]
            if factored:
                ca, cg = pi_split(a, g, damping)
                return damped_inverse(g, cg) @ m @ damped_inverse(a, ca)
            ea, ua = symeig(a, name=self.blocks[i].name + ".A")
            eg, ug = symeig(g, name=self.blocks[i].name + ".G")
            return ug @ ((ug.T @ m @ ua) / (eg[:, None] * ea[None, :] + damping)) @ ua.T
        return self._apply(v, fn)

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
        """``(F_EKFAC + damping I)^{-1} v``: ``U_G ((U_G^T M U_A) / (s + damping)) U_A^T``."""
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        return self._apply(v, lambda i, m: self._scaled(i, m, 1.0 / (self.diagonals[i] + damping)))

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
    capture = Capture(layers, grad_scale=1.0)
    with capture:
        for x, y in _batches(data):
            x, y = x.to(device), y.to(device)
            capture.clear()
            with torch.enable_grad():
                out = model(x)
                backprop_output_grads(out, params, fisher=fisher, likelihood=likelihood, target=y,
                                      generator=generator, mc_samples=mc_samples)
            yield {name: capture.get(name) for name, _, _ in layers}


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
    for rec in _records(model, data, layers, fisher=fisher, likelihood=likelihood, generator=generator,
                        mc_samples=mc_samples, device=device):
        n = next(iter(rec.values()))[0].shape[0]
        for name, (a, g) in rec.items():
            fa, fg = kronecker_factors(a, g)
            if name in sums:
                sums[name][0] += fa * n
                sums[name][1] += fg * n
            else:
                sums[name] = [fa * n, fg * n]
        count += n
    if count == 0:
        raise ValueError("compute_kfac: no data")
    return KFAC(layers, [(sums[n][0] / count, sums[n][1] / count) for n, _, _ in layers])


def compute_ekfac(model: nn.Module, data, *, fisher: str = "empirical", likelihood: str = "categorical",
                  generator: torch.Generator | None = None, mc_samples: int = 1) -> EKFAC:
    """EKFAC of ``model`` on ``data``: K-FAC eigenbasis, then the exact eigenbasis diagonal from
    per-example gradients (two passes over ``data``; with ``fisher='true'`` each pass samples)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        data = [tuple(data)]
    single = isinstance(data, list) and len(data) == 1
    if single:  # one batch: one forward/backward serves both the factors and the diagonal
        layers = _layers_or_raise(model)
        rec = next(iter(_records(model, data, layers, fisher=fisher, likelihood=likelihood, generator=generator,
                                 mc_samples=mc_samples, device=next(model.parameters()).device)))
        kfac = KFAC(layers, [kronecker_factors(*rec[n]) for n, _, _ in layers])
    else:
        kfac = compute_kfac(model, data, fisher=fisher, likelihood=likelihood, generator=generator,
                            mc_samples=mc_samples)
    base = kfac.to_ekfac()
    if single:
        return EKFAC([(b.name, b.module, b.handler) for b in kfac.blocks], base.bases,
                     [eigenbasis_diagonal(*rec[b.name], *base.bases[i]) for i, b in enumerate(kfac.blocks)])
    layers = [(b.name, b.module, b.handler) for b in kfac.blocks]
    sums = [torch.zeros_like(s) for s in base.diagonals]
    count = 0
    for rec in _records(model, data, layers, fisher=fisher, likelihood=likelihood, generator=generator,
                        mc_samples=mc_samples, device=sums[0].device):
        n = next(iter(rec.values()))[0].shape[0]
        for i, (name, _, _) in enumerate(layers):
            a, g = rec[name]
            ua, ug = base.bases[i]
            sums[i] += eigenbasis_diagonal(a, g, ua, ug) * n
        count += n
    return EKFAC(layers, base.bases, [s / count for s in sums])
