r"""Empirical tangent kernel, kernel-target alignment and trajectory complexity.

Baratin, George, Laurent, Hjelm, Lajoie, Vincent & Lacoste-Julien, "Implicit Regularization via
Neural Feature Alignment" (AISTATS 2021).

- Tangent kernel on ``n`` examples with ``k`` outputs: ``K = J J^T``, ``J`` the ``(n k, P)`` Jacobian
  of the outputs with respect to the parameters; :func:`ntk_gram` returns it as ``(n, k, n, k)``.
  ``J`` comes from ``torch.func.vmap(jacrev(f))`` over chunks of examples (the model must be in
  eval mode: tangent features of BatchNorm in train mode mix examples).
- Per-layer kernels ``K_l = J_l J_l^T`` (``J_l`` the columns of layer ``l``'s parameters); ``K = sum_l K_l``.
- Centered kernel-target alignment: ``A(K, Y) = <Y_c, K_c Y_c> / (||K_c||_F ||Y_c||^2)`` with
  ``K_c = (H (x) I_k) K (H (x) I_k)``, ``H = I_n - 1 1^T / n`` and ``Y_c`` the one-hot labels minus their
  mean over the examples (class frequencies). ``A(Y_c Y_c^T, Y) = 1``.
- Trajectory complexity: ``sum_t ||w_t - w_{t-1}|| sqrt(tr K_t) / n`` over logging points ``t``
  (iterations 0 and ``floor(5 * 1.15^j)``); ``tr K`` is the trace over the ``n`` examples of the
  kernel (never scaled by a number of batches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from geomopt.checks import check_int, check_tensor
from geomopt.checks import check_finite_parameters


def _check_eval(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(f"BatchNorm '{name}' is in training mode: its tangent features mix examples; "
                             "call model.eval() before computing the tangent kernel")
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise ValueError(f"Dropout '{name}' (p={m.p:g}) is active (training mode): the tangent features would "
                             "be those of one random mask; call model.eval() before computing the tangent kernel")


def jacobian(model: nn.Module, x: Tensor, *, chunk_size: int = 64,
             params: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Per-example Jacobians ``{name: (n, k, numel)}`` of the outputs w.r.t. the parameters.

    Args:
        model: maps ``(batch, *input_shape)`` to ``(batch, k)``; must be in eval mode if it has BatchNorm.
        x: ``(n, *input_shape)``.
        chunk_size: examples per vmapped jacrev call.
        params: parameter names to differentiate (default: all that require grad).
    """
    check_tensor("jacobian", "x", x, min_ndim=1)
    check_int("jacobian", "chunk_size", chunk_size, low=1)
    _check_eval(model)
    check_finite_parameters(model, "tangent kernel")
    all_params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    names = list(params) if params is not None else list(all_params)
    unknown = [n for n in names if n not in all_params]
    if unknown:
        raise ValueError(f"unknown parameter name(s) {unknown}; the model has {list(all_params)}")
    wrt = {k: all_params[k] for k in names}
    fixed = {k: v for k, v in all_params.items() if k not in wrt}
    buffers = dict(model.named_buffers())

    def f(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        out = functional_call(model, {**p, **fixed, **buffers}, (xi.unsqueeze(0),))
        return out.squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))
    parts: dict[str, list[Tensor]] = {k: [] for k in wrt}
    for start in range(0, x.shape[0], chunk_size):
        j = jac(wrt, x[start:start + chunk_size])
        for k in wrt:
            parts[k].append(j[k].reshape(j[k].shape[0], j[k].shape[1], -1))
    return {k: torch.cat(v) for k, v in parts.items()}


