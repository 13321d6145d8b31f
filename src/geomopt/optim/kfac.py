r"""K-FAC and EKFAC optimizers: Kronecker-factored natural gradient.

K-FAC: Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
Curvature", ICML 2015; convolutions by KFC, Grosse & Martens, ICML 2016.
EKFAC: George, Laurent, Bouthillier, Ballas & Vincent, "Fast Approximate Natural Gradient Descent
in a Kronecker-factored Eigenbasis", NeurIPS 2018.

For every supported layer (``nn.Linear``, ``nn.Conv2d``; see :mod:`geomopt.curvature.layers`)
with gradient matrix ``M = [dW | db]`` (``(d_out, d_in)``) and running-average factors
``A = E[a a^T]``, ``G = E[g g^T]`` (updated every ``update_freq`` steps with
``X <- factor_decay X + (1 - factor_decay) X_batch``):

- K-FAC (every ``inv_freq`` steps ``A_inv, G_inv`` are recomputed with pi-damping,
  :func:`geomopt.curvature.pi_split`)::

      D = (G + sqrt(l)/pi I)^{-1} (M + wd [W | b]) (A + pi sqrt(l) I)^{-1}

- EKFAC (every ``inv_freq`` steps the eigenbases ``U_A, U_G`` are recomputed and the diagonal
  reset to ``e_G e_A^T``, as in the authors' code; *every* step (every ``diag_freq`` steps if asked)
  the diagonal is re-estimated from the batch's per-example gradients in the eigenbasis,
  ``s <- factor_decay s + (1 - factor_decay) mean_n (U_G^T M_n U_A)^2``; a convolution's per-example
  gradients come from one grouped weight-gradient convolution, without patches)::

      D = U_G ((U_G^T (M + wd [W | b]) U_A) / (s + l)) U_A^T

  Where a factor has numerically repeated eigenvalues (consecutive gaps at most ``sqrt(eps) e_max``,
  e.g. the zero eigenvalues of ``A`` for pixels that are always 0), eigh's eigenvectors there are any
  basis of the eigenspace, turned by rounding; the batch's diagonal is averaged over each such block
  (:func:`geomopt.curvature.kronecker.cluster_mean`), which makes ``D`` independent of that basis. Without
  it, a 1e-15 relative change of a digits MLP's inputs (float64) moved the parameters by 2.4e-4 after 8
  steps (K-FAC: 1e-15); with it by 5e-14 (tests/optim/test_ekfac_rounding.py), and 1 and 2 data-parallel
  processes differ by 1.8e-14 instead of 1.7e-5 (benchmarks/ekfac_processes.py).

then optional KL clipping (Ba, Grosse & Martens 2017): ``D <- nu D`` with
``nu = min(1, sqrt(kl_clip / (lr^2 sum_layers <D, M>)))``, heavy-ball momentum
``buf <- momentum buf + D`` and ``[W | b] <- [W | b] - lr buf``. Parameters of layers that are not
supported (BatchNorm, embeddings, grouped convolutions, ...) get the same momentum-SGD update with
the plain gradient; a warning names them once, at construction.

Statistics are gathered by forward hooks on the supported layers and tensor hooks on their outputs
(:class:`geomopt.curvature.Capture`), recorded per forward/backward and consumed at :meth:`step`, so any
loop order works: ``zero_grad(); loss = f(model(x)); loss.backward(); step()``, ``loss = f(model(x));
zero_grad(); loss.backward(); step()`` (the order of Lightning's closure), ``step(closure)``, and
gradient accumulation. Each forward of ``model`` with gradients enabled starts a micro-batch; the
factors of a step are over every micro-batch backpropagated since the last step (each example weighted
equally: ``A = sum_b (N_b / N) A_b``; a model called several times for one loss, as a siamese network,
marks its forwards as one micro-batch with ``with opt.micro_batch(): ...``); :meth:`zero_grad` drops the
records whose gradients it discards (those already backpropagated) and keeps forwards still waiting for
their backward; a forward that is never backpropagated is ignored.

- ``fisher='empirical'``: the gradients of *your* loss, which must be a mean over the batch (as
  ``F.cross_entropy`` and ``F.mse_loss`` are by default) and, when accumulating ``B`` micro-batches,
  divided by ``B`` (as usual, so that the gradient is the mean over all examples).
- ``fisher='true'`` (or ``'ggn'``): the optimizer also records the model's inputs per micro-batch (a
  forward pre-hook on ``model``) and, inside :meth:`step` on the steps that need statistics (every
  ``update_freq`` steps for K-FAC, every step for EKFAC), runs one more forward and backward pass
  per micro-batch with targets sampled from the model's predictive distribution (``likelihood``:
  ``categorical`` for logits, ``gaussian`` for regression outputs, ``bernoulli`` for logits of binary
  outputs), or with the columns of the loss-Hessian square root (``ggn``: exact expectation, ``C``
  passes). That pass is invisible to the user: ``.grad`` is untouched, the model's buffers (BatchNorm
  running statistics, ``num_batches_tracked``) are restored, and the global RNG streams are restored
  too (inside the pass they are seeded from the optimizer's own generator, option ``seed``, whose state
  is in :meth:`state_dict`, so a resumed run samples the same targets).

The hooks reach the optimizer through weak references and record only calls of the layers they were
registered on (:class:`geomopt.curvature.capture.WeakHook`): ``copy.deepcopy(model)`` (an EMA, teacher or
best-model copy), ``pickle`` and ``torch.save(model)`` work, the copy's hooks do nothing, and nothing the
copy computes enters this optimizer's statistics; the model's ``state_dict`` holds no trace of them.

Statistics are recorded only in forwards with gradients enabled and only before steps that need them.
Every numeric option is checked at construction, in ``add_param_group`` and in every param group at
each :meth:`step` (finite, right sign; the error names the option and the group). A NaN/inf gradient,
factor, eigenbasis diagonal or direction raises ``FloatingPointError`` naming the parameter or layer
before any parameter changes (so parameters are never left NaN). Eigendecompositions run in the factors'
precision with a jitter retry (:func:`geomopt.curvature.symeig`); K-FAC's damped inverses by Cholesky
in the factors' precision when the damped factor is well enough conditioned for it, else (or when that
fails) in float64, and by a clamped eigendecomposition for a factor that is not PSD
(:func:`geomopt.curvature.damped_inverse`); they are recomputed every ``inv_freq`` steps and whenever a
group's damping changed.

EKFAC rotates ``M`` into the eigenbasis from the rotated per-example quantities of the diagonal
estimate, ``U_G^T M U_A = (g U_G)^T (a U_A) / N`` (:func:`geomopt.curvature.factored_rotation`), on
``nn.Linear`` layers with one position per example where that is cheaper (``2 N < d_out + d_in`` on
diagonal steps; between them, with ``diag_freq > 1``, the examples must be rotated first, so
``N (d_in^2 + d_out^2 + 2 d_out d_in) < d_out d_in (d_out + d_in)``), with ``fisher='empirical'``
and no weight decay -- and only after checking that ``.grad`` is that captured gradient (or a
multiple of it, as after clipping) up to rounding; otherwise it rotates densely.
:attr:`EKFAC.factored_layers` names the layers that took the factored path in the last step.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim import Optimizer

from geomopt.checks import check_int, check_number
from geomopt.curvature.capture import (FISHERS, LIKELIHOODS, Capture, WeakHook, backprop_output_grads,
                                       output_hessian_gram)
from geomopt.curvature.distributed import FactorComm, default_group
from geomopt.curvature.kronecker import (all_finite, captured_diagonal, cluster_mean, damped_inverse,
                                         diagonal_from_rotated, eigen_clusters, factored_rotation, kronecker_factors,
                                         pi_split, symeig)
from geomopt.curvature.layers import names_of_supported, supported_layers, unsupported_reason


# ---------------------------------------------------------------- functional core
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


def kl_clip_factor(directions: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[float], kl_clip: float) -> float:
    """``nu = min(1, sqrt(kl_clip / sum lr^2 <d, g>))`` (1 when the sum is not positive)."""
    vg = sum(lr * lr * float((d * g).sum()) for d, g, lr in zip(directions, grads, lrs))
    if not math.isfinite(vg):
        raise FloatingPointError(f"KL clipping: the preconditioned gradient's inner product is {vg}")
    return min(1.0, math.sqrt(kl_clip / vg)) if vg > 0 else 1.0


def _rng_state(devices: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """The global CPU RNG state and that of the given CUDA devices."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


