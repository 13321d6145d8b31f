r"""Kronecker geometries: K-FAC's and EKFAC's norm on each layer's ``[W | b]`` and its running statistics.

K-FAC: Martens & Grosse, ICML 2015; convolutions by KFC, Grosse & Martens, ICML 2016. EKFAC: George,
Laurent, Bouthillier, Ballas & Vincent, NeurIPS 2018. See :mod:`geomopt.optim.kfac` for the update rules.

For every supported layer (:mod:`geomopt.curvature.layers`) with gradient matrix ``M`` ``(d_out, d_in)``,
the running factors ``A = E[a a^T]``, ``G = E[g g^T]`` enter ``X <- factor_decay X + (1 - factor_decay)
X_batch`` every ``update_freq`` steps, over every micro-batch recorded since the last step (each example
weighted equally, ``A = sum_b (N_b / N) A_b``); every ``inv_freq`` steps (and whenever a group's damping
changed) :class:`KroneckerGeometry` recomputes the pi-damped inverses and
:class:`EigenKroneckerGeometry` the eigenbases; the direction is then

    K-FAC:  D = (G + sqrt(l)/pi I)^{-1} M (A + pi sqrt(l) I)^{-1}
    EKFAC:  D = U_G ((U_G^T M U_A) / (s + l)) U_A^T

with ``l`` the block's param-group ``damping``. Factors, diagonals and directions are checked finite
before they are used (``FloatingPointError`` naming the layer; no parameter has changed then). Across
data-parallel processes (:mod:`geomopt.curvature.distributed`) the statistics are averaged, weighted by
examples, in one all-reduce per step that updates them, and each layer is inverted on one process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from geomopt.checks import check_int, check_number
from geomopt.curvature.capture import FISHERS, LIKELIHOODS
from geomopt.curvature.distributed import FactorComm, default_group
from geomopt.curvature.kronecker import (all_finite, captured_diagonal, cluster_mean, damped_inverse,
                                         diagonal_from_rotated, eigen_clusters, factored_rotation, kronecker_factors,
                                         pi_split, symeig)
from geomopt.curvature.layers import names_of_supported, supported_layers, unsupported_reason
from geomopt.optim.geometry import Block, Geometry
from geomopt.optim.kronecker_recorder import Recorder


def kfac_direction(grad_matrix: Tensor, a_inv: Tensor, g_inv: Tensor) -> Tensor:
    """``G_inv M A_inv`` for ``M`` ``(d_out, d_in)``."""
    return g_inv @ grad_matrix @ a_inv


def ekfac_direction(grad_matrix: Tensor, u_a: Tensor, u_g: Tensor, diag: Tensor, damping: float,
                    rotated: Tensor | None = None) -> Tensor:
    """``U_G ((U_G^T M U_A) / (s + damping)) U_A^T``; ``rotated``: ``U_G^T M U_A`` when already known
    (:func:`geomopt.curvature.factored_rotation`; it is overwritten)."""
    if rotated is None:
        rotated = u_g.T @ grad_matrix @ u_a
    return u_g @ rotated.div_(diag + damping) @ u_a.T


def running_average(state: dict, key: str, value: Tensor, decay: float) -> None:
    """``state[key] <- decay state[key] + (1 - decay) value`` (``value`` itself the first time)."""
    if key in state:
        state[key].mul_(decay).add_(value, alpha=1 - decay)
    else:
        state[key] = value.clone()


def check_kronecker_options(where: str, *, factor_decay, update_freq, inv_freq, mc_samples, seed, fisher,
                            likelihood) -> None:
    """Check a Kronecker geometry's options (``ValueError``/``TypeError`` naming ``where`` and the option)."""
    check_number(where, "factor_decay", factor_decay, low=0, high=1, high_open=True)
    for key, v in (("update_freq", update_freq), ("inv_freq", inv_freq), ("mc_samples", mc_samples)):
        check_int(where, key, v, low=1)
    if seed is not None:
        check_int(where, "seed", seed)
    name = where.split(":")[0]
    if fisher not in FISHERS:
        raise ValueError(f"{name}: fisher must be one of {FISHERS}, got {fisher!r}")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"{name}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def check_eigen_options(where: str, diag_freq: int, diag_decay: float | None) -> None:
    """Check EKFAC's own options (``ValueError``/``TypeError`` naming ``where`` and the option)."""
    check_int(where, "diag_freq", diag_freq, low=1)
    if diag_decay is not None:
        check_number(where, "diag_decay", diag_decay, low=0, high=1, high_open=True)