def _groups(model: nn.Module, names: Sequence[str]) -> dict[str, list[str]]:
    """Parameters grouped by the module that owns them (one 'layer' each)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rpartition(".")[0] or n, []).append(n)
    return groups


def ntk_gram(model: nn.Module, x: Tensor, *, per_layer: bool = False, chunk_size: int = 64
             ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Empirical tangent kernel ``K[i, a, j, b] = <d f_a(x_i)/dw, d f_b(x_j)/dw>``, shape ``(n, k, n, k)``.

    With ``per_layer=True`` also returns ``{module name: K_l}`` (same shape) with ``sum_l K_l = K``.
    """
    jac = jacobian(model, x, chunk_size=chunk_size)
    n, k = next(iter(jac.values())).shape[:2]
    layers: dict[str, Tensor] = {}
    total = torch.zeros(n * k, n * k, dtype=x.dtype, device=x.device)
    for layer, names in _groups(model, list(jac)).items():
        j = torch.cat([jac[nm].reshape(n * k, -1) for nm in names], dim=1)
        g = j @ j.T
        total += g
        if per_layer:
            layers[layer] = g.reshape(n, k, n, k)
    total = total.reshape(n, k, n, k)
    return (total, layers) if per_layer else total


def center_kernel(kernel: Tensor) -> Tensor:
    """``(H (x) I) K (H (x) I)`` for ``K`` of shape ``(n, k, n, k)`` (or ``(n, n)``)."""
    check_tensor("center_kernel", "kernel", kernel, ndim=(2, 4))
    if kernel.dim() == 2:
        return kernel - kernel.mean(0, keepdim=True) - kernel.mean(1, keepdim=True) + kernel.mean()
    k = kernel - kernel.mean(0, keepdim=True)
    return k - k.mean(2, keepdim=True)


def centered_targets(y: Tensor, num_classes: int | None = None) -> Tensor:
    """One-hot labels minus their mean over examples, ``(n, k)``; real targets ``(n,)``/``(n, k)`` are centered.

    Raises:
        ValueError: no example, NaN/inf targets, integer labels that are not ``(n,)`` or outside
            ``[0, num_classes)``. TypeError: ``y`` is not a tensor, ``num_classes`` not an integer.
    """
    check_tensor("centered_targets", "y", y, ndim=(1, 2))
    if num_classes is not None:
        check_int("centered_targets", "num_classes", num_classes, low=1)
    if not y.dtype.is_floating_point:
        top = num_classes if num_classes is not None else int(y.max()) + 1
        if y.dim() != 1 or int(y.min()) < 0 or int(y.max()) >= top:
            raise ValueError(f"centered_targets: y: integer labels must be (n,) in [0, {top}), got shape "
                             f"{tuple(y.shape)} with values in [{int(y.min())}, {int(y.max())}]")
        num_classes = top
        y = nn.functional.one_hot(y.long(), num_classes).to(torch.get_default_dtype())
    if y.dim() == 1:
        y = y[:, None]
    return y - y.mean(0, keepdim=True)


def alignment(kernel: Tensor, y: Tensor, num_classes: int | None = None) -> float:
    """Centered kernel-target alignment ``<Y_c, K_c Y_c> / (||K_c||_F ||Y_c||^2)`` in ``[-1, 1]``.

    For integer labels and a ``(n, k, n, k)`` kernel the number of classes is the kernel's ``k`` (a probe
    set in which some class is missing still gets ``k`` one-hot columns); ``num_classes``, if given, must
    equal it. For an ``(n, n)`` kernel it is ``num_classes`` (default: the largest label + 1).
    """
    check_tensor("alignment", "kernel", kernel, ndim=(2, 4))
    check_tensor("alignment", "y", y, ndim=(1, 2))
    if kernel.dim() == 4 and not y.dtype.is_floating_point:
        if num_classes is not None and num_classes != kernel.shape[1]:
            raise ValueError(f"alignment: num_classes={num_classes} but the kernel has {kernel.shape[1]} outputs "
                             f"(shape {tuple(kernel.shape)})")
        num_classes = kernel.shape[1]
    yc = centered_targets(y, num_classes).to(kernel.dtype)
    kc = center_kernel(kernel)
    if kernel.dim() == 2:
        if yc.shape[1] != 1:
            kc = torch.kron(kc, torch.eye(yc.shape[1], dtype=kc.dtype, device=kc.device)).reshape(
                kc.shape[0], yc.shape[1], kc.shape[0], yc.shape[1])
        else:
            kc = kc[:, None, :, None]
    n, k = yc.shape
    if kc.shape != (n, k, n, k):
        raise ValueError(f"kernel of shape {tuple(kernel.shape)} does not match targets of shape {tuple(yc.shape)}")
    flat = kc.reshape(n * k, n * k)
    v = yc.reshape(-1)
    denom = float(flat.norm()) * float(v @ v)
    if denom == 0:
        raise ValueError("alignment is undefined: the centered kernel or the centered targets are zero")
    return float(v @ flat @ v) / denom


