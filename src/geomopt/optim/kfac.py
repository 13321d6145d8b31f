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

Composition (issue 27): ``KFAC`` / ``EKFAC`` = a Kronecker geometry (:mod:`geomopt.optim.kronecker_geometry`:
running factors, inversion schedule, EKFAC's diagonal; :mod:`geomopt.optim.kronecker_recorder`: hooks,
micro-batches, Fisher passes) + the shared step rule (:mod:`geomopt.optim.step_rule`: weight decay, KL clip,
momentum; :mod:`geomopt.optim.quadratic`: automatic step, Levenberg-Marquardt). The geometry alone, in front
of any torch optimizer: :class:`geomopt.optim.KFACPreconditioner`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from geomopt.checks import check_int, check_number
from geomopt.optim.kronecker_geometry import (EigenKroneckerGeometry, KroneckerGeometry, check_eigen_options,
                                              check_kronecker_options, ekfac_direction, kfac_direction)
from geomopt.optim.kronecker_recorder import rng_state
from geomopt.optim.quadratic import LevenbergMarquardt, QuadraticModel
from geomopt.optim.step_rule import (BlockStep, block_steps, check_gradients, check_group, euclidean_deltas,
                                     kl_clip_factor, momentum_deltas)

__all__ = ["KFAC", "EKFAC", "kfac_direction", "ekfac_direction", "kl_clip_factor"]

#: Defaults of KFAC / EKFAC (and of the command line's ``--optimizer kfac|ekfac``). Damping 0.03 with a
#: KL clip of 1e-3 trains the digits and MNIST-1D MLPs and CNNs at lr 0.05 with momentum 0.9
#: (tests/optim/test_kfac_defaults.py); damping 1e-3 without a clip blew the loss up there.
DEFAULT_LR, DEFAULT_DAMPING, DEFAULT_MOMENTUM, DEFAULT_KL_CLIP = 0.05, 0.03, 0.9, 1e-3

#: The per-group options and their ranges (:func:`geomopt.checks.check_number`; checked at construction, in
#: add_param_group and at every step): the step rule's and the Kronecker geometry's damping.
_GROUP_RULES: dict[str, dict[str, Any]] = {
    "lr": dict(low=0),
    "damping": dict(low=0, low_open=True),
    "momentum": dict(low=0, high=1, high_open=True),
    "weight_decay": dict(low=0),
}


def _check_options(n: str, defaults: dict, *, kl_clip, adaptive_step, damping_interval, damping_decay, min_damping,
                   max_damping):
    """Check the step rule's options (the error names the option; the geometry checks its own); returns
    ``kl_clip`` with ``"auto"`` resolved."""
    where = f"{n}: option"
    check_group(where, defaults, _GROUP_RULES)
    check_int(where, "damping_interval", damping_interval, low=1)
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
    return kl_clip


