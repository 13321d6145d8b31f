"""SOAP: Adam in the eigenbasis of Shampoo's statistics (Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson &
Kakade, "SOAP: Improving and Stabilizing Shampoo using Adam", 2024, Algorithm 3); the descendant of EKFAC
(George et al. 2018), whose eigenbasis comes from gradient statistics instead of the Fisher's factors.

For a matrix parameter ``W`` (a conv weight ``(out, in, kh, kw)`` is the matrix ``(out, in * kh * kw)``) with
gradient ``G`` at step ``t``::

    L <- b L + (1 - b) G G^T,   R <- b R + (1 - b) G^T G          (b = shampoo_beta)
    Q_L, Q_R <- eigenvectors of L, R                  (at steps 1, 1 + k, 1 + 2k, ...: k = precondition_freq)
    M <- beta1 M + (1 - beta1) G                                  (first moment, in the parameter's basis)
    G' = Q_L^T G Q_R,   M' = Q_L^T M Q_R
    V <- beta2 V + (1 - beta2) G' * G'                            (second moment, in the eigenbasis)
    N = Q_L [ (M' / (1 - beta1^t)) / (sqrt(V / (1 - beta2^t)) + eps) ] Q_R^T
    W <- (1 - lr wd) W - lr N

A parameter with fewer than two dimensions has the identity basis: it takes AdamW steps. Between refreshes
``V`` carries over to the new basis, eigenvectors matched by the order of their eigenvalues (as in the
paper's implementation). Differences from the authors' code: the statistics include the current gradient
and the basis is refreshed before the step (their code updates it after the step and skips the first step's
update), and each refresh is an exact eigendecomposition (float64 ``eigh``) where theirs is one power
iteration with a QR decomposition warm-started at the previous basis.

``max_dim`` caps the factors' size as the authors' ``max_precond_dim`` does: a side longer than it keeps the
identity basis (no statistic, no rotation on that side), so a matrix with both sides longer takes AdamW steps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from geomopt.checks import check_betas, check_int, check_number
from geomopt.optim.shampoo import (DirectionFirst, check_max_dim, kept_sides, kronecker_bases, kronecker_factors,
                                   kronecker_statistics_)

__all__ = ["SOAP", "soap_direction", "rotate"]


def rotate(x: torch.Tensor, q_left: torch.Tensor | None, q_right: torch.Tensor | None, back: bool = False
           ) -> torch.Tensor:
    """``Q_L^T X Q_R`` into the eigenbasis (``back``: ``Q_L X Q_R^T`` out of it); a basis given as None is the
    identity."""
    if q_left is not None:
        x = (q_left if back else q_left.mT) @ x
    if q_right is not None:
        x = x @ (q_right.mT if back else q_right)
    return x


def soap_direction(m_hat: torch.Tensor, v_hat: torch.Tensor, q_left: torch.Tensor | None,
                   q_right: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``N = Q_L [(Q_L^T M Q_R) / (sqrt(V) + eps)] Q_R^T``: Adam's direction from the bias-corrected first moment
    ``m_hat`` ``(m, n)`` (parameter basis) and second moment ``v_hat`` ``(m, n)`` (eigenbasis); a basis given as
    None is the identity."""
    return rotate(rotate(m_hat, q_left, q_right) / (v_hat.sqrt() + eps), q_left, q_right, back=True)


def _check_group(group: dict, where: str) -> None:
    check_number(where, "lr", group["lr"], low=0)
    check_betas(where, "betas", group["betas"])
    if group["shampoo_beta"] is not None:
        check_number(where, "shampoo_beta", group["shampoo_beta"], low=0, high=1, high_open=True)
    check_number(where, "eps", group["eps"], low=0, low_open=True)
    check_number(where, "weight_decay", group["weight_decay"], low=0)
    check_int(where, "precondition_freq", group["precondition_freq"], low=1)
    check_max_dim(where, group.get("max_dim"))


class SOAP(DirectionFirst):
    """SOAP (module docstring): AdamW in the eigenbasis of Shampoo's statistics, refreshed every
    ``precondition_freq`` steps; AdamW on non-matrix parameters.

    Args:
        params: Parameters or parameter groups.
        lr: Step size.
        betas: Adam's ``(beta1, beta2)`` (the paper's default ``(0.95, 0.95)``).
        shampoo_beta: Decay of the Kronecker statistics ``L``, ``R`` (None: ``beta2``).
        eps: Added to ``sqrt(V)``.
        weight_decay: Decoupled weight decay ``W <- (1 - lr wd) W``.
        precondition_freq: Refresh the eigenbasis every this many steps (the paper's ``f``, default 10).
        max_dim: Sides longer than this keep the identity basis (module docstring); None: no cap.

    Raises:
        ValueError: an option out of range (at construction, when a group is added and at each step).
        FloatingPointError: a non-finite gradient or statistic, or a failed eigendecomposition, at a step (no
            parameter is changed then).
    """

    def __init__(self, params: Iterable, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 shampoo_beta: float | None = None, eps: float = 1e-8, weight_decay: float = 0.01,
                 precondition_freq: int = 10, max_dim: int | None = None) -> None:
        defaults = {"lr": lr, "betas": betas, "shampoo_beta": shampoo_beta, "eps": eps, "weight_decay": weight_decay,
                    "precondition_freq": precondition_freq, "max_dim": max_dim}
        _check_group(defaults, "SOAP")
        super().__init__(params, defaults)

    label = "SOAP"

    def _check(self, group: dict, where: str) -> None:
        _check_group(group, where)

    def _refresh(self, state: dict, g: torch.Tensor, group: dict, step: int) -> None:
        keep = kept_sides(g.shape, group.get("max_dim"))
        left, right = kronecker_factors(state, "", g, keep)
        beta = group["betas"][1] if group["shampoo_beta"] is None else group["shampoo_beta"]
        kronecker_statistics_(left, right, g, beta)
        if (step - 1) % group["precondition_freq"] == 0 or state.get("kept") != keep:
            state["kept"] = keep
            state["q_left"], state["q_right"] = kronecker_bases(left, right)

    def _update(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Adam's direction of ``p`` in the eigenbasis, back in the parameter's basis; ``p`` is not changed."""
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] = step = state["step"] + 1
        beta1, beta2 = group["betas"]
        g = p.grad if p.dim() < 2 else p.grad.reshape(p.shape[0], -1)
        m, v = state["exp_avg"].view_as(g), state["exp_avg_sq"].view_as(g)
        m.lerp_(g, 1 - beta1)
        m_hat = m / (1 - beta1 ** step)
        if p.dim() < 2:
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            direction = m_hat / ((v / (1 - beta2 ** step)).sqrt() + group["eps"])
        else:
            self._refresh(state, g, group, step)
            rotated = rotate(g, state["q_left"], state["q_right"])
            v.mul_(beta2).addcmul_(rotated, rotated, value=1 - beta2)
            direction = soap_direction(m_hat, v / (1 - beta2 ** step), state["q_left"], state["q_right"], group["eps"])
        return direction
