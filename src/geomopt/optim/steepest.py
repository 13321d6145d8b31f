"""Steepest descent with respect to a norm (Gunasekar, Lee, Soudry & Srebro, "Characterizing Implicit Bias in
Terms of Optimization Geometry", ICML 2018: Fig. 1c on regression, the max-margin theorem on separable data).

For a norm ``||.||`` with dual norm ``||g||_* = max_{||u|| <= 1} <g, u>``, the unnormalized steepest
descent step is

    w <- w + lr * dw,   dw = argmin_v <g, v> + 1/2 ||v||^2 = -||g||_* u(g),   u(g) = argmax_{||u|| <= 1} <g, u>,

and the normalized step uses ``dw = -u(g)`` (a step of length ``lr`` in the norm). The maximizers:

- ``l2``: ``u = g / ||g||_2``, ``||g||_* = ||g||_2`` (plain gradient descent);
- ``linf``: ``u = sign(g)``, ``||g||_* = ||g||_1`` (sign descent);
- ``l1``: ``u = sign(g_i) e_i`` at the largest ``|g_i|`` (ties share it equally), ``||g||_* = ||g||_inf``
  (greedy coordinate descent);
- ``spectral`` (matrices): ``u = U V^T`` from the reduced SVD ``g = U S V^T``, ``||g||_* = sum(S)`` (the
  nuclear norm); the normalized step is the orthogonalized gradient Muon approximates.

``l1``, ``l2`` and ``linf`` act on all of a parameter group's tensors as one vector (the paper's geometry).
``spectral`` acts on each tensor as a matrix (``(shape[0], -1)``; a vector is a column) and the group's
norm is the largest of their spectral norms, whose dual is the sum of their nuclear norms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from geomopt.checks import check_number
from geomopt.optim.geometry import Block, Geometry

__all__ = ["NORMS", "SteepestDescent", "SteepestGeometry", "steepest_direction"]

NORMS = ("l1", "l2", "linf", "spectral")


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(-1, 1)


def steepest_direction(grads: list[torch.Tensor], norm: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(u, ||g||_*)``: the unit-norm maximizer of ``<g, u>`` for ``norm`` over the tensors ``grads`` (one vector
    for l1/l2/linf, the max of per-tensor spectral norms for ``spectral``) and the dual norm of ``g``.

    Raises:
        ValueError: an unknown norm.
    """
    if norm not in NORMS:
        raise ValueError(f"steepest_direction: norm must be one of {NORMS}, got {norm!r}")
    if norm == "spectral":
        units, dual = [], grads[0].new_zeros(())
        for g in grads:
            u, s, vh = torch.linalg.svd(_as_matrix(g), full_matrices=False)
            keep = (s > s.max() * torch.finfo(s.dtype).eps * max(u.shape[0], vh.shape[1])).to(s.dtype)
            units.append(((u * keep) @ vh).reshape(g.shape))
            dual = dual + s.sum()
        return units, dual
    flat = torch.cat([g.reshape(-1) for g in grads])
    if norm == "l2":
        dual = torch.linalg.vector_norm(flat)
        unit = flat / dual if dual > 0 else torch.zeros_like(flat)
    elif norm == "linf":
        dual, unit = flat.abs().sum(), torch.sign(flat)
    else:  # l1: the coordinates of largest magnitude share the unit step
        dual = flat.abs().max()
        top = (flat.abs() == dual) & (dual > 0)
        unit = torch.sign(flat) * top / top.sum().clamp(min=1)
    out, i = [], 0
    for g in grads:
        out.append(unit[i:i + g.numel()].reshape(g.shape))
        i += g.numel()
    return out, dual


def _check(lr: float, norm: str, momentum: float, where: str = "SteepestDescent") -> None:
    check_number(where, "lr", lr, low=0)
    if norm not in NORMS:
        raise ValueError(f"{where}: norm must be one of {NORMS}, got {norm!r}")
    check_number(where, "momentum", momentum, low=0, high=1, high_open=True)


class SteepestDescent(torch.optim.Optimizer):
    """Steepest descent with respect to the ``l1``, ``l2``, ``linf`` or ``spectral`` norm (module docstring).

    Args:
        params: Parameters or parameter groups (each group is one vector for l1/l2/linf).
        lr: Step size.
        norm: ``"l1"``, ``"l2"``, ``"linf"`` or ``"spectral"``.
        normalized: Step ``-lr u(g)`` (unit length in the norm) instead of ``-lr ||g||_* u(g)``.
        momentum: Heavy-ball momentum on the gradient before the direction is taken (``b <- m b + g``).

    Raises:
        ValueError: an option out of range (checked per group at construction and at each step), or a
            non-finite gradient at a step (no parameter is changed then).
    """

    def __init__(self, params: Iterable, lr: float = 0.01, norm: str = "l2", normalized: bool = False,
                 momentum: float = 0.0) -> None:
        _check(lr, norm, momentum)
        super().__init__(params, {"lr": lr, "norm": norm, "normalized": bool(normalized), "momentum": momentum})

    def add_param_group(self, param_group: dict) -> None:
        merged = {**self.defaults, **param_group}
        _check(merged["lr"], merged["norm"], merged["momentum"])
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        updates = []
        for i, group in enumerate(self.param_groups):
            _check(group["lr"], group["norm"], group["momentum"], f"SteepestDescent: param group {i}")
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = []
            for p in params:
                if not torch.isfinite(p.grad).all():
                    raise FloatingPointError(f"SteepestDescent: non-finite gradient in a tensor of shape "
                                             f"{tuple(p.grad.shape)}; no parameter was changed")
                g = p.grad
                if group["momentum"]:
                    buf = self.state[p].get("momentum_buffer")
                    g = g.clone() if buf is None else buf.mul(group["momentum"]).add(g)
                grads.append(g)
            units, dual = steepest_direction(grads, group["norm"])
            scale = group["lr"] if group["normalized"] else group["lr"] * dual
            updates.append((group, params, grads, units, scale))
        for group, params, grads, units, scale in updates:  # every check passed: now change the parameters
            for p, g, u in zip(params, grads, units):
                if group["momentum"]:
                    self.state[p]["momentum_buffer"] = g
                p.sub_(scale * u)
        return loss


class SteepestGeometry(Geometry):
    """Steepest descent w.r.t. a norm as a plug-in :class:`Geometry`: each tensor's direction is
    ``||g||_* u(g)`` (``normalized``: ``u(g)``) of :func:`steepest_direction`, the tensor taken alone (l1, l2,
    l-infinity on it as a vector; spectral on it as a matrix). ``Preconditioner(SteepestGeometry(...))`` in front of
    ``torch.optim.SGD`` takes :class:`SteepestDescent`'s steps for a group of one tensor (a group of several is
    one vector there, so its l1 and l-infinity steps differ).

    Args:
        params: The parameters it preconditions.
        names: ``{parameter: name}`` for messages.
        norm: ``"l1"``, ``"l2"``, ``"linf"`` or ``"spectral"``.
        normalized: Unit-norm directions.
    """

    name = "steepest descent"

    def __init__(self, params: Sequence[Tensor], names: dict[Tensor, str] | None = None, *, norm: str = "l2",
                 normalized: bool = False) -> None:
        super().__init__(params, names)
        if norm not in NORMS:
            raise ValueError(f"SteepestGeometry: norm must be one of {NORMS}, got {norm!r}")
        self.norm, self.normalized = norm, bool(normalized)

    def direction(self, block: Block, grad: Tensor, group: dict[str, Any]) -> Tensor | None:
        (unit,), dual = steepest_direction([grad], self.norm)
        return unit if self.normalized else dual * unit
