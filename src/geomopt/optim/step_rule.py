r"""The step-rule half of an optimizer: from a geometry's directions to parameter changes.

A :class:`geomopt.optim.geometry.Geometry` gives, per block, the steepest-descent direction ``D`` of the
gradient with weight decay, ``M = g + wd w`` (weight decay enters *before* the geometry, so that it is
measured in the same norm: ``D = P^{-1} (g + wd w)``). The step rule then applies, per param group:

- the KL clip (Ba, Grosse & Martens 2017): ``D <- nu D``,
  ``nu = min(1, sqrt(kl_clip / (sum_blocks lr^2 <D, M>)))`` (:func:`kl_clip_factor`);
- heavy-ball momentum on the direction: ``buf <- momentum buf + D`` (``buf = D`` at the first step);
- the learning rate: ``delta = -lr buf``.

Parameters the geometry has no direction for (K-FAC's unsupported layers, or layers before their first
factors) take the same rule with the Euclidean direction ``g + wd w`` (:func:`euclidean_deltas`).
Levenberg-Marquardt damping and the automatic step size (the exact 2x2 quadratic model) are in
:mod:`geomopt.optim.quadratic`. Momentum buffers are stored per parameter under ``"momentum_buffer"``,
as torch.optim's SGD stores them.

Two forms of the last line, which differ only in rounding: :func:`momentum_deltas` forms ``delta`` explicitly
(the quadratic model needs it; K-FAC/EKFAC), :func:`heavy_ball_` adds ``-lr buf`` to the parameters in one
fused multi-tensor call (Path-SGD, as torch's SGD). Each optimizer keeps the form it had, so fixed-seed runs
are bit-identical to before the split (tests/golden, tests/optim/test_equivalence.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from geomopt.checks import check_number
from geomopt.curvature.kronecker import all_finite
from geomopt.optim.geometry import Block, Geometry

#: The options every step rule's param group has, and their ranges (:func:`geomopt.checks.check_number`).
GROUP_RULES: dict[str, dict[str, Any]] = {
    "lr": dict(low=0),
    "momentum": dict(low=0, high=1, high_open=True),
    "weight_decay": dict(low=0),
}


def check_group(where: str, group: dict[str, Any], rules: dict[str, dict[str, Any]] = GROUP_RULES) -> None:
    """Check a param group's options against ``rules`` (finite, in range; the error names ``where``)."""
    for key, rule in rules.items():
        check_number(where, key, group[key], **rule)


@dataclass
class BlockStep:
    """One block in one step: its param group, gradient matrix ``M`` (weight decay included) and direction ``D``."""

    block: Block
    group: dict[str, Any]
    grad: Tensor
    direction: Tensor


def decayed_gradient(block: Block, group: dict[str, Any]) -> Tensor:
    """The block's gradient matrix with weight decay, ``M = g + wd w``."""
    m = block.to_matrix([p.grad for p in block.params])
    if group["weight_decay"] != 0:
        m = m + group["weight_decay"] * block.to_matrix([p.detach() for p in block.params])
    return m


def block_steps(geometry: Geometry, group_of: dict[Tensor, dict[str, Any]]) -> tuple[list[BlockStep], set[Tensor]]:
    """The geometry's directions: a :class:`BlockStep` for every ready block whose parameters all have
    gradients (gradient matrix with its group's weight decay; direction checked finite, else
    ``FloatingPointError`` naming the block), and the parameters of every ready block (the others take
    the Euclidean direction)."""
    steps, covered = [], set()
    for block in geometry.blocks():
        if not geometry.ready(block):
            continue
        covered.update(block.params)
        if any(p.grad is None for p in block.params):
            continue
        group = group_of[block.key]
        m = decayed_gradient(block, group)
        d = geometry.direction(block, m, group)
        if not all_finite(d):
            raise FloatingPointError(f"{geometry.name}: layer {block.name!r}: NaN/inf in its preconditioned direction; "
                                     "nothing was updated; lower the learning rate or raise the damping")
        steps.append(BlockStep(block, group, m, d))
    return steps, covered