def _layers_of(model: nn.Module, params: Sequence[Tensor], names: dict, name: str, stacklevel: int
               ) -> tuple[list, list[str]]:
    """The supported layers whose weight is optimized, and the names of the optimized parameters outside
    them (warned about once)."""
    optimized = set(params)
    layers = supported_layers(model, include=lambda m: m.weight in optimized)
    if not layers:
        raise ValueError(f"{name}: {type(model).__name__} has no optimized layer that {name} supports "
                         f"(supported: {names_of_supported()}; grouped convolutions are not); use SGD or Adam")
    if not any(m.weight.requires_grad for _, m, _ in layers):
        raise ValueError(f"{name}: nothing to train: the weight of every layer it would precondition is frozen "
                         f"(requires_grad=False: {', '.join(n for n, _, _ in layers)}); unfreeze a "
                         "layer before building the optimizer")
    covered = {p for _, m, h in layers for p in h.params(m)}
    fallback = [names[p] for p in params if p not in covered]
    if fallback:
        reasons = {}
        for mname, module in model.named_modules():
            if any(p in optimized and p not in covered for p in module.parameters(recurse=False)):
                reasons[mname or type(module).__name__] = unsupported_reason(module) or "not supported"
        warnings.warn(f"{name}: {len(fallback)} parameter(s) of layers it does not support get the plain gradient "
                      f"(momentum SGD): {', '.join(fallback)}; " +
                      "; ".join(f"{k}: {v}" for k, v in reasons.items()), stacklevel=stacklevel)
    return layers, fallback


