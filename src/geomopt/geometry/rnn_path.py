r"""Path norms and Path-SGD scales of ReLU RNNs: feedforward networks with shared weights.

Neyshabur, Wu, Salakhutdinov & Srebro, "Path-Normalized Optimization of Recurrent Neural Networks
with ReLU Activations", NeurIPS 2016. Unrolled for T steps, the RNN
``h_t = relu(W_in x_t + b + W_rec h_{t-1})``, ``y = W_out h_T + b_out`` (or ``y_t`` at every step)
is a feedforward DAG whose edges are T copies of each shared weight. Its path regularizer is

    pi(w) = sum over input->output paths P of prod_{occurrences e in P} w_e^2

(biases are edges from always-on units, one per step). Write v_e = w_e^2 for a *shared* weight. A
path may use the same recurrent weight several times (at different steps). The Path-SGD scale is
the diagonal curvature of pi in the shared weight,

    kappa_e(w) = 1/2 d^2 pi / d w_e^2 = kappa1_e + kappa2_e,
    kappa1_e   = d pi / d v_e          = sum over the T copies of e of gamma_in * gamma_out of that copy,
    kappa2_e   = 2 v_e d^2 pi / d v_e^2 = sum over paths of the terms where e occurs twice (j != k):
                 2 w_{p_j} w_{p_k} prod_{l != j, k} w_{p_l}^2.

For a feedforward net kappa2 = 0 and kappa1 is the Path-SGD gamma. (Note: kappa1 alone is the
*total* derivative of pi in the squared shared weight, and kappa1 + kappa2 is half the second
derivative in the weight itself; both identities are tested by finite differences.)

kappa1 by the squared unrolled network: square every parameter, feed an all-ones input at every
step (every ReLU is on), sum the outputs; the gradient of that sum with respect to the squared
shared parameters (autograd sums the T copies) is kappa1 -- one batch-1 forward/backward over T
steps (``method="autograd"``, the reference). Since the squared network's input is the same at
every step, its states satisfy the linear recurrence ``h_t = c + V h_{t-1}`` (V = W_rec^2,
c = W_in^2 1 + b^2), so ``h_t = sum_{k<t} V^k c``: ``method="fast"`` (default) builds all T states
and all T back-propagated sensitivities by doubling (``h_{m+j} = h_m + V^m h_j``), O(n^3 log T)
work in about 3 log2 T matmuls (one power of V serves both sweeps) instead of 2T tiny steps,
then kappa1(W_rec) in one matmul.
W_in and W_out get rank-one scales (every input unit has gamma_in = 1; every output unit
gamma_out = 1), applied without materializing them.

kappa2 vanishes for W_in, b, W_out and b_out (every path uses exactly one input or bias edge and
one output edge). For W_rec it is computed exactly from lagged cross-correlations of the states and
sensitivities: ``d^2 pi / d V_ij^2 = 2 sum_{s<t} delta_t[i] (V^{t-1-s})_{ji} h_{s-1}[j]``, i.e.
``2 sum_k (V^k)^T o C_k`` with ``C_k = sum_s delta_{s+k+1} h_{s-1}^T``: cost O(T n^3 + T^2 n^2)
time (T matrix powers), O(n^2) memory -- about a second for n = 100, T = 100 on one core, so use
it for small nets and analysis; the paper (and our default) drops it.

Scales are computed in the model's dtype (at least float32) and again in float64 when that
overflows: with ``rho(W_rec^2) > 1`` the squared network grows like rho^T (``dtype=`` forces one).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from geomopt.geometry.path_norm import RankOneScale, UnsupportedModuleError
from geomopt.checks import check_finite_parameters

METHODS = ("fast", "autograd")


def is_relu_rnn(model: nn.Module) -> bool:
    """Whether ``model`` has the ReLU RNN layout of :class:`geomopt.nn.ReLURNN`."""
    rec = getattr(model, "recurrent", None)
    return (getattr(model, "output_mode", None) in ("last", "all") and isinstance(getattr(model, "input", None), nn.Linear)
            and isinstance(rec, nn.Linear) and isinstance(getattr(model, "output", None), nn.Linear)
            and rec.bias is None and rec.in_features == rec.out_features)


def _parts(rnn: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    if not is_relu_rnn(rnn):
        raise UnsupportedModuleError(
            f"{type(rnn).__name__} is not a ReLU RNN with the layout of geomopt.nn.ReLURNN (Linear `input` with the "
            "hidden bias, square bias-free Linear `recurrent`, Linear `output`, `output_mode` 'last' or 'all')")
    return rnn.input, rnn.recurrent, rnn.output


def _check_T(seq_len: int) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"RNN path scales: the sequence length T must be a positive integer, got {seq_len!r}")
    return seq_len


def _present_parts(rnn: nn.Module) -> dict[str, nn.Parameter]:
    """``{part: parameter}`` for the parts the RNN has: in_w, in_b, rec, out_w, out_b (biases are optional)."""
    inp, rec, out = _parts(rnn)
    parts = {"in_w": inp.weight, "in_b": inp.bias, "rec": rec.weight, "out_w": out.weight, "out_b": out.bias}
    return {key: p for key, p in parts.items() if p is not None}


def _squares(rnn: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """The squared parameters ``v = w^2`` in ``dtype`` (a missing bias squares to zeros), in one foreach call."""
    present = _present_parts(rnn)
    ws = [p.detach().to(dtype) for p in present.values()]
    v = dict(zip(present, torch._foreach_mul(ws, ws)))
    for bias, weight in (("in_b", "in_w"), ("out_b", "out_w")):
        if bias not in v:
            v[bias] = torch.zeros(v[weight].shape[0], dtype=dtype, device=v[weight].device)
    return v


def _named_parts(rnn: nn.Module) -> dict[str, tuple[str, nn.Parameter]]:
    """``{part: (parameter name, parameter)}`` for the parts the RNN has."""
    names = {id(p): n for n, p in rnn.named_parameters()}
    return {key: (names[id(p)], p) for key, p in _present_parts(rnn).items()}


def _all_finite(kappa: dict[str, Tensor | RankOneScale]) -> bool:
    """One host sync: every entry is >= 0, so the sum of all of them is finite iff each is (each distinct
    tensor summed once: kappa1 shares dsum between W_in and b)."""
    tensors = {id(t): t for k in kappa.values() for t in ((k.out_scale, k.in_scale) if isinstance(k, RankOneScale)
                                                          else (k,))}
    return math.isfinite(float(torch.stack([t.sum() for t in tensors.values()]).sum()))


class RNNPathScales:
    """The Path-SGD preconditioner of a ReLU RNN unrolled for ``seq_len`` steps.

    Args:
        rnn: a :class:`geomopt.nn.ReLURNN` (or a module with its layout, see :func:`is_relu_rnn`).
        seq_len: T, the number of unrolled steps (the training sequence length).
        include_kappa2: add kappa2 (exact, O(T n^3 + T^2 n^2); see the module docstring) to kappa1.
        method: ``"fast"`` (doubling, default) or ``"autograd"`` (the squared unrolled network, one
            batch-1 forward/backward over T steps: the reference).
        dtype: dtype of the computation. Default: the recurrent weight's dtype, at least float32, and
            float64 again whenever a float32 pass overflows (rho(W_rec^2)^T beyond 3e38); the
            result is cast to each parameter's dtype.

    Raises:
        UnsupportedModuleError: ``rnn`` does not have the ReLU RNN layout.
        ValueError: a bad T or method.
    """

    def __init__(self, rnn: nn.Module, seq_len: int, include_kappa2: bool = False, method: str = "fast",
                 dtype: torch.dtype | None = None):
        self._params = _named_parts(rnn)
        if method not in METHODS:
            raise ValueError(f"RNN path scales: method must be one of {METHODS}, got {method!r}")
        self.rnn, self.seq_len, self.include_kappa2, self.method, self.dtype = \
            rnn, _check_T(seq_len), bool(include_kappa2), method, dtype
        self.many_to_many = rnn.output_mode == "all"

    # -- the squared unrolled network -------------------------------------------------------------
    def _states(self, v: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """States and sensitivities ``delta_t = d pi / d h_t`` as rows in *reversed* time, by doubling:
        ``hs[i] = h_{T-i}``, ``ds[i] = delta_{T-i}`` (reversed, both sweeps fill contiguous blocks and
        kappa1(W_rec) pairs ``ds[i]`` with ``hs[i+1]`` without a flip)."""
        T = self.seq_len
        V = v["rec"]
        hs = V.new_empty(T, V.shape[0])
        ds = V.new_empty(T, V.shape[0])
        torch.add(v["in_w"].sum(1), v["in_b"], out=hs[T - 1])  # h_1 = c
        torch.sum(v["out_w"], 0, out=ds[0])  # delta_T = g
        power, m = V, 1  # V^m; the sensitivities use (V^T)^m = power^T, so one power serves both sweeps
        while m < T:
            take = min(m, T - m)
            # h_{m+j} = h_m + V^m h_j (j = 1..take): rows T-m-take .. T-m-1 from rows T-take .. T-1
            torch.addmm(hs[T - m], hs[T - take:], power.T, out=hs[T - m - take:T - m])
            if self.many_to_many:  # delta_{T-m-j} = delta_{T-m} + (V^T)^m delta_{T-j}, as rows
                torch.addmm(ds[m - 1], ds[:take], power, out=ds[m:m + take])
            else:  # delta_{T-m-j} = (V^T)^m delta_{T-j}
                torch.mm(ds[:take], power, out=ds[m:m + take])
            m += take
            if m < T:
                power = power @ power
        return hs, ds

    def _pi_from(self, v: dict[str, Tensor], hs: Tensor) -> Tensor:
        g = v["out_w"].sum(0)
        if self.many_to_many:
            return hs.sum(0) @ g + self.seq_len * v["out_b"].sum()
        return hs[0] @ g + v["out_b"].sum()

    def _kappa1_fast(self, v: dict[str, Tensor]) -> dict[str, Tensor | RankOneScale]:
        hs, ds = self._states(v)
        dsum = ds.sum(0)
        hout = hs.sum(0) if self.many_to_many else hs[0]
        ones_in = torch.ones(v["in_w"].shape[1], dtype=dsum.dtype, device=dsum.device)
        ones_out = torch.ones(v["out_w"].shape[0], dtype=dsum.dtype, device=dsum.device)
        # kappa1(W_rec) = sum_{t=2..T} delta_t h_{t-1}^T = sum_i ds[i] hs[i+1]^T
        rec = ds[:-1].T @ hs[1:] if self.seq_len > 1 else torch.zeros_like(v["rec"])
        return {"in_w": RankOneScale(dsum, ones_in), "in_b": dsum, "rec": rec,
                "out_w": RankOneScale(ones_out, hout),
                "out_b": ones_out * (self.seq_len if self.many_to_many else 1)}

    def _pi_autograd(self, v: dict[str, Tensor]) -> Tensor:
        """pi by running the squared network step by step (all-ones input, no ReLU)."""
        ones = torch.ones(v["in_w"].shape[1], dtype=v["rec"].dtype, device=v["rec"].device)
        u = v["in_w"] @ ones + v["in_b"]
        h = u
        g = v["out_w"].sum(0)
        pi = h @ g + v["out_b"].sum() if self.many_to_many else None
        for _ in range(1, self.seq_len):
            h = u + v["rec"] @ h
            if self.many_to_many:
                pi = pi + h @ g + v["out_b"].sum()
        return pi if self.many_to_many else h @ g + v["out_b"].sum()

    def _kappa1_autograd(self, v: dict[str, Tensor]) -> dict[str, Tensor]:
        leaves = {k: t.clone().requires_grad_(True) for k, t in v.items()}
        with torch.enable_grad():
            pi = self._pi_autograd(leaves)
            grads = torch.autograd.grad(pi, list(leaves.values()), allow_unused=True)
        return {k: g if g is not None else torch.zeros_like(leaves[k]) for k, g in zip(leaves, grads)}

    def _kappa2_rec(self, v: dict[str, Tensor]) -> Tensor:
        """kappa2 of W_rec: 2 v o d^2 pi / d v^2 = 4 v o sum_k (V^k)^T o C_k (see the module docstring)."""
        T = self.seq_len
        V = v["rec"]
        hs, deltas = (x.flip(0) for x in self._states(v))  # forward time: h_1 .. h_T, delta_1 .. delta_T
        acc = torch.zeros_like(V)
        power = torch.eye(V.shape[0], dtype=V.dtype, device=V.device)
        for k in range(0, T - 2):
            c_k = deltas[k + 2:].T @ hs[:T - 2 - k]
            acc += power.T * c_k
            power = power @ V
        return 4.0 * V * acc

    # -- public API ---------------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.float64 if self.rnn.recurrent.weight.dtype == torch.float64 else torch.float32

    @torch.no_grad()
    def compute(self) -> dict[str, Tensor | RankOneScale]:
        """kappa (kappa1, plus kappa2 if asked) for every parameter, by name: tensors, or
        :class:`RankOneScale` for W_in and W_out; in each parameter's dtype."""
        dtype = self._dtype()
        kappa = self._kappa(dtype)
        if dtype != torch.float64 and self.dtype is None and not _all_finite(kappa):
            kappa = self._kappa(torch.float64)  # the squared network overflowed float32
        out: dict[str, Tensor | RankOneScale] = {}
        for key, (name, param) in self._params.items():
            dt, k = param.dtype, kappa[key]
            out[name] = RankOneScale(k.out_scale.to(dt), k.in_scale.to(dt)) if isinstance(k, RankOneScale) else k.to(dt)
        return out

    def _kappa(self, dtype: torch.dtype) -> dict[str, Tensor | RankOneScale]:
        v = _squares(self.rnn, dtype)
        kappa = self._kappa1_fast(v) if self.method == "fast" else self._kappa1_autograd(v)
        if self.include_kappa2:
            kappa["rec"] = kappa["rec"] + self._kappa2_rec(v)
        return kappa

    def dense(self) -> dict[str, Tensor]:
        """kappa for every parameter, by name, as tensors of the parameters' shapes."""
        return {k: v.to_dense() if isinstance(v, RankOneScale) else v for k, v in self.compute().items()}

    @torch.no_grad()
    def kappa2(self) -> Tensor:
        """kappa2 of the recurrent matrix (zero for every other parameter), in float64."""
        return self._kappa2_rec(_squares(self.rnn, self.dtype or torch.float64))

    @torch.no_grad()
    def path_norm(self) -> Tensor:
        """sqrt(pi) of the RNN unrolled for T steps (float64 scalar)."""
        v = _squares(self.rnn, self.dtype or torch.float64)
        pi = self._pi_from(v, self._states(v)[0]) if self.method == "fast" else self._pi_autograd(v)
        return pi.sqrt()