# ---------------------------------------------------------------- optimizer classes
#: Defaults of KFAC / EKFAC (and of the command line's ``--optimizer kfac|ekfac``). Damping 0.03 with a
#: KL clip of 1e-3 trains the digits and MNIST-1D MLPs and CNNs at lr 0.05 with momentum 0.9
#: (tests/optim/test_kfac_defaults.py); damping 1e-3 without a clip blew the loss up there.
DEFAULT_LR, DEFAULT_DAMPING, DEFAULT_MOMENTUM, DEFAULT_KL_CLIP = 0.05, 0.03, 0.9, 1e-3


#: The per-group options and their ranges (:func:`geomopt.checks.check_number`; checked at construction, in
#: add_param_group and at every step).
_GROUP_RULES: dict[str, dict[str, Any]] = {
    "lr": dict(low=0),
    "damping": dict(low=0, low_open=True),
    "momentum": dict(low=0, high=1, high_open=True),
    "weight_decay": dict(low=0),
}


class _KroneckerOptimizer(Optimizer):
    _name = "K-FAC"

    def __init__(self, model: nn.Module, lr: float, damping: float, momentum: float, weight_decay: float,
                 factor_decay: float, update_freq: int, inv_freq: int, fisher: str, likelihood: str,
                 kl_clip: float | None, mc_samples: int, param_groups: Iterable[dict[str, Any]] | None,
                 seed: int | None, adaptive_damping: bool, damping_interval: int, damping_decay: float,
                 min_damping: float, max_damping: float, adaptive_step: bool,
                 process_group: dist.ProcessGroup | None = None):
        n = self._name
        where = f"{n}: option"
        defaults = dict(lr=lr, damping=damping, momentum=momentum, weight_decay=weight_decay)
        for key, rule in _GROUP_RULES.items():
            check_number(where, key, defaults[key], **rule)
        check_number(where, "factor_decay", factor_decay, low=0, high=1, high_open=True)
        for key, v in (("update_freq", update_freq), ("inv_freq", inv_freq), ("mc_samples", mc_samples),
                       ("damping_interval", damping_interval)):
            check_int(where, key, v, low=1)
        if seed is not None:
            check_int(where, "seed", seed)
        if fisher not in FISHERS:
            raise ValueError(f"{n}: fisher must be one of {FISHERS}, got {fisher!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"{n}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if kl_clip == "auto":
            kl_clip = None if adaptive_step else DEFAULT_KL_CLIP
        if kl_clip is not None:
            check_number(where, "kl_clip", kl_clip, low=0, low_open=True)
            if adaptive_step:
                raise ValueError(f"{n}: kl_clip and adaptive_step exclude each other (the step size comes from the "
                                 "quadratic model)")
        check_number(where, "damping_decay", damping_decay, low=0, high=1, low_open=True, high_open=True)
        check_number(where, "min_damping", min_damping, low=0, low_open=True)
        check_number(where, "max_damping", max_damping, low=min_damping, allow_inf=True)
        self.adaptive_damping, self.adaptive_step = bool(adaptive_damping), bool(adaptive_step)
        self.damping_interval, self.damping_decay = damping_interval, float(damping_decay)
        self.min_damping, self.max_damping = float(min_damping), float(max_damping)
        #: the last reduction ratio of the Levenberg-Marquardt rule, step size and momentum of adaptive_step
        self.last_rho: float | None = None
        self.last_step_size: float | None = None
        self.last_momentum: float | None = None
        super().__init__(list(param_groups) if param_groups is not None else model.parameters(), defaults)
        self.factor_decay, self.update_freq, self.inv_freq = float(factor_decay), int(update_freq), int(inv_freq)
        self.fisher, self.likelihood, self.kl_clip, self.mc_samples = fisher, likelihood, kl_clip, int(mc_samples)
        self.model = model
        self._param_names = {p: name for name, p in model.named_parameters()}
        optimized = {p for g in self.param_groups for p in g["params"]}
        for p in optimized:
            if p not in self._param_names:
                raise ValueError(f"{n}: a parameter of shape {tuple(p.shape)} is not a parameter of "
                                 f"{type(model).__name__}; Kronecker factors are defined by the model's layers")
        self.layers = supported_layers(model, include=lambda m: m.weight in optimized)
        if not self.layers:
            raise ValueError(f"{n}: {type(model).__name__} has no optimized layer that {n} supports "
                             f"(supported: {names_of_supported()}; grouped convolutions are not); use SGD or Adam")
        if not any(m.weight.requires_grad for _, m, _ in self.layers):
            raise ValueError(f"{n}: nothing to train: the weight of every layer it would precondition is frozen "
                             f"(requires_grad=False: {', '.join(name for name, _, _ in self.layers)}); unfreeze a "
                             "layer before building the optimizer")
        covered = {p for _, m, h in self.layers for p in h.params(m)}
        fallback = [self._param_names[p] for g in self.param_groups for p in g["params"] if p not in covered]
        if fallback:
            reasons = {}
            for mname, module in model.named_modules():
                if any(p in optimized and p not in covered for p in module.parameters(recurse=False)):
                    reasons[mname or type(module).__name__] = unsupported_reason(module) or "not supported"
            warnings.warn(f"{n}: {len(fallback)} parameter(s) of layers it does not support get the plain gradient "
                          f"(momentum SGD): {', '.join(fallback)}; " +
                          "; ".join(f"{k}: {v}" for k, v in reasons.items()), stacklevel=3)
        self.fallback_params = fallback
        self._group_of = {p: g for g in self.param_groups for p in g["params"]}
        self._step_count = 0
        self._inputs: list[dict[str, Any]] = []  # the model's inputs per micro-batch (fisher 'true'/'ggn')
        self._internal = False  # inside a pass of the optimizer's own: record nothing
        self._one_batch = False  # inside micro_batch(): forwards do not start micro-batches
        self._generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else int(seed))
        self._capture = Capture(self.layers, grad_scale=None if fisher == "empirical" else 1.0).attach()
        self._hooks = [model.register_forward_pre_hook(WeakHook(self, "_on_model_forward", model), with_kwargs=True),
                       model.register_forward_hook(WeakHook(self, "_after_model_forward", model))]
        group = process_group if process_group is not None else default_group()
        #: the collectives across data-parallel processes (None in one process)
        self.comm = FactorComm(group) if group is not None and dist.get_world_size(group) > 1 else None
        self._arm()

    # -- bookkeeping
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._check_group(len(self.param_groups), {**self.defaults, **param_group})  # before: a bad group is not added
        super().add_param_group(param_group)

    def _check_group(self, index: int, group: dict[str, Any]) -> None:
        for key, rule in _GROUP_RULES.items():
            check_number(f"{self._name}: param group {index}", key, group[key], **rule)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("damping", 1e-3)
            group.setdefault("momentum", 0.0)
            group.setdefault("weight_decay", 0.0)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["kronecker"] = {"step": self._step_count, "generator": self._generator.get_state()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("kronecker", {"step": 0})
        super().load_state_dict(state_dict)
        self._step_count = int(extra["step"])
        if "generator" in extra:
            self._generator.set_state(extra["generator"])
        self._capture.clear()
        self._inputs = []
        self._arm()

    def remove_hooks(self) -> None:
        """Detach the hooks from the model (the optimizer then records no statistics any more)."""
        self._capture.active = False
        self._capture.remove()
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __del__(self) -> None:
        try:
            self.remove_hooks()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _needs_stats(self, k: int) -> bool:
        return k % self.update_freq == 0

    def _needs_model(self, k: int) -> bool:
        """Whether step ``k`` evaluates the exact quadratic model (it needs the batch's inputs)."""
        return self.adaptive_step or (self.adaptive_damping and (k + 1) % self.damping_interval == 0)

    def _cuda_devices(self) -> list[int]:
        return sorted({p.device.index or 0 for p in self.model.parameters() if p.device.type == "cuda"})

    def _arm(self) -> None:
        """Record in the forwards before the next step only if that step needs statistics from them."""
        need = self._needs_stats(self._step_count)
        self._capture.active = need and self.fisher == "empirical"
        self._want_inputs = (need and self.fisher != "empirical") or self._needs_model(self._step_count)

    # -- recording: every forward of the model with gradients enabled is one micro-batch
    @contextlib.contextmanager
    def micro_batch(self):
        """Every forward of the model inside is part of ONE micro-batch (outside, each forward starts one).

        For a model called several times for one loss over the same examples (siamese networks, two
        views of each example): ``with opt.micro_batch(): loss = f(model(x1), model(x2))``. Each layer's
        calls are then one layer applied at ``T`` = calls positions per example, as KFC treats shared
        weights: ``A`` averages the inputs of every call, ``G`` sums the calls' output-gradient products
        per example, EKFAC's per-example gradients are ``M_n = sum_calls g a^T``; the empirical gradients
        are scaled by ``N`` (one micro-batch). Without it the two forwards are two micro-batches: factors
        averaged over them and the output gradients scaled by ``2 N`` (``G`` 4x too large for one loss).

        Raises:
            ValueError: with ``fisher='true'``/``'ggn'`` (the Fisher pass samples targets per forward) or
                the adaptive options (their quadratic model re-evaluates each forward as a micro-batch).
        """
        if self.fisher != "empirical" or self.adaptive_damping or self.adaptive_step:
            raise ValueError(f"{self._name}: micro_batch() needs fisher='empirical' without adaptive_damping / "
                             f"adaptive_step (got fisher={self.fisher!r}): their passes treat each forward of the "
                             "model as its own micro-batch")
        outer = self._one_batch
        if not outer:
            self._capture.new_batch()
        self._one_batch = True
        try:
            yield self
        finally:
            self._one_batch = outer

    def _on_model_forward(self, module, args, kwargs):
        if self._internal or not torch.is_grad_enabled():
            return
        if not self._one_batch:
            self._capture.new_batch()
        if self._want_inputs:
            self._inputs.append({"args": tuple(a.detach() if isinstance(a, Tensor) else a for a in args),
                                 "kwargs": {k: v.detach() if isinstance(v, Tensor) else v for k, v in kwargs.items()},
                                 "done": False})

    def _after_model_forward(self, module, args, output):
        if self._internal or not torch.is_grad_enabled() or not self._want_inputs or not self._inputs:
            return
        record = self._inputs[-1]
        if isinstance(output, Tensor) and output.requires_grad:  # counts once its backward has run
            output.register_hook(lambda grad: record.__setitem__("done", True))
        else:
            record["done"] = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Also drops the statistics of the backward passes whose gradients it discards; forwards still
        waiting for their backward keep theirs (``loss = f(model(x)); opt.zero_grad(); loss.backward()``
        records that batch)."""
        self._capture.clear(backpropagated_only=True)
        self._inputs = [r for r in self._inputs if not r["done"]]
        super().zero_grad(set_to_none=set_to_none)

    @contextlib.contextmanager
    def _isolated(self, rng: tuple[Tensor, list[Tensor]] | None = None):
        """A pass of the optimizer's own that the user does not see: nothing recorded by the user-facing
        hooks, the model's buffers (BatchNorm statistics, ``num_batches_tracked``) restored afterwards,
        and the global RNG streams restored too. Inside, the streams are set to ``rng`` (a state from
        :func:`_rng_state`), or else seeded from the optimizer's generator, so that dropout and sampled
        targets are reproducible and independent of the user's draws."""
        saved = [b.detach().clone() for b in self.model.buffers()]
        devices = self._cuda_devices()
        active = self._capture.active
        with torch.random.fork_rng(devices=devices):
            if rng is None:
                seed = int(torch.randint(0, 2 ** 62, (1,), generator=self._generator))
                torch.default_generator.manual_seed(seed)
                for d in devices:
                    torch.cuda.default_generators[d].manual_seed(seed)
            else:
                torch.set_rng_state(rng[0])
                for d, st in zip(devices, rng[1]):
                    torch.cuda.set_rng_state(st, d)
            self._internal, self._capture.active = True, False
            try:
                yield
            finally:
                self._internal, self._capture.active = False, active
                with torch.no_grad():
                    for b, old in zip(self.model.buffers(), saved):
                        b.copy_(old)

    def _fisher_passes(self) -> None:
        """One forward and ``K`` backward passes with sampled (``true``) or Hessian-square-root (``ggn``)
        output gradients per recorded micro-batch, in :meth:`_isolated`."""
        records = [r for r in self._inputs if r["done"]]  # kept for the quadratic model; step() clears them
        self._capture.clear()
        if not records:
            return
        params = [p for _, m, h in self.layers for p in h.params(m)]
        with self._isolated():
            self._capture.active, self._capture.keep_outputs = True, True  # the context restores .active
            try:
                for r in records:
                    self._capture.new_batch()
                    with torch.enable_grad():
                        out = self.model(*r["args"], **r["kwargs"])
                        # to the layers' outputs (no parameter gradient needed), unless one was modified in place
                        targets = self._capture.output_tensors(self._capture.batch) or params
                        try:
                            backprop_output_grads(out, targets, fisher=self.fisher, likelihood=self.likelihood,
                                                  mc_samples=self.mc_samples)
                        except FloatingPointError as exc:
                            raise FloatingPointError(f"{self._name}: {exc}; nothing was updated") from exc
            finally:
                self._capture.keep_outputs = False

    @staticmethod
    def _running(state: dict, key: str, value: Tensor, decay: float) -> None:
        if key in state:
            state[key].mul_(decay).add_(value, alpha=1 - decay)
        else:
            state[key] = value.clone()

    def _combined(self, name: str, fn: Callable[[int], Tensor | None]) -> Tensor | None:
        """``sum_b (N_b / N) fn(b)`` over the micro-batches ``b`` recorded for layer ``name`` (``N_b`` examples
        each, ``N`` in all): a statistic of all examples since the last step, each weighted equally."""
        batches = self._capture.batches(name)
        sizes = [self._capture.grad_shape(name, b)[1] for b in batches]
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
                raise FloatingPointError(f"{self._name}: layer {name!r}: NaN/inf in {what}; nothing was updated; "
                                         "lower the learning rate or raise the damping")

    def _check_gradients(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not all_finite(p.grad):
                    raise FloatingPointError(f"{self._name}: the gradient of {self._param_names[p]!r} has NaN/inf "
                                             "entries; nothing was updated; lower the learning rate or clip gradients")

    # -- the step
    def update_curvature(self, k: int) -> None:
        """Step ``k``'s curvature update, the one place where factors change: the Kronecker factors of the
        micro-batches recorded since the last step (every ``update_freq`` steps; checked finite before
        any is used) enter the running averages, then the inverses / eigenbases are recomputed (every
        ``inv_freq`` steps, or when a group's damping changed), then EKFAC's diagonal."""
        if self._needs_stats(k):
            if self.fisher != "empirical":
                self._fisher_passes()
            if not self._capture.names() and not getattr(self, "_warned_empty", False):
                self._warned_empty = True
                warnings.warn(f"{self._name}: step {k} needed statistics but no forward/backward through the model "
                              "was recorded since the last step (build the optimizer before the forward pass, and "
                              "call the model itself, not its submodules); layers without factors take plain "
                              "gradient steps", stacklevel=3)
        if k % self.update_freq == 0:
            factors: dict[str, tuple[Tensor, Tensor]] = {}
            for name, _, _ in self.layers:
                if self._capture.batches(name):
                    per_batch = {}  # both factors of a micro-batch from one pass over its records
                    fa = self._combined(name, lambda b: per_batch.setdefault(
                        b, kronecker_factors(*self._capture.get(name, b)))[0])
                    fg = self._combined(name, lambda b: per_batch.pop(b)[1])
                    factors[name] = (fa, fg)
            self._check_finite({n: torch.stack([f[0].sum(), f[1].sum()]) for n, f in factors.items()},
                               "its factors (its inputs or output gradients)")
            for name, module, _ in self.layers:
                if name in factors:
                    state = self.state[module.weight]
                    self._running(state, "A", factors[name][0], self.factor_decay)
                    self._running(state, "G", factors[name][1], self.factor_decay)
            self._stage(("A", "G"), factors)
        due = [(name, module, handler) for name, module, handler in self.layers
               if "A" in self.state[module.weight] and (k % self.inv_freq == 0 or self._stale(
                   self.state[module.weight], module))]
        if due and self.comm is not None:
            self.comm.flush()  # the factors before their inverses
        self._check_finite({name: torch.stack([self.state[m.weight]["A"].sum(), self.state[m.weight]["G"].sum()])
                            for name, m, _ in due}, "its running factors")
        self._invert_all(due)
        self._after_stats(k)
        if self._diagonal_step(k):
            self._stage(("S",), [name for name, m, _ in self.layers if "S" in self.state[m.weight]])
        if self.comm is not None:
            self.comm.flush()  # one all-reduce of every statistic not yet averaged

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update from the statistics recorded since the last step. ``closure`` (optional; required by
        ``adaptive_damping``) zeroes the gradients, re-evaluates the model, backpropagates and returns the loss.

        Raises:
            ValueError: a param group's option is not finite or has the wrong sign (naming the group), or
                ``adaptive_damping`` without a closure.
            FloatingPointError: a NaN/inf gradient, factor or direction (naming the layer); then no
                parameter has changed (nor, for a gradient or a batch's factors, any statistic).
        """
        k = self._step_count
        lm = self.adaptive_damping and (k + 1) % self.damping_interval == 0
        if self.adaptive_damping and closure is None:
            raise ValueError(f"{self._name}: adaptive_damping needs step(closure): the closure (zero_grad, forward, "
                             "backward, return the loss) is evaluated again at the new parameters every "
                             "damping_interval steps")
        rng = _rng_state(self._cuda_devices()) if lm else None  # the closure's randomness, for its re-evaluation
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            self._check_group(i, group)
        self._group_of = {p: g for g in self.param_groups for p in g["params"]}  # groups change on load_state_dict
        self._check_gradients()
        try:
            self.update_curvature(k)
            layers = self._layer_directions()
            updates = self._kronecker_updates(layers)
            fallback = self._fallback_updates()
            predicted = self._model_change(layers, updates, fallback) if lm else None
        finally:
            self._after_directions()
            self._capture.clear()
            self._inputs = []
        # nothing has changed a parameter up to here
        for (name, module, handler, params, group, m, d), delta in zip(layers, updates):
            for p, part in zip(params, handler.from_matrix(module, delta)):
                p.add_(part)
        for p, delta in fallback:
            p.add_(delta)
        if lm:
            self._adapt_damping(float(torch.as_tensor(loss).detach()), predicted, closure, rng, layers, updates, fallback)
        self._step_count += 1
        self._arm()
        return loss

    def _layer_directions(self) -> list[tuple]:
        """``(name, module, handler, params, group, M, D)`` of every layer with factors and a gradient:
        ``M`` the gradient matrix (weight decay included), ``D`` its preconditioned direction (checked finite)."""
        out = []
        for name, module, handler in self.layers:
            params = handler.params(module)
            state = self.state[module.weight]
            if any(p.grad is None for p in params) or not self._ready(state):
                continue
            group = self._group_of[module.weight]
            m = handler.to_matrix(module, [p.grad for p in params])
            if group["weight_decay"] != 0:
                m = m + group["weight_decay"] * handler.to_matrix(module, [p.detach() for p in params])
            d = self._direction(name, state, m, group)
            self._check_finite({name: d}, "its preconditioned direction")
            out.append((name, module, handler, params, group, m, d))
        return out

    def _kronecker_updates(self, layers: list[tuple]) -> list[Tensor]:
        """The parameter change ``delta`` of each layer (a ``(d_out, d_in)`` matrix); momentum buffers and the
        last update are stored in the state here (nothing is applied yet)."""
        if not layers:
            return []
        if self.adaptive_step:
            return self._adaptive_updates(layers)
        nu = 1.0
        if self.kl_clip is not None:
            nu = kl_clip_factor([x[6] for x in layers], [x[5] for x in layers], [x[4]["lr"] for x in layers],
                                self.kl_clip)
        updates = []
        for name, module, handler, params, group, m, d in layers:
            d = d * nu if nu != 1.0 else d
            if group["momentum"] != 0:
                bufs = [self.state[p].get("momentum_buffer") for p in params]
                if any(b is None for b in bufs):
                    buf = d.clone()
                else:
                    buf = handler.to_matrix(module, bufs).mul_(group["momentum"]).add_(d)
                for p, part in zip(params, handler.from_matrix(module, buf)):
                    self.state[p]["momentum_buffer"] = part.clone()
                d = buf
            updates.append(d * -group["lr"])
        return updates

    def _fallback_updates(self) -> list[tuple[Tensor, Tensor]]:
        """Momentum SGD on the plain gradient for parameters without factors (unsupported layers, layers
        before their first factors): ``(param, delta)``; buffers stored in the state."""
        covered = {p for _, m, h in self.layers for p in h.params(m) if self._ready(self.state[m.weight])}
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p in covered:
                    continue
                d = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                if group["momentum"] != 0:
                    buf = self.state[p].get("momentum_buffer")
                    buf = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
                    self.state[p]["momentum_buffer"] = buf
                    d = buf
                out.append((p, d * -group["lr"]))
        return out

    # -- the quadratic model (Martens & Grosse 2015, sections 6.5 and 7)
    def _tangent(self, layers: list[tuple], mats: Sequence[Tensor],
                 fallback: Sequence[tuple[Tensor, Tensor]] = ()) -> dict[str, Tensor]:
        """A parameter-space vector as ``{name: tensor}`` of every model parameter (zero where not given) from
        per-layer ``(d_out, d_in)`` matrices and ``(param, tensor)`` pairs."""
        out = {n: torch.zeros_like(p) for n, p in self.model.named_parameters()}
        for (name, module, handler, params, *_), mat in zip(layers, mats):
            for p, part in zip(params, handler.from_matrix(module, mat)):
                out[self._param_names[p]] = part
        for p, t in fallback:
            out[self._param_names[p]] = t
        return out

    def _ggn_gram(self, tangents: list[dict[str, Tensor]]) -> Tensor:
        """``Q_ij = v_i^T G v_j`` ``(R, R)`` with ``G = (1/N) sum_n J_n^T H_n J_n`` the exact generalized
        Gauss-Newton matrix (the Fisher of the ``likelihood``; Martens & Grosse's "exact F") on the
        micro-batches of this step, by one Jacobian-vector product per vector on the recorded inputs
        (``torch.func.jvp``, in :meth:`_isolated`: buffers and RNG streams as before)."""
        r = len(tangents)
        q = torch.zeros(r, r, dtype=torch.float64)
        records = [rec for rec in self._inputs if rec["done"]]
        if not records:
            raise RuntimeError(f"{self._name}: the quadratic model needs this step's batch, but no forward of the "
                               "model with a backward was recorded since the last step")
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        total = 0
        with self._isolated():
            for rec in records:
                def f(ps, rec=rec):  # buffers cloned inside: BatchNorm may update them in place
                    bufs = {n: b.clone() for n, b in self.model.named_buffers()}
                    return functional_call(self.model, {**ps, **bufs}, rec["args"], rec["kwargs"])
                jvs = []
                for t in tangents:
                    out, jv = torch.func.jvp(f, (params,), (t,))
                    jvs.append(jv.detach())
                q += output_hessian_gram(out.detach(), torch.stack(jvs), self.likelihood)
                total += out.shape[0]
        q /= total
        if self.comm is not None:  # the global batch's: count-weighted mean over the processes
            self.comm.stage([q], total)
            self.comm.flush()
        return q

    def _adaptive_updates(self, layers: list[tuple]) -> list[Tensor]:
        """``delta = alpha Delta + mu delta_0`` with ``Delta = -D`` and ``delta_0`` the last update, ``(alpha, mu)``
        minimizing ``M(delta) = grad^T delta + delta^T (F + (lambda + eta) I) delta / 2`` (exact ``F`` of the
        batch, :meth:`_ggn_gram`): the 2x2 system of Martens & Grosse 2015, section 7 (``mu = 0`` at first,
        and when the system is near singular or its momentum is outside ``(-1, 1)``: then ``alpha`` minimizes
        ``M`` along ``Delta`` alone)."""
        vecs = []
        for name, module, handler, params, group, m, d in layers:
            prev = self.state[module.weight].get("update")
            vecs.append([-d] + ([prev] if prev is not None else []))
        r = min(len(v) for v in vecs)
        vecs = [v[:r] for v in vecs]
        c = self._ggn_gram([self._tangent(layers, [v[i] for v in vecs]) for i in range(r)])
        b = torch.zeros(r, dtype=torch.float64)
        for (name, module, handler, params, group, m, d), v in zip(layers, vecs):
            shift = group["damping"] + group["weight_decay"]
            for i in range(r):
                b[i] += float((m * v[i]).sum())
                for j in range(r):
                    c[i, j] += shift * float((v[i] * v[j]).sum())
        if not (bool(torch.isfinite(c).all()) and bool(torch.isfinite(b).all()) and float(c[0, 0]) > 0):
            raise FloatingPointError(f"{self._name}: the quadratic model is not finite (curvature {c.tolist()}, "
                                     f"slopes {b.tolist()}); raise the damping")
        coef = None
        if r == 2 and float(torch.linalg.det(c)) > 1e-12 * float(c[0, 0] * c[1, 1]):
            coef = torch.linalg.solve(c, -b)
            if not -1 < float(coef[1]) < 1:  # a near-singular system: keep to the new direction
                coef = None
        if coef is None:
            r = 1
            coef = -b[:1] / c[0, 0]
        self.last_step_size = float(coef[0])
        self.last_momentum = float(coef[1]) if r == 2 else 0.0
        vecs = [v[:r] for v in vecs]
        updates = []
        for (name, module, *_), v in zip(layers, vecs):
            delta = sum(float(coef[i]) * v[i] for i in range(r))
            self.state[module.weight]["update"] = delta.clone()
            updates.append(delta)
        return updates

    def _model_change(self, layers: list[tuple], updates: list[Tensor], fallback: list[tuple[Tensor, Tensor]]) -> float:
        """``M(delta) - M(0) = grad^T delta + delta^T (F + eta I) delta / 2`` for the whole update (every
        parameter; ``grad`` with weight decay ``eta``), ``F`` the exact GGN of the batch (:meth:`_ggn_gram`); the
        damping is left out, as in kfac-jax's default ``include_damping_in_quad_change=False``."""
        change = 0.5 * float(self._ggn_gram([self._tangent(layers, updates, fallback)])[0, 0])
        for (name, module, handler, params, group, m, d), u in zip(layers, updates):
            change += float((m * u).sum()) + 0.5 * group["weight_decay"] * float(u.square().sum())
        for p, u in fallback:
            wd = self._group_of[p]["weight_decay"]
            change += float((p.grad * u).sum()) + wd * float((p * u).sum()) + 0.5 * wd * float(u.square().sum())
        return change

    def _adapt_damping(self, loss: float, predicted: float, closure: Callable[[], Tensor], rng, layers, updates,
                       fallback) -> None:
        """The Levenberg-Marquardt rule (Martens & Grosse 2015, section 6.5) at the end of a step: the
        reduction ratio ``rho = (h(theta + delta) - h(theta)) / (M(delta) - M(0))`` on the same batch
        (``closure`` evaluated again at the new parameters with the first evaluation's randomness, in
        :meth:`_isolated`; its gradients discarded); every group's damping times ``omega`` if ``rho > 3/4``,
        divided by ``omega`` if ``rho < 1/4`` (``omega = damping_decay ** damping_interval``), kept in
        ``[min_damping, max_damping]``. ``h`` includes the weight-decay term ``eta |theta|^2 / 2``."""
        reg = 0.0  # h's L2 change: eta (<theta, delta> + |delta|^2 / 2) at the old theta = new theta - delta
        for (name, module, handler, params, group, m, d), u in zip(layers, updates):
            if group["weight_decay"]:
                w = handler.to_matrix(module, [p.detach() for p in params]) - u
                reg += group["weight_decay"] * float((w * u).sum() + 0.5 * u.square().sum())
        for p, u in fallback:
            wd = self._group_of[p]["weight_decay"]
            if wd:
                reg += wd * float(((p - u) * u).sum() + 0.5 * u.square().sum())
        grads = {p: None if p.grad is None else p.grad.clone() for g in self.param_groups for p in g["params"]}
        with self._isolated(rng):
            try:
                with torch.enable_grad():
                    new_loss = float(torch.as_tensor(closure()).detach())
            except FloatingPointError:  # e.g. the engine's non-finite loss: as bad as a step can be
                new_loss = math.inf
        for p, g in grads.items():
            p.grad = g
        actual = new_loss - loss + reg
        rho = actual / predicted if predicted < 0 and math.isfinite(actual) else -math.inf
        omega = self.damping_decay ** self.damping_interval
        factor = omega if rho > 0.75 else 1 / omega if rho < 0.25 else 1.0
        for group in self.param_groups:
            group["damping"] = min(max(group["damping"] * factor, self.min_damping), self.max_damping)
        self.last_rho = rho

    def _stale(self, state: dict, module: nn.Module) -> bool:
        """Whether the layer's inverse was computed with another damping than its group's now."""
        return False

    # -- data parallelism (geomopt.curvature.distributed)
    def _stage(self, keys: tuple[str, ...], names) -> None:
        """Queue the running statistics ``keys`` of the layers ``names`` that recorded examples since the
        last step, to be averaged over the processes (weighted by their examples)."""
        if self.comm is None:
            return
        for name, module, _ in self.layers:
            batches = self._capture.batches(name)
            if name in names and batches:
                count = sum(self._capture.grad_shape(name, b)[1] for b in batches)
                self.comm.stage([self.state[module.weight][key] for key in keys], count)

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

    def _diagonal_step(self, k: int) -> bool:
        return False

    def _inverse_shapes(self, state: dict) -> dict[str, tuple[int, ...]]:
        """What :meth:`_invert` writes into a layer's state: key -> shape."""
        raise NotImplementedError

    # subclass hooks
    def _after_stats(self, k: int) -> None:
        pass

    def _after_directions(self) -> None:
        pass

    def _invert(self, name, module, handler) -> None:
        raise NotImplementedError

    def _ready(self, state: dict) -> bool:
        raise NotImplementedError

    def _direction(self, name: str, state: dict, m: Tensor, group: dict) -> Tensor:
        raise NotImplementedError


_ARGS_DOC = """
    Args:
        model: the network; statistics come from hooks on its ``nn.Linear`` / ``nn.Conv2d`` layers.
        lr: learning rate (default 0.05).
        damping: Tikhonov damping lambda added to the curvature (per parameter group; default 0.03).
        momentum: heavy-ball momentum on the preconditioned direction (0 = none; default 0.9).
        weight_decay: L2 coefficient, added to the gradient before preconditioning.
        factor_decay: running-average decay of the Kronecker factors (and of EKFAC's diagonal).
        update_freq: update the factors every this many steps.
        inv_freq: recompute inverses / eigenbases every this many steps.
        fisher: ``empirical`` (your loss's gradients), ``true`` (targets sampled from the model),
            or ``ggn`` (exact expectation, one backward pass per output).
        likelihood: the model's predictive distribution for ``true``/``ggn``:
            ``categorical`` | ``gaussian`` | ``bernoulli``.
        kl_clip: KL clipping bound (None: off; ``"auto"``: ``DEFAULT_KL_CLIP`` = 1e-3, or off with
            ``adaptive_step``, whose quadratic model chooses the step size).
        mc_samples: sampled targets per example for ``fisher='true'``.
        process_group: data parallelism (:mod:`geomopt.curvature.distributed`): the factors (and
            EKFAC's diagonal) are averaged over its processes, weighted by their examples, in one
            all-reduce per step that updates them, and each layer is inverted on one process and
            broadcast; the adaptive-damping quadratic model uses the global batch. Default: every
            process when ``torch.distributed`` is initialized with several, else none. Wrap the model
            in ``DistributedDataParallel`` for the gradients.
        param_groups: optional parameter groups (dicts with ``params`` and per-group ``lr``,
            ``damping``, ``momentum``, ``weight_decay``); default: all of ``model.parameters()``.
            A layer uses the group of its weight.
        seed: seed of the optimizer's own generator, from which the Fisher pass (``true``/``ggn``)
            seeds its sampled targets and dropout masks (default ``torch.initial_seed()``).
        adaptive_damping: adapt every group's ``damping`` by the Levenberg-Marquardt rule of Martens &
            Grosse (2015, sec. 6.5) every ``damping_interval`` steps (T1): ``rho`` = actual / predicted
            reduction of the exact quadratic model on the batch; ``damping *= omega`` if ``rho > 3/4``,
            ``/= omega`` if ``rho < 1/4``, ``omega = damping_decay ** damping_interval`` (the paper's
            ``(19/20)^T1``), clamped to ``[min_damping, max_damping]``. Needs ``step(closure)``; one
            extra forward/backward (the closure again) every ``damping_interval`` steps.
        damping_interval, damping_decay, min_damping, max_damping: see ``adaptive_damping``.
        adaptive_step: choose the step size ``alpha`` and momentum ``mu`` of every step from the exact
            2x2 quadratic model (Martens & Grosse 2015, sec. 7): ``delta = alpha Delta + mu delta_0``
            minimizing ``grad^T delta + delta^T (F + (damping + weight_decay) I) delta / 2`` over the
            span of the new direction and the last update; ``lr`` and ``momentum`` then apply only to
            parameters without factors. Records the batch (and, for ``true``/``ggn``, runs the Fisher
            pass) every step. Excludes ``kl_clip``.

    Raises:
        ValueError: a bad hyperparameter (naming it and its param group), a parameter that is not the
            model's, a model without any supported layer, or one whose supported layers are all frozen.
        TypeError: a hyperparameter of the wrong type (a string for a number, 1.5 for an integer).
"""


class KFAC(_KroneckerOptimizer):
    __doc__ = r"""K-FAC natural-gradient optimizer with pi-damping (a ``torch.optim.Optimizer``).

    See :mod:`geomopt.optim.kfac` for the update rule and how statistics are gathered.
    """ + _ARGS_DOC + r"""
    Example:
        >>> opt = KFAC(model)  # lr 0.05, damping 0.03, momentum 0.9, kl_clip 1e-3: safe defaults
        >>> opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
    """

    _name = "KFAC"

    def __init__(self, model: nn.Module, lr: float = DEFAULT_LR, damping: float = DEFAULT_DAMPING,
                 momentum: float = DEFAULT_MOMENTUM, weight_decay: float = 0.0, factor_decay: float = 0.95,
                 update_freq: int = 10, inv_freq: int = 100, fisher: str = "empirical", likelihood: str = "categorical",
                 kl_clip: float | Literal["auto"] | None = "auto",
                 mc_samples: int = 1, param_groups: Iterable[dict[str, Any]] | None = None, seed: int | None = None,
                 adaptive_damping: bool = False, damping_interval: int = 5, damping_decay: float = 0.95,
                 min_damping: float = 1e-8, max_damping: float = math.inf, adaptive_step: bool = False,
                 process_group: dist.ProcessGroup | None = None):
        super().__init__(model, lr, damping, momentum, weight_decay, factor_decay, update_freq, inv_freq, fisher,
                         likelihood, kl_clip, mc_samples, param_groups, seed, adaptive_damping, damping_interval,
                         damping_decay, min_damping, max_damping, adaptive_step, process_group)

    def _invert(self, name, module, handler) -> None:
        state = self.state[module.weight]
        damping = self._group_of[module.weight]["damping"]
        ca, cg = pi_split(state["A"], state["G"], damping)
        state["A_inv"] = damped_inverse(state["A"], ca, name=f"{self._name} layer {name!r} factor A")
        state["G_inv"] = damped_inverse(state["G"], cg, name=f"{self._name} layer {name!r} factor G")
        state["inv_damping"] = torch.tensor(float(damping))  # a tensor, so state_dict round trips compare

    def _inverse_shapes(self, state: dict) -> dict[str, tuple[int, ...]]:
        return {"A_inv": state["A"].shape, "G_inv": state["G"].shape, "inv_damping": ()}

    def _stale(self, state: dict, module: nn.Module) -> bool:
        if "inv_damping" not in state:
            return False
        now = float(self._group_of[module.weight]["damping"])  # float32 in a loaded checkpoint: relative test
        return abs(float(state["inv_damping"]) - now) > 1e-6 * now

    def _ready(self, state: dict) -> bool:
        return "A_inv" in state

    def _direction(self, name: str, state: dict, m: Tensor, group: dict) -> Tensor:
        return kfac_direction(m, state["A_inv"], state["G_inv"])


_DIAG_FREQ_DOC = """        diag_freq: re-estimate the eigenbasis diagonal every this many steps (1: every step, the
            paper's algorithm; larger values amortize its per-example cost as ``update_freq`` does
            for the factors).
        diag_decay: running-average decay of the diagonal (``None``: ``factor_decay``; 0: the batch's
            diagonal only, the authors' default; see above).
"""


class EKFAC(_KroneckerOptimizer):
    __doc__ = r"""EKFAC: K-FAC in the Kronecker eigenbasis with a diagonal re-estimated every step.

    See :mod:`geomopt.optim.kfac` for the update rule. Every ``diag_freq`` steps (default: every
    step, as in the paper) it re-estimates the diagonal from per-example layer inputs and output
    gradients (with ``fisher='true'``, recorded in one extra forward/backward).

    The diagonal after a new eigenbasis: every ``inv_freq`` steps it is reset to K-FAC's eigenvalues
    ``e_G e_A^T`` and then, in that step and each diagonal step after, averaged with the batch's
    re-estimate, ``s <- d s + (1 - d) s_batch`` (``d = diag_decay``, by default ``factor_decay``). So at
    the ``j``-th diagonal update after the new basis (``j = 1`` in the step that computed it) the K-FAC
    eigenvalues keep weight ``d^j``: with ``d = 0.95`` and ``inv_freq = 20`` (``diag_freq = 1``), 95%
    in the first step, 36% in the 20th, 61% on average over the 20 steps (64% counting the weight each
    step starts from, ``d^(j-1)``). The authors' code (Thrandis/EKFAC-pytorch) re-estimates it from the
    current batch only by default (``ra=False``: ``diag_decay=0``, the K-FAC eigenvalues are never used
    in a step), or as a running average with ``alpha = 0.75`` (``diag_decay=0.75``: 75% in the first
    step, 4% in the 11th) of batch-size-scaled squared batch gradients (ours: exact per-example squares).
    """ + _ARGS_DOC.replace("\n    Raises:", _DIAG_FREQ_DOC + "\n    Raises:") + r"""
    Example:
        >>> opt = EKFAC(model)  # lr 0.05, damping 0.03, momentum 0.9, kl_clip 1e-3: safe defaults
        >>> opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
    """

    _name = "EKFAC"

    def __init__(self, model: nn.Module, lr: float = DEFAULT_LR, damping: float = DEFAULT_DAMPING,
                 momentum: float = DEFAULT_MOMENTUM, weight_decay: float = 0.0, factor_decay: float = 0.95,
                 update_freq: int = 10, inv_freq: int = 100, fisher: str = "empirical", likelihood: str = "categorical",
                 kl_clip: float | Literal["auto"] | None = "auto",
                 mc_samples: int = 1, param_groups: Iterable[dict[str, Any]] | None = None, diag_freq: int = 1,
                 diag_decay: float | None = None, seed: int | None = None,
                 adaptive_damping: bool = False, damping_interval: int = 5, damping_decay: float = 0.95,
                 min_damping: float = 1e-8, max_damping: float = math.inf, adaptive_step: bool = False,
                 process_group: dist.ProcessGroup | None = None):
        check_int("EKFAC: option", "diag_freq", diag_freq, low=1)
        if diag_decay is not None:
            check_number("EKFAC: option", "diag_decay", diag_decay, low=0, high=1, high_open=True)
        self.diag_freq = int(diag_freq)  # before the base class arms the hooks for step 0
        super().__init__(model, lr, damping, momentum, weight_decay, factor_decay, update_freq, inv_freq, fisher,
                         likelihood, kl_clip, mc_samples, param_groups, seed, adaptive_damping, damping_interval,
                         damping_decay, min_damping, max_damping, adaptive_step, process_group)
        self.diag_decay = float(factor_decay if diag_decay is None else diag_decay)  # both checked by now
        self._rotated: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        #: layers whose gradient was rotated into the eigenbasis from the per-example quantities in the
        #: last step (:func:`geomopt.curvature.factored_rotation`); the others were rotated densely
        self.factored_layers: set[str] = set()

    def _needs_stats(self, k: int) -> bool:
        return super()._needs_stats(k) or k % self.diag_freq == 0

    def _diagonal_step(self, k: int) -> bool:
        return k % self.diag_freq == 0

    def _inverse_shapes(self, state: dict) -> dict[str, tuple[int, ...]]:
        d_g, d_a = state["G"].shape[0], state["A"].shape[0]
        return {"U_A": (d_a, d_a), "U_G": (d_g, d_g), "S": (d_g, d_a), "C_A": (d_a,), "C_G": (d_g,)}

    def _invert(self, name, module, handler) -> None:
        state = self.state[module.weight]
        ea, ua = symeig(state["A"], name=f"{self._name} layer {name!r} factor A")
        eg, ug = symeig(state["G"], name=f"{self._name} layer {name!r} factor G")
        state["U_A"], state["U_G"] = ua, ug
        state["C_A"], state["C_G"] = eigen_clusters(ea), eigen_clusters(eg)  # repeated eigenvalues
        state["S"] = eg[:, None] * ea[None, :]

    def _ready(self, state: dict) -> bool:
        return "S" in state

    def _direction(self, name: str, state: dict, m: Tensor, group: dict) -> Tensor:
        cached = self._rotated.pop(name, None)
        rotated = None
        if cached is not None and group["weight_decay"] == 0:  # weight decay would need W rotated densely
            rotated = factored_rotation(m, *cached)  # None unless m is exactly the captured gradient
        if rotated is not None:
            self.factored_layers.add(name)
        return ekfac_direction(m, state["U_A"], state["U_G"], state["S"], group["damping"], rotated)

    def _after_directions(self) -> None:
        self._rotated.clear()

    def _arm(self) -> None:
        super()._arm()
        if self.fisher == "empirical":  # cheap (inputs are expanded only when used), so on every step: Linear
            self._capture.active = True  # layers rotate from their examples between diagonal steps too

    def _after_stats(self, k: int) -> None:
        self.factored_layers = set()
        self._rotated.clear()
        diag = k % self.diag_freq == 0
        diagonals: dict[str, Tensor] = {}
        for name, module, _ in self.layers:
            state = self.state[module.weight]
            batches = self._capture.batches(name)
            if "U_A" not in state or not batches:
                continue
            single = len(batches) == 1
            s = self._combined(name, lambda b: self._batch_diagonal(name, state, b, diag, single))
            if s is not None:
                diagonals[name] = s
        self._check_finite(diagonals, "the eigenbasis diagonal")
        for name, module, _ in self.layers:
            if name in diagonals:
                state = self.state[module.weight]
                if "C_A" in state:  # (absent from checkpoints of before it existed)
                    diagonals[name] = cluster_mean(diagonals[name], state["C_G"], state["C_A"])
                self._running(state, "S", diagonals[name], self.diag_decay)

    def _batch_diagonal(self, name: str, state: dict, batch: int, diag: bool, single: bool) -> Tensor | None:
        """Micro-batch ``batch``'s eigenbasis diagonal (when ``diag``); on a Linear layer with one micro-batch
        the rotated examples are also kept for :func:`factored_rotation` where that is cheaper."""
        k, n, t, d_out = self._capture.grad_shape(name, batch)
        d_in = state["U_A"].shape[0]
        if t == 1:  # Linear on (N, d_in) inputs: the rotated examples serve the diagonal and the rotation
            # multiply-adds of the factored rotation (with its exactness check) vs the dense d_out d_in (d_out +
            # d_in): 2 N d_out d_in when the diagonal rotates the examples anyway, else N (d_in^2 + d_out^2) more
            cost = 2 * n * d_out * d_in + (0 if diag else n * (d_in * d_in + d_out * d_out))
            factored = self.fisher == "empirical" and k == 1 and single and cost < d_out * d_in * (d_out + d_in)
            if not (diag or factored):
                return None
            g, a = self._capture.output_grads(name, batch), self._capture.inputs(name, batch)
            ga, aa = g @ state["U_G"], a @ state["U_A"]
            if factored:
                self._rotated[name] = (a, g, ga, aa)
            return diagonal_from_rotated(ga, aa) if diag else None
        if diag:
            return captured_diagonal(self._capture, name, state["U_A"], state["U_G"], batch)  # conv: no patches
        return None