def kernel_alignment(model: nn.Module, x: Tensor, y: Tensor, num_classes: int | None = None,
                     chunk_size: int = 64) -> dict[str, Any]:
    """Alignment of the full tangent kernel and of each layer's, with ``trace K`` (sum over the n examples).

    The number of classes is the model's number of outputs (``num_classes``, if given, must equal it).

    Raises:
        ValueError: no examples (or a different number of inputs and targets), NaN/inf inputs, a model with
            NaN/inf parameters; see :func:`alignment`.
    """
    check_tensor("kernel_alignment", "x", x, min_ndim=1)
    check_tensor("kernel_alignment", "y", y, ndim=(1, 2))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"kernel_alignment: x has {x.shape[0]} examples, y {y.shape[0]}")
    was_training = model.training
    model.eval()
    try:
        k, layers = ntk_gram(model, x, per_layer=True, chunk_size=chunk_size)
    finally:
        model.train(was_training)
    n, c = k.shape[:2]
    trace = float(k.reshape(n * c, n * c).diagonal().sum())
    return {"alignment": alignment(k, y, num_classes), "trace": trace, "n": n,
            "per_layer": {name: alignment(kl, y, num_classes) for name, kl in layers.items()}}


def logging_points(last: int) -> list[int]:
    """Iterations 0 and ``floor(5 * 1.15^j)`` up to ``last`` (Baratin et al.)."""
    check_int("logging_points", "last", last, low=0)
    pts, j = {0}, 0
    while (t := math.floor(5 * 1.15 ** j)) <= last:
        pts.add(t)
        j += 1
    return sorted(pts)


class TrajectoryComplexity:
    """Step callback for :func:`geomopt.train.fit`: logs tangent-kernel alignment and the
    trajectory complexity ``sum_t ||w_t - w_{t-1}|| sqrt(tr K_t) / n`` at logging points.

    ``fit(..., step_callback=TrajectoryComplexity(x, y))`` adds records
    ``{"kind": "ntk", "step", "alignment", "trace", "delta_w", "complexity", "per_layer"}`` to
    metrics.jsonl at iterations 0 and ``floor(5 * 1.15^j)``.

    Args:
        x, y: the fixed probe examples (e.g. 100 training samples) and their labels.
        num_classes: for the one-hot targets (default and required value: the model's number of outputs).
        points: iterations at which to log (default: :func:`logging_points`).
    """

    def __init__(self, x: Tensor, y: Tensor, num_classes: int | None = None, points: Sequence[int] | None = None):
        check_tensor("TrajectoryComplexity", "x", x, min_ndim=1)
        check_tensor("TrajectoryComplexity", "y", y, ndim=(1, 2))
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"TrajectoryComplexity: x has {x.shape[0]} examples, y {y.shape[0]}")
        self.x, self.y, self.num_classes = x, y, num_classes
        self.points = set(points) if points is not None else None
        self.complexity = 0.0
        self.previous: Tensor | None = None

    def _due(self, step: int) -> bool:
        if self.points is not None:
            return step in self.points
        return step in logging_points(step)

    def state_dict(self) -> dict[str, Any]:
        return {"complexity": self.complexity, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.complexity, self.previous = state["complexity"], state["previous"]

    def __call__(self, step: int, model: nn.Module) -> dict[str, Any] | None:
        if not self._due(step):
            return None
        w = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
        dev = next(model.parameters()).device
        stats = kernel_alignment(model, self.x.to(dev), self.y.to(dev), self.num_classes)
        delta = float((w - self.previous).norm()) if self.previous is not None else 0.0
        self.complexity += delta * math.sqrt(max(stats["trace"], 0.0)) / stats["n"]
        self.previous = w
        return {"alignment": stats["alignment"], "trace": stats["trace"], "delta_w": delta,
                "complexity": self.complexity, "per_layer": stats["per_layer"]}