def rnn_path_scales(rnn: nn.Module, T: int, include_kappa2: bool = False) -> dict[str, Tensor]:
    """Path-SGD scales of a ReLU RNN unrolled for ``T`` steps, by parameter name (dense, parameter shapes).

    kappa1 (default) by the squared unrolled network; ``include_kappa2=True`` adds the exact kappa2
    (cost O(T n^3 + T^2 n^2): fine for small nets, seconds at n = 100, T = 100).
    The RNN-Path update is ``w <- w - lr * grad / kappa``.
    """
    check_finite_parameters(rnn, "RNN path scales")
    return RNNPathScales(rnn, T, include_kappa2=include_kappa2).dense()


def rnn_path_norm(rnn: nn.Module, T: int) -> Tensor:
    """The l2 path norm sqrt(pi) of a ReLU RNN unrolled for ``T`` steps (outputs at T only, or at every
    step for ``output_mode="all"``); a NaN/inf parameter raises ``ValueError`` naming it."""
    check_finite_parameters(rnn, "RNN path norm")
    return RNNPathScales(rnn, T).path_norm()


@torch.no_grad()
def rescale_rnn_units(rnn: nn.Module, factors: Tensor) -> None:
    """Rescale hidden unit i of a ReLU RNN by ``factors[i] > 0`` at every step (same function).

    ``W_in`` row i and ``b_i`` times c_i; ``W_rec <- diag(c) W_rec diag(c)^-1``; ``W_out`` column i
    divided by c_i. Then ``h'_t = diag(c) h_t`` for every t and the outputs are unchanged.

    Raises:
        ValueError: wrong number of factors or a non-positive factor.
    """
    inp, rec, out = _parts(rnn)
    n = rec.weight.shape[0]
    c = torch.as_tensor(factors, dtype=rec.weight.dtype, device=rec.weight.device)
    if c.shape != (n,):
        raise ValueError(f"rescale_rnn_units: the RNN has {n} hidden units but {tuple(c.shape)} factors were given")
    if not bool((c > 0).all()) or not bool(torch.isfinite(c).all()):
        raise ValueError("rescale_rnn_units: factors must be positive and finite (ReLU is positively homogeneous)")
    inp.weight.mul_(c.unsqueeze(1))
    if inp.bias is not None:
        inp.bias.mul_(c)
    rec.weight.mul_(c.unsqueeze(1)).div_(c.unsqueeze(0))
    out.weight.div_(c.unsqueeze(0))


def random_rnn_rescaling(rnn: nn.Module, generator: torch.Generator, low: float = 0.25, high: float = 4.0) -> Tensor:
    """Rescale every hidden unit by an independent log-uniform factor in [low, high]; returns the factors."""
    if not 0 < low <= high:
        raise ValueError(f"random_rnn_rescaling: need 0 < low <= high, got {low}, {high}")
    n = _parts(rnn)[1].weight.shape[0]
    logs = torch.rand(n, generator=generator, dtype=torch.float64) * (math.log(high) - math.log(low)) + math.log(low)
    c = logs.exp()
    rescale_rnn_units(rnn, c)
    return c