class KroneckerGeometry(Geometry):
    """K-FAC's geometry: one block per supported layer, ``P = (A + pi sqrt(l) I) (x) (G + sqrt(l)/pi I)``.

    Args:
        model: the network (hooks are registered on it and on its supported layers).
        params: the parameters to precondition, in order; every one must be the model's.
        factor_decay, update_freq, inv_freq, fisher, likelihood, mc_samples, seed, process_group: as in
            :class:`geomopt.optim.KFAC`.
        name: for messages; stacklevel: of the warning about unsupported layers (from the caller's frame).
    """

    name = "K-FAC"

    def __init__(self, model: nn.Module, params: Sequence[Tensor], *, factor_decay: float, update_freq: int,
                 inv_freq: int, fisher: str, likelihood: str, mc_samples: int, seed: int | None,
                 process_group: dist.ProcessGroup | None = None, name: str | None = None, stacklevel: int = 2):
        self.name = name or self.name
        check_kronecker_options(f"{self.name}: option", factor_decay=factor_decay, update_freq=update_freq,
                                inv_freq=inv_freq, mc_samples=mc_samples, seed=seed, fisher=fisher, likelihood=likelihood)
        names = {p: n for n, p in model.named_parameters()}
        super().__init__(params, names)
        for p in self.params:
            if p not in names:
                raise ValueError(f"{self.name}: a parameter of shape {tuple(p.shape)} is not a parameter of "
                                 f"{type(model).__name__}; Kronecker factors are defined by the model's layers")
        self.layers, self.fallback_params = _layers_of(model, self.params, names, self.name, stacklevel + 1)
        self.model = model
        self.factor_decay, self.update_freq, self.inv_freq = float(factor_decay), int(update_freq), int(inv_freq)
        self.fisher, self.likelihood, self.mc_samples = fisher, likelihood, int(mc_samples)
        self.recorder = Recorder(model, self.layers, fisher, seed, self.name)
        group = process_group if process_group is not None else default_group()
        #: the collectives across data-parallel processes (None in one process)
        self.comm = FactorComm(group) if group is not None and dist.get_world_size(group) > 1 else None
        self._group_of: dict[Tensor, dict[str, Any]] = {}

    # -- blocks
    def blocks(self) -> list[Block]:
        return [Block(name, tuple(h.params(m)), partial(h.to_matrix, m), partial(h.from_matrix, m))
                for name, m, h in self.layers]

    def ready(self, block: Block) -> bool:
        """Whether the block's layer has the statistics its direction needs."""
        return "A_inv" in self.state[block.key]

    def direction(self, block: Block, grad: Tensor, group: dict[str, Any]) -> Tensor | None:
        state = self.state[block.key]
        if not self.ready(block):
            return None
        return kfac_direction(grad, state["A_inv"], state["G_inv"])

    # -- recording
    def needs_stats(self, k: int) -> bool:
        """Whether step ``k`` updates statistics from the batch."""
        return k % self.update_freq == 0

    def arm(self, k: int, want_inputs: bool = False) -> None:
        """Record in the forwards before step ``k`` only what that step needs (``want_inputs``: the model's
        inputs, for the caller's quadratic model)."""
        need = self.needs_stats(k)
        self.recorder.arm(need and self.fisher == "empirical", (need and self.fisher != "empirical") or want_inputs)

    def end_step(self) -> None:
        self.recorder.clear()

    def remove_hooks(self) -> None:
        self.recorder.remove_hooks()

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.recorder.generator.get_state()}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        if "generator" in extra:
            self.recorder.generator.set_state(extra["generator"])
        self.recorder.clear()

    # -- statistics
    def update(self, step: int, groups: Sequence[dict[str, Any]]) -> None:
        """Step ``step``'s curvature update, the one place where statistics change: the Kronecker factors of
        the micro-batches recorded since the last step (every ``update_freq`` steps; checked finite before
        any is used) enter the running averages, then the inverses / eigenbases are recomputed (every
        ``inv_freq`` steps, or when a group's damping changed), then EKFAC's diagonal. ``groups``: the
        param groups (their ``damping``)."""
        k = step
        self._group_of = {p: g for g in groups for p in g["params"]}
        if self.needs_stats(k):
            self._gather(k)
        if k % self.update_freq == 0:
            self._update_factors()
        due = [(name, module, handler) for name, module, handler in self.layers
               if "A" in self.state[module.weight] and (k % self.inv_freq == 0 or self._stale(module))]
        if due and self.comm is not None:
            self.comm.flush()  # the factors before their inverses
        self._check_finite({name: torch.stack([self.state[m.weight]["A"].sum(), self.state[m.weight]["G"].sum()])
                            for name, m, _ in due}, "its running factors")
        self._invert_all(due)
        self._after_stats(k)
        if self.comm is not None:
            self.comm.flush()  # one all-reduce of every statistic not yet averaged

    def _gather(self, k: int) -> None:
        if self.fisher != "empirical":
            self.recorder.fisher_passes(self.likelihood, self.mc_samples)
        if not self.recorder.capture.names() and not getattr(self, "_warned_empty", False):
            self._warned_empty = True
            warnings.warn(f"{self.name}: step {k} needed statistics but no forward/backward through the model "
                          "was recorded since the last step (build the optimizer before the forward pass, and "
                          "call the model itself, not its submodules); layers without factors take plain "
                          "gradient steps", stacklevel=4)

    def _update_factors(self) -> None:
        capture = self.recorder.capture
        factors: dict[str, tuple[Tensor, Tensor]] = {}
        for name, _, _ in self.layers:
            if capture.batches(name):
                per_batch = {}  # both factors of a micro-batch from one pass over its records
                fa = self.combined(name, lambda b: per_batch.setdefault(b, kronecker_factors(*capture.get(name, b)))[0])
                fg = self.combined(name, lambda b: per_batch.pop(b)[1])
                factors[name] = (fa, fg)
        self._check_finite({n: torch.stack([f[0].sum(), f[1].sum()]) for n, f in factors.items()},
                           "its factors (its inputs or output gradients)")
        for name, module, _ in self.layers:
            if name in factors:
                state = self.state[module.weight]
                running_average(state, "A", factors[name][0], self.factor_decay)
                running_average(state, "G", factors[name][1], self.factor_decay)
        self.stage(("A", "G"), factors)

    def combined(self, name: str, fn: Callable[[int], Tensor | None]) -> Tensor | None:
        """``sum_b (N_b / N) fn(b)`` over the micro-batches ``b`` recorded for layer ``name`` (``N_b`` examples
        each, ``N`` in all): a statistic of all examples since the last step, each weighted equally."""
        capture = self.recorder.capture
        batches = capture.batches(name)
        sizes = [capture.grad_shape(name, b)[1] for b in batches]
        total, out = sum(sizes), None
        for b, n in zip(batches, sizes):
            value = fn(b)
            if value is None:
                continue
            if len(batches) > 1:
                value = value.mul_(n / total)
            out = value if out is None else out.add_(value)
        return out

    def _check_finite(self, values: dict[str, Tensor], what: str) -> None:
        for name, t in values.items():
            if not all_finite(t):
                raise FloatingPointError(f"{self.name}: layer {name!r}: NaN/inf in {what}; nothing was updated; "
                                         "lower the learning rate or raise the damping")

    # -- inversion schedule
    def _stale(self, module: nn.Module) -> bool:
        """Whether the layer's inverse was computed with another damping than its group's now."""
        state = self.state[module.weight]
        if "inv_damping" not in state:
            return False
        now = float(self._group_of[module.weight]["damping"])  # float32 in a loaded checkpoint: relative test
        return abs(float(state["inv_damping"]) - now) > 1e-6 * now

    def _invert(self, name: str, module: nn.Module, handler) -> None:
        state = self.state[module.weight]
        damping = self._group_of[module.weight]["damping"]
        ca, cg = pi_split(state["A"], state["G"], damping)
        state["A_inv"] = damped_inverse(state["A"], ca, name=f"{self.name} layer {name!r} factor A")
        state["G_inv"] = damped_inverse(state["G"], cg, name=f"{self.name} layer {name!r} factor G")
        state["inv_damping"] = torch.tensor(float(damping))  # a tensor, so state_dict round trips compare

    def _inverse_shapes(self, state: dict) -> dict[str, tuple[int, ...]]:
        """What :meth:`_invert` writes into a layer's state: key -> shape."""
        return {"A_inv": state["A"].shape, "G_inv": state["G"].shape, "inv_damping": ()}

    def _invert_all(self, due: list) -> None:
        """The inverses of the layers ``due``; across processes each layer's on one process (estimated cost
        ``d_A^3 + d_G^3``), broadcast to the others."""
        if self.comm is None:
            for layer in due:
                self._invert(*layer)
            return

        def results(i: int) -> list[Tensor]:
            state = self.state[due[i][1].weight]
            shapes = self._inverse_shapes(state)
            for key, shape in shapes.items():
                if key not in state:
                    state[key] = state["A"].new_empty(shape)
            return [state[key] for key in shapes]

        costs = [self.state[m.weight]["A"].shape[0] ** 3 + self.state[m.weight]["G"].shape[0] ** 3
                 for _, m, _ in due]
        self.comm.run_split(costs, lambda i: self._invert(*due[i]), results)

    def stage(self, keys: tuple[str, ...], names) -> None:
        """Queue the running statistics ``keys`` of the layers ``names`` that recorded examples since the
        last step, to be averaged over the processes (weighted by their examples)."""
        if self.comm is None:
            return
        capture = self.recorder.capture
        for name, module, _ in self.layers:
            batches = capture.batches(name)
            if name in names and batches:
                count = sum(capture.grad_shape(name, b)[1] for b in batches)
                self.comm.stage([self.state[module.weight][key] for key in keys], count)

    def _after_stats(self, k: int) -> None:
        """After the factors and inverses of step ``k`` (EKFAC: its diagonal)."""


