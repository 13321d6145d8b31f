r"""Path-SGD: steepest descent with respect to the path regularizer.

Neyshabur, Salakhutdinov & Srebro, "Path-SGD: Path-Normalized Optimization in Deep Neural
Networks", NeurIPS 2015. Each edge e = u -> v is updated as

    w_e <- w_e - lr * (dL/dw_e) / gamma_e(w),
    gamma_e(w) = d pi_2(w) / d(w_e^2) = gamma_in(u) * gamma_out(v)

(a bias of unit v is divided by gamma_out(v)). gamma is recomputed from the current weights at
every step (never accumulated) by the squared-network trick of
:class:`geomopt.geometry.PathScales`. The update commutes with node rescaling: a rescaled
network follows the same function trajectory, which is why Path-SGD is robust to unbalanced
initializations where SGD is not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from geomopt.checks import check_number
from geomopt.geometry.path_norm import BLOCK_ELEMENTS, BlockVisitor, PathScales, RankOneScale, visit_rows
from geomopt.geometry.rnn_path import RNNPathScales
from geomopt.optim import _path_sgd_kernels
from geomopt.optim.path_geometry import PathGeometry, first_step_ratio, floored
from geomopt.optim.step_rule import GROUP_RULES, check_group, decayed_gradients, heavy_ball_

__all__ = ["PathSGD", "path_sgd_", "first_step_ratio"]


class _RowBlockUpdate:
    """The rank-one Path-SGD update of one weight, ``d = (g + wd w) * (1/gamma_out) (x) (1/gamma_in)``
    (each factor floored at sqrt(eps)), applied to rows ``[r0, r1)`` per call with a scratch block of their
    shape, so that a pass over the weight in cache-sized row blocks reads and writes it once, as SGD's
    update does.

    Per block without weight decay, two operations: the block of ``1/gamma`` (times ``-lr`` without
    momentum) is written into the scratch as an outer product (a write, no read), then one ``addcmul_``
    applies it (``w += g * (-lr/gamma)``, or ``buf = m buf + g/gamma`` before ``w -= lr buf``). With weight
    decay, ``(g + wd w)`` is formed in the scratch and scaled by rows, then by columns in the ``addcmul_``.
    The momentum buffer (``buf``) is allocated at construction when there is none yet.

    :meth:`fused_contract` does the update and the next scales' contractions in one C pass
    (:mod:`geomopt.optim._path_sgd_kernels`) where a C compiler is available (else None: the eager blocks).
    """

    def __init__(self, param: Tensor, grad: Tensor, scale: RankOneScale, buf: Tensor | None, *, lr: float,
                 momentum: float, weight_decay: float, eps: float):
        floor = eps ** 0.5
        self.param, self.grad, self.lr, self.momentum, self.weight_decay = param, grad, lr, momentum, weight_decay
        row_factor = -lr if momentum == 0 else 1.0
        self.inv_rows = scale.out_scale.clamp_min(floor).reciprocal_().mul_(row_factor).unsqueeze(1)
        self.inv_cols = scale.in_scale.clamp_min(floor).reciprocal_()
        self.first = buf is None and momentum != 0
        self.buf = torch.empty_like(param) if self.first else buf

    def fused_contract(self, vin: Tensor | None, vout: Tensor | None) -> tuple[Tensor | None, Tensor | None] | None:
        """Update every row and return ``(W^2 @ vin, (W^2)^T @ vout)`` of the updated weight in one C pass;
        None (nothing done) without a compiler or for tensors the kernel does not take."""
        kernel = _path_sgd_kernels.load(self.param.dtype)
        tensors = [t for t in (self.param, self.grad, self.buf, self.inv_rows, self.inv_cols, vin, vout) if t is not None]
        if kernel is None or not _path_sgd_kernels.supports(*tensors):
            return None
        done = _path_sgd_kernels.update_contract(
            kernel, self.param, self.grad, self.buf if self.momentum != 0 else None, self.inv_rows, self.inv_cols,
            lr=float(self.lr), momentum=float(self.momentum), weight_decay=float(self.weight_decay), first=self.first,
            vin=vin, vout=vout)
        self.first = False
        return done

    def __call__(self, r0: int, r1: int, scratch: Tensor) -> None:
        w, g, rows = self.param[r0:r1], self.grad[r0:r1], self.inv_rows[r0:r1]
        if self.weight_decay == 0:
            torch.mul(rows, self.inv_cols, out=scratch)
            src, factor = g, scratch
        else:
            torch.add(g, w, alpha=self.weight_decay, out=scratch).mul_(rows)
            src, factor = scratch, self.inv_cols
        if self.momentum == 0:
            w.addcmul_(src, factor)
            return
        b = self.buf[r0:r1]
        if self.first:
            torch.mul(src, factor, out=b)
        else:
            b.mul_(self.momentum).addcmul_(src, factor)
        w.add_(b, alpha=-self.lr)


def path_sgd_(params: Sequence[Tensor], grads: Sequence[Tensor], scales: Sequence[Tensor | RankOneScale],
              momentum_buffers: list[Tensor | None], *, lr: float, momentum: float, weight_decay: float,
              eps: float, deferred: dict[int, BlockVisitor] | None = None) -> None:
    """The functional core: update ``params`` in place with ``grad / gamma``.

    For each parameter: ``d = (g + weight_decay * w) / max(gamma, eps)``; with momentum
    ``buf = momentum * buf + d`` (``buf = d`` at the first step) and ``w -= lr * buf``, else
    ``w -= lr * d``. A :class:`RankOneScale` gamma = out (x) in is applied with each factor floored at
    sqrt(eps): weights larger than one cache block as row and column scalings without forming gamma,
    in row blocks; the others, with every dense gamma, in a few multi-tensor (``torch._foreach_*``) calls.

    Args:
        deferred: when given, the row-block updates of the large rank-one weights are not applied
            here: ``deferred[i]`` receives parameter i's ``visit(r0, r1)``, to be called once on every
            row block (:meth:`geomopt.geometry.PathScales.compute` does so while it reads the block
            for the next step's scales). Their momentum buffers are allocated now.
    """
    _check_group("path_sgd_", dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps))
    small: list[int] = []
    dense: list[Tensor] = []
    for i, (param, scale) in enumerate(zip(params, scales)):
        if not isinstance(scale, RankOneScale) or param.numel() <= BLOCK_ELEMENTS or param.device.type != "cpu":
            small.append(i)
            dense.append(floored(scale, eps))
        else:
            update = _RowBlockUpdate(param, grads[i], scale, momentum_buffers[i], lr=lr, momentum=momentum,
                                     weight_decay=weight_decay, eps=eps)
            momentum_buffers[i] = update.buf
            if deferred is not None:
                deferred[i] = update
                continue
            visit_rows(param, update)
    if not small:
        return
    ps = [params[i] for i in small]
    gs = decayed_gradients([grads[i] for i in small], ps, weight_decay)
    bufs = [momentum_buffers[i] for i in small]
    heavy_ball_(ps, torch._foreach_div(gs, dense), bufs, lr=lr, momentum=momentum)
    for k, i in enumerate(small):
        momentum_buffers[i] = bufs[k]


NORMALIZE = (None, "first-step")


#: The options of a param group and their ranges (:func:`geomopt.checks.check_number`): checked at construction,
#: in ``add_param_group`` and in every group at each step, so a NaN, infinite or negative option is an error
#: naming it and its group instead of NaN weights. ``ratio`` (the first-step ratio) is None or > 0.
_GROUP_RULES: dict[str, dict[str, Any]] = {**GROUP_RULES, "eps": dict(low=0, low_open=True)}


def _check_group(where: str, group: dict[str, Any]) -> None:
    check_group(where, group, _GROUP_RULES)
    if group.get("ratio") is not None:
        check_number(where, "ratio", group["ratio"], low=0, low_open=True)


class PathSGD(Optimizer):
    r"""Path-normalized SGD for feedforward, convolutional and recurrent (ReLU RNN) networks.

    Update (Neyshabur, Salakhutdinov & Srebro 2015), for every weight or bias w_e::

        gamma_e(w) = d pi(w) / d(w_e^2),   pi(w) = sum over paths prod_{e in path} w_e^2
        w_e <- w_e - lr * (dL/dw_e + weight_decay * w_e) / gamma_e(w)

    with optional heavy-ball momentum on the normalized direction. gamma is always that of the
    current weights: by one batch-1 pass through the squared network, or, for an MLP (a Linear
    chain), computed in the previous step's update pass (each large weight read once per step for
    the update and the scales together) and recomputed if any weight changed in between.

    Args:
        model: the network (Linear/Conv layers, ReLU, pooling, flatten, dropout, residual sums);
            every optimized parameter must belong to it.
        lr: learning rate.
        momentum: momentum factor (0 = none).
        weight_decay: L2 penalty coefficient (breaks the rescaling invariance, as any L2 does).
        eps: floor on gamma, for units whose scale is 0 (dead units have zero gradient too).
        p: exponent of the path regularizer (2 in the paper).
        input_shape: per-example input shape, if the model has no ``input_shape`` attribute.
        param_groups: optional parameter groups (dicts with ``params`` and per-group options);
            default: all of ``model.parameters()``.
        seq_len: for a ReLU RNN (:class:`geomopt.nn.ReLURNN`): the number of unrolled steps T of
            the scales (default: ``model.seq_len``). Recurrent models are detected by their layout.
        include_kappa2: for a ReLU RNN: use kappa1 + kappa2 (exact, costly: O(T n^3 + T^2 n^2) per
            step) instead of kappa1 alone (the paper's choice, the default).
        normalize: ``"first-step"``: multiply the step by ``ratio = (sum_p ||g_p|| / sum_p ||g_p/gamma_p||^2)^(1/2)``
            computed from the first step's gradients and scales and then kept (:func:`first_step_ratio`;
            the first author's public Path-SGD code does this so that one learning-rate grid serves SGD and
            Path-SGD); the effective rate is ``lr * ratio``. Stored as each group's ``"ratio"`` (None without).

    Recurrent nets (Neyshabur, Wu, Salakhutdinov & Srebro 2016): the unrolled network shares its
    weights across steps; the scale of a shared weight is kappa = kappa1 (+ kappa2), see
    :mod:`geomopt.geometry.rnn_path`, and the update is ``w <- w - lr * grad / kappa``.

    Raises:
        UnsupportedModuleError: the model has a layer that is not positively homogeneous, or a
            recurrent cell that is not a ReLU RNN (LSTM, GRU, tanh RNN, torch.nn.RNN).
        ValueError: a bad hyperparameter (NaN, inf, out of range; also checked in ``add_param_group`` and
            in every param group at each step, naming the option and the group), a parameter that is not the
            model's, a ReLU RNN without a sequence length, or RNN options for a feedforward model.
        TypeError: a hyperparameter that is not a number.

    Example:
        >>> opt = PathSGD(model, lr=0.05)
        >>> loss.backward(); opt.step(); opt.zero_grad()
        >>> rnn_opt = PathSGD(ReLURNN(2, 100, 1, init="irnn"), lr=1e-4, seq_len=100)  # RNN-Path, kappa1
    """

    def __init__(self, model: nn.Module, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 eps: float = 1e-12, p: float = 2.0, input_shape: Sequence[int] | None = None,
                 param_groups: Iterable[dict[str, Any]] | None = None, seq_len: int | None = None,
                 include_kappa2: bool = False, normalize: str | None = None):
        if normalize not in NORMALIZE:
            raise ValueError(f"PathSGD: normalize must be one of {NORMALIZE}, got {normalize!r}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps, ratio=None)
        _check_group("PathSGD: option", defaults)
        super().__init__(list(param_groups) if param_groups is not None else model.parameters(), defaults)
        self.normalize = normalize  # the first-step ratio lives in every group's "ratio" (saved by state_dict)
        #: the path-norm geometry (:class:`geomopt.optim.path_geometry.PathGeometry`): scales, no statistics
        self.geometry = PathGeometry(model, [q for g in self.param_groups for q in g["params"]], p=p,
                                     input_shape=input_shape, seq_len=seq_len, include_kappa2=include_kappa2)

    @property
    def scales(self) -> PathScales | RNNPathScales:
        """The geometry's path scales (assignable, e.g. to compare methods)."""
        return self.geometry.scales

    @scales.setter
    def scales(self, value: PathScales | RNNPathScales) -> None:
        self.geometry.scales = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check_group(f"PathSGD: param group {len(self.param_groups)}", {**self.defaults, **param_group})
        super().add_param_group(param_group)  # after the check: a bad group is not added

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("momentum", 0.0)
            group.setdefault("weight_decay", 0.0)
            group.setdefault("eps", 1e-12)
            group.setdefault("ratio", None)
        self.__dict__.setdefault("normalize", None)

    def invalidate_scales(self) -> None:
        """Forget the scales precomputed for the next step. Changes made with torch's in-place ops,
        ``copy_``, ``load_state_dict`` or a new ``.data`` tensor are detected by themselves (tensor
        versions and storage); an in-place change through ``param.data`` is invisible to torch: call
        this after one."""
        self.geometry.invalidate()

    def _first_step_ratio(self) -> None:
        """Set every group's ``"ratio"`` from this step's gradients and scales (``normalize="first-step"``)."""
        geo = self.geometry
        pairs = [(p.grad, geo.scale(p)) for group in self.param_groups for p in group["params"] if p.grad is not None]
        ratio = first_step_ratio([g for g, _ in pairs], [s for _, s in pairs],
                                 min(group["eps"] for group in self.param_groups))
        for group in self.param_groups:
            group["ratio"] = ratio

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One Path-SGD step; ``closure`` re-evaluates the loss, as in torch.optim.

        The geometry's direction ``(g + wd w) / gamma`` and the step rule's momentum and learning rate are
        applied together by :func:`path_sgd_`. For a Linear chain (factored scales), the large weights are
        updated inside the pass that computes the next step's scales (:meth:`PathScales.compute` with
        visitors), one row block at a time while the block is in cache, so the scales cost no extra read of
        those weights; they are reused at the next step unless a weight has changed in between.
        """
        for index, group in enumerate(self.param_groups):  # an option changed since (a scheduler, by hand)
            _check_group(f"PathSGD: param group {index}", group)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        geo = self.geometry
        geo.update(0, self.param_groups)
        if self.normalize == "first-step" and any(group["ratio"] is None for group in self.param_groups):
            self._first_step_ratio()
        fused = geo.fused
        visitors: dict[str, BlockVisitor] = {}
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            grads = [param.grad for param in params]
            if any(grad.is_sparse for grad in grads):
                raise RuntimeError("PathSGD does not support sparse gradients")
            buffers = [self.state[param].get("momentum_buffer") for param in params] if group["momentum"] != 0 \
                else [None] * len(params)
            deferred: dict[int, BlockVisitor] | None = {} if fused else None
            path_sgd_(params, grads, [geo.scale(param) for param in params], buffers,
                      lr=group["lr"] * (group["ratio"] or 1.0), momentum=group["momentum"],
                      weight_decay=group["weight_decay"], eps=group["eps"], deferred=deferred)
            visitors.update({geo.names[params[i]]: visit for i, visit in (deferred or {}).items()})
            if group["momentum"] != 0:
                for param, buf in zip(params, buffers):
                    self.state[param]["momentum_buffer"] = buf
        geo.invalidate()
        if fused:
            geo.precompute(visitors)
        return loss
