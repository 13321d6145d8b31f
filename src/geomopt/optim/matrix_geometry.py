r"""Shampoo's, SOAP's and Muon's preconditioning as :class:`geomopt.optim.geometry.Geometry` plug-ins, so that
any step rule (or :class:`geomopt.optim.geometry` preconditioner) can use them as it uses K-FAC's.

Each block is one parameter; a parameter with two or more dimensions is the matrix ``(shape[0], -1)`` (a conv
weight ``(out, in * kh * kw)``). The statistics come from the parameters' ``.grad`` in :meth:`update`, once
per step before any direction (step ``k`` = 0, 1, ...), and live in the shared per-parameter state under
keys of their own:

- :class:`ShampooGeometry` (Gupta, Koren & Singer 2018): ``L <- beta2 L + w G G^T``, ``R <- beta2 R + w G^T G``
  every ``update_freq`` steps, the inverse roots every ``precondition_freq`` steps, and the direction
  ``(L + eps I)^{-1/4} D (R + eps I)^{-1/4}`` of the block's gradient ``D`` (weight decay included by the step
  rule); diagonal AdaGrad ``D / sqrt(H + eps)`` for a non-matrix parameter. :class:`geomopt.optim.Shampoo`
  without grafting, momentum applied by the step rule.
- :class:`EigenAdamGeometry` (SOAP's preconditioner, Vyas et al. 2024): the eigenbases ``Q_L``, ``Q_R`` of
  Shampoo's statistics (decay ``shampoo_beta``), refreshed every ``precondition_freq`` steps, and Adam's
  bias-corrected second moment ``V`` of the rotated gradient ``Q_L^T G Q_R``; the direction
  ``Q_L [(Q_L^T D Q_R) / (sqrt(V_hat) + eps)] Q_R^T``. This is :class:`geomopt.optim.SOAP` with ``beta1 = 0``:
  the first moment belongs to the step rule (heavy-ball momentum on the direction, after the geometry,
  where SOAP averages the gradient before it). A non-matrix parameter takes RMSProp's ``D / (sqrt(v_hat) + eps)``.
- :class:`SpectralGeometry` (Muon's, Jordan et al. 2024; Bernstein & Newhouse 2024): the dual map of the
  scaled spectral norm, ``s(shape) orth(D)`` with ``orth`` the Newton-Schulz iteration or the exact ``U V^T``
  (:func:`geomopt.optim.muon.muon_direction`) and ``s`` torch.optim.Muon's shape adjustment; no statistics. A
  non-matrix parameter takes the gradient (Euclidean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, DEFAULT_NS_STEPS, EPS, _adjust_lr

from geomopt.checks import check_int, check_number
from geomopt.optim.geometry import Block, Geometry
from geomopt.optim.muon import ADJUST_LR, ORTHOGONALIZE, muon_direction
from geomopt.optim.shampoo import (check_max_dim, kept_sides, kronecker_bases, kronecker_factors, kronecker_roots,
                                   kronecker_statistics_, shampoo_direction)
from geomopt.optim.soap import rotate, soap_direction

__all__ = ["ShampooGeometry", "EigenAdamGeometry", "SpectralGeometry"]


def _matrix(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _grads(geometry: Geometry, groups: Sequence[dict[str, Any]]) -> list[Tensor]:
    """The parameters of the geometry (within ``groups``, when given) that have a finite gradient now."""
    mine = {id(p) for p in geometry.params}
    params = [p for g in groups for p in g["params"] if id(p) in mine] if groups else geometry.params
    for p in params:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            raise FloatingPointError(f"{geometry.name}: non-finite gradient in {geometry.names.get(p, 'a parameter')} "
                                     f"of shape {tuple(p.shape)}; no parameter was changed")
    return [p for p in params if p.grad is not None]


class ShampooGeometry(Geometry):
    """Shampoo's Kronecker preconditioner (module docstring).

    Args:
        params: The parameters it preconditions.
        names: ``{parameter: name}`` for messages.
        beta2: Decay of the statistics in (0, 1]; 1 sums them (the paper).
        eps: Added to the statistics' eigenvalues before the inverse roots.
        update_freq, precondition_freq: Statistics / inverse roots every this many steps.
        max_dim: Sides longer than this get no factor (:class:`geomopt.optim.Shampoo`'s); None: no cap.
    """

    name = "Shampoo"

    def __init__(self, params: Sequence[Tensor], names: dict[Tensor, str] | None = None, *, beta2: float = 1.0,
                 eps: float = 1e-6, update_freq: int = 1, precondition_freq: int = 10,
                 max_dim: int | None = None) -> None:
        super().__init__(params, names)
        check_max_dim(self.name, max_dim)
        self.max_dim = max_dim
        self.beta2 = check_number(self.name, "beta2", beta2, low=0, high=1, low_open=True)
        self.eps = check_number(self.name, "eps", eps, low=0, low_open=True)
        self.update_freq = check_int(self.name, "update_freq", update_freq, low=1)
        self.precondition_freq = check_int(self.name, "precondition_freq", precondition_freq, low=1)

    def update(self, step: int, groups: Sequence[dict[str, Any]] = ()) -> None:
        weight = 1.0 if self.beta2 == 1 else 1.0 - self.beta2
        for p in _grads(self, groups):
            state, keep = self.state[p], self._kept(p)
            if not any(keep):  # diagonal AdaGrad
                if "shampoo_diag" not in state:
                    state["shampoo_diag"] = torch.zeros_like(p)
                if step % self.update_freq == 0:
                    state["shampoo_diag"].mul_(self.beta2).addcmul_(p.grad, p.grad, value=weight)
                continue
            g = _matrix(p.grad)
            left, right = kronecker_factors(state, "shampoo_", g, keep)
            if step % self.update_freq == 0:
                kronecker_statistics_(left, right, g, self.beta2)
            if step % self.precondition_freq == 0 or "shampoo_left_root" not in state:
                state["shampoo_left_root"], state["shampoo_right_root"] = kronecker_roots(left, right, self.eps)

    def _kept(self, p: Tensor) -> tuple[bool, bool]:
        return kept_sides(_matrix(p).shape, self.max_dim) if p.dim() >= 2 else (False, False)

    def ready(self, block: Block) -> bool:
        state = self.state.get(block.key, {})
        return "shampoo_left_root" in state or "shampoo_diag" in state

    def direction(self, block: Block, grad: Tensor, group: dict[str, Any]) -> Tensor | None:
        if not self.ready(block):
            return None
        state = self.state[block.key]
        if not any(self._kept(block.key)):
            return grad / (state["shampoo_diag"] + self.eps).sqrt()
        return shampoo_direction(_matrix(grad), state["shampoo_left_root"], state["shampoo_right_root"]).view_as(grad)


class EigenAdamGeometry(Geometry):
    """SOAP's preconditioner: Adam's second moment in the eigenbasis of Shampoo's statistics (module docstring).

    Args:
        params: The parameters it preconditions.
        names: ``{parameter: name}`` for messages.
        beta2: Decay of the second moment ``V``.
        shampoo_beta: Decay of the statistics ``L``, ``R`` (None: ``beta2``).
        eps: Added to ``sqrt(V_hat)``.
        precondition_freq: Refresh the eigenbases every this many steps.
        max_dim: Sides longer than this keep the identity basis (:class:`geomopt.optim.SOAP`'s); None: no cap.
    """

    name = "SOAP"

    def __init__(self, params: Sequence[Tensor], names: dict[Tensor, str] | None = None, *, beta2: float = 0.95,
                 shampoo_beta: float | None = None, eps: float = 1e-8, precondition_freq: int = 10,
                 max_dim: int | None = None) -> None:
        super().__init__(params, names)
        check_max_dim(self.name, max_dim)
        self.max_dim = max_dim
        self.beta2 = check_number(self.name, "beta2", beta2, low=0, high=1, high_open=True)
        self.shampoo_beta = self.beta2 if shampoo_beta is None else check_number(
            self.name, "shampoo_beta", shampoo_beta, low=0, high=1, high_open=True)
        self.eps = check_number(self.name, "eps", eps, low=0, low_open=True)
        self.precondition_freq = check_int(self.name, "precondition_freq", precondition_freq, low=1)

    def update(self, step: int, groups: Sequence[dict[str, Any]] = ()) -> None:
        for p in _grads(self, groups):
            state = self.state[p]
            if "soap_sq" not in state:
                state["soap_sq"], state["soap_step"] = torch.zeros_like(p), 0
            state["soap_step"] += 1
            g = p.grad
            if p.dim() >= 2:
                g = _matrix(g)
                left, right = kronecker_factors(state, "soap_", g, kept_sides(g.shape, self.max_dim))
                kronecker_statistics_(left, right, g, self.shampoo_beta)
                if step % self.precondition_freq == 0 or "soap_q_left" not in state:
                    state["soap_q_left"], state["soap_q_right"] = kronecker_bases(left, right)
                g = rotate(g, state["soap_q_left"], state["soap_q_right"])
            state["soap_sq"].view_as(g).mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)

    def ready(self, block: Block) -> bool:
        return "soap_sq" in self.state.get(block.key, {})

    def direction(self, block: Block, grad: Tensor, group: dict[str, Any]) -> Tensor | None:
        if not self.ready(block):
            return None
        state = self.state[block.key]
        v_hat = state["soap_sq"] / (1 - self.beta2 ** state["soap_step"])
        if grad.dim() < 2:
            return grad / (v_hat.sqrt() + self.eps)
        return soap_direction(_matrix(grad), _matrix(v_hat), state["soap_q_left"], state["soap_q_right"],
                              self.eps).view_as(grad)


class SpectralGeometry(Geometry):
    """Muon's geometry: the scaled spectral norm's dual map (module docstring); no statistics.

    Args:
        params: The parameters it preconditions.
        names: ``{parameter: name}`` for messages.
        orthogonalize: ``"newton-schulz"`` (torch.optim.Muon's iteration) or ``"svd"`` (the exact ``U V^T``).
        adjust_lr_fn: torch.optim.Muon's shape scaling (``None``/``"original"``, ``"match_rms_adamw"``).
        ns_coefficients, ns_steps, eps: the Newton-Schulz iteration's.
    """

    name = "Muon"

    def __init__(self, params: Sequence[Tensor], names: dict[Tensor, str] | None = None, *,
                 orthogonalize: str = "newton-schulz", adjust_lr_fn: str | None = None,
                 ns_coefficients: tuple[float, float, float] = (DEFAULT_A, DEFAULT_B, DEFAULT_C),
                 ns_steps: int = DEFAULT_NS_STEPS, eps: float = EPS) -> None:
        super().__init__(params, names)
        for key, value, allowed in (("orthogonalize", orthogonalize, ORTHOGONALIZE),
                                    ("adjust_lr_fn", adjust_lr_fn, ADJUST_LR)):
            if value not in allowed:
                raise ValueError(f"{self.name}: {key} must be one of {allowed}, got {value!r}")
        self.orthogonalize, self.adjust_lr_fn = orthogonalize, adjust_lr_fn
        self.ns_coefficients = tuple(check_number(self.name, "ns_coefficients", c) for c in ns_coefficients)
        self.ns_steps = check_int(self.name, "ns_steps", ns_steps, low=1, high=99)
        self.eps = check_number(self.name, "eps", eps, low=0, low_open=True)

    def direction(self, block: Block, grad: Tensor, group: dict[str, Any]) -> Tensor | None:
        if grad.dim() < 2:
            return grad
        unit = muon_direction(grad, self.orthogonalize, self.ns_coefficients, self.ns_steps, self.eps)
        return unit.to(grad.dtype) * _adjust_lr(1.0, self.adjust_lr_fn, (grad.shape[0], grad[0].numel()))