class EigenKroneckerGeometry(KroneckerGeometry):
    """EKFAC's geometry: K-FAC's eigenbases with a diagonal ``s`` re-estimated from per-example gradients.

    Args (beyond :class:`KroneckerGeometry`'s):
        diag_freq: re-estimate the diagonal every this many steps.
        diag_decay: its running-average decay (``None``: ``factor_decay``).
    """

    name = "EKFAC"

    def __init__(self, model: nn.Module, params: Sequence[Tensor], *, diag_freq: int = 1,
                 diag_decay: float | None = None, **options: Any):
        check_eigen_options(f"{options.get('name') or self.name}: option", diag_freq, diag_decay)
        options["stacklevel"] = options.get("stacklevel", 2) + 1  # this frame
        super().__init__(model, params, **options)
        self.diag_freq = int(diag_freq)
        self.diag_decay = float(self.factor_decay if diag_decay is None else diag_decay)
        self._rotated: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        #: layers whose gradient was rotated into the eigenbasis from the per-example quantities in the
        #: last step (:func:`geomopt.curvature.factored_rotation`); the others were rotated densely
        self.factored_layers: set[str] = set()

    def needs_stats(self, k: int) -> bool:
        return super().needs_stats(k) or k % self.diag_freq == 0

    def arm(self, k: int, want_inputs: bool = False) -> None:
        super().arm(k, want_inputs)
        if self.fisher == "empirical":  # cheap (inputs are expanded only when used), so on every step: Linear
            self.recorder.capture.active = True  # layers rotate from their examples between diagonal steps too

    def ready(self, block: Block) -> bool:
        return "S" in self.state[block.key]

    def direction(self, block: Block, grad: Tensor, group: dict[str, Any]) -> Tensor | None:
        state = self.state[block.key]
        if not self.ready(block):
            return None
        cached = self._rotated.pop(block.name, None)
        rotated = None
        if cached is not None and group.get("weight_decay", 0) == 0:  # weight decay would need W rotated densely
            rotated = factored_rotation(grad, *cached)  # None unless grad is exactly the captured gradient
        if rotated is not None:
            self.factored_layers.add(block.name)
        return ekfac_direction(grad, state["U_A"], state["U_G"], state["S"], group["damping"], rotated)

    def end_step(self) -> None:
        self._rotated.clear()
        super().end_step()

    def _inverse_shapes(self, state: dict) -> dict[str, tuple[int, ...]]:
        d_g, d_a = state["G"].shape[0], state["A"].shape[0]
        return {"U_A": (d_a, d_a), "U_G": (d_g, d_g), "S": (d_g, d_a), "C_A": (d_a,), "C_G": (d_g,)}

    def _stale(self, module: nn.Module) -> bool:
        return False  # the damping enters each direction, not the eigenbases

    def _invert(self, name: str, module: nn.Module, handler) -> None:
        state = self.state[module.weight]
        ea, ua = symeig(state["A"], name=f"{self.name} layer {name!r} factor A")
        eg, ug = symeig(state["G"], name=f"{self.name} layer {name!r} factor G")
        state["U_A"], state["U_G"] = ua, ug
        state["C_A"], state["C_G"] = eigen_clusters(ea), eigen_clusters(eg)  # repeated eigenvalues
        state["S"] = eg[:, None] * ea[None, :]

    def _after_stats(self, k: int) -> None:
        self.factored_layers = set()
        self._rotated.clear()
        diag = k % self.diag_freq == 0
        diagonals: dict[str, Tensor] = {}
        for name, module, _ in self.layers:
            state = self.state[module.weight]
            batches = self.recorder.capture.batches(name)
            if "U_A" not in state or not batches:
                continue
            single = len(batches) == 1
            s = self.combined(name, lambda b: self._batch_diagonal(name, state, b, diag, single))
            if s is not None:
                diagonals[name] = s
        self._check_finite(diagonals, "the eigenbasis diagonal")
        for name, module, _ in self.layers:
            if name in diagonals:
                state = self.state[module.weight]
                if "C_A" in state:  # (absent from checkpoints of before it existed)
                    diagonals[name] = cluster_mean(diagonals[name], state["C_G"], state["C_A"])
                running_average(state, "S", diagonals[name], self.diag_decay)
        if diag:
            self.stage(("S",), [name for name, m, _ in self.layers if "S" in self.state[m.weight]])

    def _batch_diagonal(self, name: str, state: dict, batch: int, diag: bool, single: bool) -> Tensor | None:
        """Micro-batch ``batch``'s eigenbasis diagonal (when ``diag``); on a Linear layer with one micro-batch
        the rotated examples are also kept for :func:`factored_rotation` where that is cheaper."""
        capture = self.recorder.capture
        k, n, t, d_out = capture.grad_shape(name, batch)
        d_in = state["U_A"].shape[0]
        if t == 1:  # Linear on (N, d_in) inputs: the rotated examples serve the diagonal and the rotation
            # multiply-adds of the factored rotation (with its exactness check) vs the dense d_out d_in (d_out +
            # d_in): 2 N d_out d_in when the diagonal rotates the examples anyway, else N (d_in^2 + d_out^2) more
            cost = 2 * n * d_out * d_in + (0 if diag else n * (d_in * d_in + d_out * d_out))
            factored = self.fisher == "empirical" and k == 1 and single and cost < d_out * d_in * (d_out + d_in)
            if not (diag or factored):
                return None
            g, a = capture.output_grads(name, batch), capture.inputs(name, batch)
            ga, aa = g @ state["U_G"], a @ state["U_A"]
            if factored:
                self._rotated[name] = (a, g, ga, aa)
            return diagonal_from_rotated(ga, aa) if diag else None
        if diag:
            return captured_diagonal(capture, name, state["U_A"], state["U_G"], batch)  # conv: no patches
        return None
