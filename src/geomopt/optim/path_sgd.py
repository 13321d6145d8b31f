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

from geomopt.geometry.path_norm import BLOCK_ELEMENTS, PathScales, RankOneScale


def _rank_one_update_(param: Tensor, grad: Tensor, scale: RankOneScale, buf: Tensor | None, *, lr: float,
                      momentum: float, weight_decay: float, eps: float) -> Tensor | None:
    """``d = (g + wd w) * (1/gamma_out) (x) (1/gamma_in)``, applied in row blocks that stay in cache,
    so the update reads and writes the weight once, as SGD's does. Returns the momentum buffer."""
    floor = eps ** 0.5
    inv_rows = scale.out_scale.clamp_min(floor).reciprocal_()
    inv_cols = scale.in_scale.clamp_min(floor).reciprocal_().unsqueeze(0)
    rows, cols = param.shape
    block = rows if param.device.type != "cpu" else max(1, min(rows, BLOCK_ELEMENTS // cols))
    scratch = torch.empty(block * cols, dtype=param.dtype, device=param.device)
    first = buf is None and momentum != 0
    if first:
        buf = torch.empty_like(param)
    for r0 in range(0, rows, block):
        w, g = param[r0:r0 + block], grad[r0:r0 + block]
        tmp = scratch[:w.numel()].view_as(w)
        if weight_decay != 0:
            torch.add(g, w, alpha=weight_decay, out=tmp)
            tmp.mul_(inv_rows[r0:r0 + block].unsqueeze(1))
        else:
            torch.mul(g, inv_rows[r0:r0 + block].unsqueeze(1), out=tmp)
        if momentum == 0:
            w.addcmul_(tmp, inv_cols, value=-lr)
            continue
        b = buf[r0:r0 + block]
        if first:
            torch.mul(tmp, inv_cols, out=b)
        else:
            b.mul_(momentum).addcmul_(tmp, inv_cols)
        w.add_(b, alpha=-lr)
    return buf


def path_sgd_(params: Sequence[Tensor], grads: Sequence[Tensor], scales: Sequence[Tensor | RankOneScale],
              momentum_buffers: list[Tensor | None], *, lr: float, momentum: float, weight_decay: float,
              eps: float) -> None:
    """The functional core: update ``params`` in place with ``grad / gamma``.

    For each parameter: ``d = (g + weight_decay * w) / max(gamma, eps)``; with momentum
    ``buf = momentum * buf + d`` (``buf = d`` at the first step) and ``w -= lr * buf``, else
    ``w -= lr * d``. A :class:`RankOneScale` gamma = out (x) in is applied as row and column
    scalings without forming gamma (eps then floors each factor at sqrt(eps)).
    """
    for i, (param, grad, scale) in enumerate(zip(params, grads, scales)):
        if isinstance(scale, RankOneScale):
            momentum_buffers[i] = _rank_one_update_(param, grad, scale, momentum_buffers[i], lr=lr,
                                                    momentum=momentum, weight_decay=weight_decay, eps=eps)
            continue
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        direction = grad / scale.clamp_min(eps)
        if momentum == 0:
            param.add_(direction, alpha=-lr)
            continue
        buf = momentum_buffers[i]
        if buf is None:
            momentum_buffers[i] = buf = direction
        else:
            buf.mul_(momentum).add_(direction)
        param.add_(buf, alpha=-lr)


class PathSGD(Optimizer):
    r"""Path-normalized SGD for feedforward and convolutional ReLU networks.

    Update (Neyshabur, Salakhutdinov & Srebro 2015), for every weight or bias w_e::

        gamma_e(w) = d pi(w) / d(w_e^2),   pi(w) = sum over paths prod_{e in path} w_e^2
        w_e <- w_e - lr * (dL/dw_e + weight_decay * w_e) / gamma_e(w)

    with optional heavy-ball momentum on the normalized direction. gamma is recomputed from
    the current weights at every step by one batch-1 pass through the squared network.

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

    Raises:
        UnsupportedModuleError: the model has a layer that is not positively homogeneous.
        ValueError: a bad hyperparameter, or a parameter that is not the model's.

    Example:
        >>> opt = PathSGD(model, lr=0.05)
        >>> loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, model: nn.Module, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 eps: float = 1e-12, p: float = 2.0, input_shape: Sequence[int] | None = None,
                 param_groups: Iterable[dict[str, Any]] | None = None):
        if lr < 0:
            raise ValueError(f"PathSGD: invalid learning rate {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"PathSGD: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"PathSGD: invalid weight_decay {weight_decay}")
        if eps <= 0:
            raise ValueError(f"PathSGD: eps must be positive, got {eps}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps)
        super().__init__(list(param_groups) if param_groups is not None else model.parameters(), defaults)
        self.scales = PathScales(model, p=p, input_shape=input_shape)
        self._names = {param: name for name, param in model.named_parameters()}
        for group in self.param_groups:
            for param in group["params"]:
                if param not in self._names:
                    raise ValueError(f"PathSGD: a parameter of shape {tuple(param.shape)} is not a parameter of "
                                     f"{type(model).__name__}; path scales are defined by the model")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("momentum", 0.0)
            group.setdefault("weight_decay", 0.0)
            group.setdefault("eps", 1e-12)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One Path-SGD step; ``closure`` re-evaluates the loss, as in torch.optim."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gamma = self.scales.compute()
        for group in self.param_groups:
            params, grads, scales, buffers = [], [], [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("PathSGD does not support sparse gradients")
                params.append(param)
                grads.append(param.grad)
                scales.append(gamma[self._names[param]])
                buffers.append(self.state[param].get("momentum_buffer"))
            path_sgd_(params, grads, scales, buffers, lr=group["lr"], momentum=group["momentum"],
                      weight_decay=group["weight_decay"], eps=group["eps"])
            if group["momentum"] != 0:
                for param, buf in zip(params, buffers):
                    self.state[param]["momentum_buffer"] = buf
        return loss