class _KroneckerOptimizer(Optimizer):
    """A Kronecker geometry (:mod:`geomopt.optim.kronecker_geometry`) + the step rule
    (:mod:`geomopt.optim.step_rule`; :mod:`geomopt.optim.quadratic` for the adaptive options)."""

    _name = "K-FAC"
    _geometry: type[KroneckerGeometry] = KroneckerGeometry

    def __init__(self, model: nn.Module, lr: float, damping: float, momentum: float, weight_decay: float,
                 factor_decay: float, update_freq: int, inv_freq: int, fisher: str, likelihood: str,
                 kl_clip: float | None, mc_samples: int, param_groups: Iterable[dict[str, Any]] | None,
                 seed: int | None, adaptive_damping: bool, damping_interval: int, damping_decay: float,
                 min_damping: float, max_damping: float, adaptive_step: bool,
                 process_group: dist.ProcessGroup | None = None, **geometry_options: Any):
        defaults = dict(lr=lr, damping=damping, momentum=momentum, weight_decay=weight_decay)
        check_kronecker_options(f"{self._name}: option", factor_decay=factor_decay, update_freq=update_freq,
                                inv_freq=inv_freq, mc_samples=mc_samples, seed=seed, fisher=fisher, likelihood=likelihood)
        self.kl_clip = _check_options(self._name, defaults, kl_clip=kl_clip, adaptive_step=adaptive_step,
                                      damping_interval=damping_interval, damping_decay=damping_decay,
                                      min_damping=min_damping, max_damping=max_damping)
        self.adaptive_damping, self.adaptive_step = bool(adaptive_damping), bool(adaptive_step)
        self.lm = LevenbergMarquardt(damping_interval, damping_decay, min_damping, max_damping)
        #: the last reduction ratio of the Levenberg-Marquardt rule, step size and momentum of adaptive_step
        self.last_rho: float | None = None
        self.last_step_size: float | None = None
        self.last_momentum: float | None = None
        super().__init__(list(param_groups) if param_groups is not None else model.parameters(), defaults)
        self.model = model
        self.geometry = self._geometry(
            model, [p for g in self.param_groups for p in g["params"]], factor_decay=factor_decay,
            update_freq=update_freq, inv_freq=inv_freq, fisher=fisher, likelihood=likelihood, mc_samples=mc_samples,
            seed=seed, process_group=process_group, name=self._name, stacklevel=4, **geometry_options)
        self.geometry.share_state(self.state)
        self.quadratic = QuadraticModel(self.geometry)
        self._step_count = 0
        self._arm()

    # the geometry's attributes, as before the split
    layers = property(lambda self: self.geometry.layers, doc="``(name, module, handler)`` of the layers with factors")
    fallback_params = property(lambda self: self.geometry.fallback_params,
                               doc="names of the optimized parameters outside them (momentum SGD)")
    comm = property(lambda self: self.geometry.comm, doc="the data-parallel collectives (None in one process)")
    fisher = property(lambda self: self.geometry.fisher)
    likelihood = property(lambda self: self.geometry.likelihood)
    factor_decay = property(lambda self: self.geometry.factor_decay)
    update_freq = property(lambda self: self.geometry.update_freq)
    inv_freq = property(lambda self: self.geometry.inv_freq)
    mc_samples = property(lambda self: self.geometry.mc_samples)

    # -- bookkeeping
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._check_group(len(self.param_groups), {**self.defaults, **param_group})  # before: a bad group is not added
        super().add_param_group(param_group)

    def _check_group(self, index: int, group: dict[str, Any]) -> None:
        check_group(f"{self._name}: param group {index}", group, _GROUP_RULES)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("damping", 1e-3)
            group.setdefault("momentum", 0.0)
            group.setdefault("weight_decay", 0.0)
        if "geometry" in self.__dict__:  # load_state_dict replaced self.state
            self.geometry.share_state(self.state)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["kronecker"] = {"step": self._step_count, **self.geometry.extra_state()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("kronecker", {"step": 0})
        super().load_state_dict(state_dict)
        self._step_count = int(extra["step"])
        self.geometry.load_extra_state(extra)
        self._arm()

    def remove_hooks(self) -> None:
        """Detach the hooks from the model (the optimizer then records no statistics any more)."""
        self.geometry.remove_hooks()

    def _arm(self) -> None:
        """Record in the forwards before the next step only what that step needs (the model's inputs also when
        it evaluates the exact quadratic model)."""
        k = self._step_count
        self.geometry.arm(k, self.adaptive_step or (self.adaptive_damping and self.lm.due(k)))

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
        with self.geometry.recorder.micro_batch():
            yield self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Also drops the statistics of the backward passes whose gradients it discards; forwards still
        waiting for their backward keep theirs (``loss = f(model(x)); opt.zero_grad(); loss.backward()``
        records that batch)."""
        self.geometry.recorder.drop_backpropagated()
        super().zero_grad(set_to_none=set_to_none)

    # -- the step
    def update_curvature(self, k: int) -> None:
        """Step ``k``'s curvature update (:meth:`KroneckerGeometry.update`)."""
        self.geometry.update(k, self.param_groups)

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
        lm = self.adaptive_damping and self.lm.due(k)
        if self.adaptive_damping and closure is None:
            raise ValueError(f"{self._name}: adaptive_damping needs step(closure): the closure (zero_grad, forward, "
                             "backward, return the loss) is evaluated again at the new parameters every "
                             "damping_interval steps")
        rng = rng_state(self.geometry.recorder.cuda_devices()) if lm else None  # for the closure's re-evaluation
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            self._check_group(i, group)
        group_of = {p: g for g in self.param_groups for p in g["params"]}  # groups change on load_state_dict
        check_gradients(self._name, self.param_groups, self.geometry.names)
        try:
            self.update_curvature(k)
            steps, covered = block_steps(self.geometry, group_of)
            updates = self._deltas(steps)
            fallback = euclidean_deltas(self.param_groups, covered, self.state)
            predicted = self.quadratic.change(steps, updates, fallback, group_of) if lm else None
        finally:
            self.geometry.end_step()
        # nothing has changed a parameter up to here
        for s, delta in zip(steps, updates):
            for p, part in zip(s.block.params, s.block.from_matrix(delta)):
                p.add_(part)
        for p, delta in fallback:
            p.add_(delta)
        if lm:
            self.last_rho = self.lm.adapt(self.quadratic, float(torch.as_tensor(loss).detach()), predicted, closure,
                                          rng, steps, updates, fallback, self.param_groups, group_of)
        self._step_count += 1
        self._arm()
        return loss

    def _deltas(self, steps: list[BlockStep]) -> list[Tensor]:
        """Each block's parameter change (momentum buffers / last update stored; nothing applied)."""
        if not steps:
            return []
        if self.adaptive_step:
            updates, self.last_step_size, self.last_momentum = self.quadratic.adaptive_deltas(steps, self.state)
            return updates
        return momentum_deltas(steps, self.state, self.kl_clip)


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
    _geometry = EigenKroneckerGeometry

    def __init__(self, model: nn.Module, lr: float = DEFAULT_LR, damping: float = DEFAULT_DAMPING,
                 momentum: float = DEFAULT_MOMENTUM, weight_decay: float = 0.0, factor_decay: float = 0.95,
                 update_freq: int = 10, inv_freq: int = 100, fisher: str = "empirical", likelihood: str = "categorical",
                 kl_clip: float | Literal["auto"] | None = "auto",
                 mc_samples: int = 1, param_groups: Iterable[dict[str, Any]] | None = None, diag_freq: int = 1,
                 diag_decay: float | None = None, seed: int | None = None,
                 adaptive_damping: bool = False, damping_interval: int = 5, damping_decay: float = 0.95,
                 min_damping: float = 1e-8, max_damping: float = math.inf, adaptive_step: bool = False,
                 process_group: dist.ProcessGroup | None = None):
        check_eigen_options("EKFAC: option", diag_freq, diag_decay)  # before the base class's checks, as before
        super().__init__(model, lr, damping, momentum, weight_decay, factor_decay, update_freq, inv_freq, fisher,
                         likelihood, kl_clip, mc_samples, param_groups, seed, adaptive_damping, damping_interval,
                         damping_decay, min_damping, max_damping, adaptive_step, process_group, diag_freq=diag_freq,
                         diag_decay=diag_decay)

    diag_freq = property(lambda self: self.geometry.diag_freq)
    diag_decay = property(lambda self: self.geometry.diag_decay)

    @property
    def factored_layers(self) -> set[str]:
        """Layers whose gradient was rotated into the eigenbasis from the per-example quantities in the last
        step (:func:`geomopt.curvature.factored_rotation`); the others were rotated densely."""
        return self.geometry.factored_layers