def check_gradients(name: str, groups: Iterable[dict[str, Any]], names: dict[Tensor, str]) -> None:
    """Raise ``FloatingPointError`` naming the first parameter whose gradient has NaN/inf entries."""
    for group in groups:
        for p in group["params"]:
            if p.grad is not None and not all_finite(p.grad):
                raise FloatingPointError(f"{name}: the gradient of {names.get(p, 'a parameter')!r} has NaN/inf "
                                         "entries; nothing was updated; lower the learning rate or clip gradients")


def kl_clip_factor(directions: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[float], kl_clip: float) -> float:
    """``nu = min(1, sqrt(kl_clip / sum lr^2 <d, g>))`` (1 when the sum is not positive)."""
    vg = sum(lr * lr * float((d * g).sum()) for d, g, lr in zip(directions, grads, lrs))
    if not math.isfinite(vg):
        raise FloatingPointError(f"KL clipping: the preconditioned gradient's inner product is {vg}")
    return min(1.0, math.sqrt(kl_clip / vg)) if vg > 0 else 1.0


def momentum_deltas(steps: Sequence[BlockStep], state: dict, kl_clip: float | None = None) -> list[Tensor]:
    """The parameter change of each block, ``-lr buf`` with ``buf = momentum buf + nu D`` (a block matrix);
    the momentum buffers are stored in ``state`` (nothing is applied)."""
    nu = 1.0
    if kl_clip is not None and steps:
        nu = kl_clip_factor([s.direction for s in steps], [s.grad for s in steps], [s.group["lr"] for s in steps],
                            kl_clip)
    updates = []
    for s in steps:
        d = s.direction * nu if nu != 1.0 else s.direction
        momentum = s.group["momentum"]
        if momentum != 0:
            bufs = [state[p].get("momentum_buffer") for p in s.block.params]
            if any(b is None for b in bufs):
                buf = d.clone()
            else:
                buf = s.block.to_matrix(bufs).mul_(momentum).add_(d)
            for p, part in zip(s.block.params, s.block.from_matrix(buf)):
                state[p]["momentum_buffer"] = part.clone()
            d = buf
        updates.append(d * -s.group["lr"])
    return updates


def euclidean_deltas(groups: Iterable[dict[str, Any]], skip: set, state: dict) -> list[tuple[Tensor, Tensor]]:
    """``(param, -lr buf)`` with ``buf = momentum buf + (g + wd w)`` for every parameter with a gradient that
    is not in ``skip`` (the Euclidean geometry, where another has no direction); buffers stored in ``state``."""
    out = []
    for group in groups:
        for p in group["params"]:
            if p.grad is None or p in skip:
                continue
            d = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
            if group["momentum"] != 0:
                buf = state[p].get("momentum_buffer")
                buf = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
                state[p]["momentum_buffer"] = buf
                d = buf
            out.append((p, d * -group["lr"]))
    return out


def decayed_gradients(grads: Sequence[Tensor], params: Sequence[Tensor], weight_decay: float) -> Sequence[Tensor]:
    """Multi-tensor ``g + wd w`` (``grads`` themselves without weight decay)."""
    return torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay != 0 else grads


def heavy_ball_(params: Sequence[Tensor], directions: Sequence[Tensor], momentum_buffers: list[Tensor | None], *,
                lr: float, momentum: float) -> None:
    """In place, multi-tensor: ``buf = momentum buf + d`` (``buf = d`` where ``momentum_buffers[i]`` is None;
    the list is filled in), ``w -= lr buf``; without momentum ``w -= lr d``."""
    if momentum == 0:
        torch._foreach_add_(params, directions, alpha=-lr)
        return
    bufs = list(momentum_buffers)
    if all(b is not None for b in bufs):
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, directions)
    else:
        for i, d in enumerate(directions):
            if momentum_buffers[i] is None:
                bufs[i] = momentum_buffers[i] = d
            else:
                bufs[i].mul_(momentum).add_(d)
    torch._foreach_add_(params, bufs, alpha=-lr)
