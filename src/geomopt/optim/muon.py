"""Muon: orthogonalized momentum, steepest descent under the spectral norm (Jordan et al., "Muon: An optimizer
for hidden layers in neural networks", 2024; Bernstein & Newhouse, "Old Optimizer, New Norm", 2024).

For a matrix parameter ``W`` with gradient ``G`` (a conv weight ``(out, in, kh, kw)`` is the matrix
``(out, in * kh * kw)``), momentum ``mu`` and the Nesterov option, as ``torch.optim.Muon``::

    B <- mu B + (1 - mu) G                    (``buf.lerp_(G, 1 - mu)``)
    M <- (1 - mu) G + mu B  if nesterov else B
    O <- orth(M)                              ~ U V^T for the reduced SVD M = U S V^T
    W <- (1 - lr * wd) W - lr * s(shape) * O  (decoupled weight decay; s = sqrt(max(1, rows / cols)) "original",
                                               0.2 sqrt(max(rows, cols)) "match_rms_adamw")

``-U V^T`` is the steepest descent direction under the spectral norm (the unit maximizer of ``<M, O>`` over
``||O||_2 <= 1``; see :mod:`geomopt.optim.steepest`). ``orth`` is torch's quintic Newton-Schulz iteration in
bfloat16 (5 steps of ``X <- a X + (b A + c A^2) X``, ``A = X X^T``, ``(a, b, c) = (3.4445, -4.7750, 2.0315)``,
after ``X = M / ||M||_F``), which maps each singular value ``s`` of ``M`` to ``p(s / ||M||_F)`` in roughly
``[0.7, 1.2]`` rather than exactly 1, or, with ``orthogonalize="svd"``, the exact polar factor ``U V^T``
(an SVD: cheap at the widths of small networks).

Non-matrix parameters (biases, gains: fewer than two dimensions) are not Muon's: by default
(``fallback="adamw"``) they take AdamW steps (``torch.optim.AdamW``'s update with ``adamw_lr``,
``adamw_betas``, ``adamw_eps``, ``adamw_weight_decay``), the convention of Jordan's ``MuonWithAuxAdam``;
``fallback="none"`` rejects them as ``torch.optim.Muon`` does.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, DEFAULT_NS_STEPS, EPS, _adjust_lr, \
    _zeropower_via_newtonschulz
from torch.optim.adam import adam

from geomopt.checks import WrongTypeError, check_betas, check_int, check_number
from geomopt.optim.steepest import steepest_direction

__all__ = ["Muon", "muon_direction", "ORTHOGONALIZE"]

ORTHOGONALIZE = ("newton-schulz", "svd")
FALLBACKS = ("adamw", "none")
ADJUST_LR = (None, "original", "match_rms_adamw")


def muon_direction(m: torch.Tensor, orthogonalize: str = "newton-schulz",
                   ns_coefficients: tuple[float, float, float] = (DEFAULT_A, DEFAULT_B, DEFAULT_C),
                   ns_steps: int = DEFAULT_NS_STEPS, eps: float = EPS) -> torch.Tensor:
    """The orthogonalized matrix ``orth(M)`` of the module docstring, of ``m``'s shape: ``m`` with two or more
    dimensions is the matrix ``(shape[0], -1)``.

    Args:
        m: The (momentum) matrix, ``(rows, cols)`` or a conv weight ``(out, in, kh, kw)``.
        orthogonalize: ``"newton-schulz"`` (torch's bfloat16 iteration, returns bfloat16) or ``"svd"`` (the exact
            polar factor ``U V^T`` over the singular values above the rank tolerance, in ``m``'s dtype).
    """
    matrix = m.reshape(m.shape[0], -1)
    if orthogonalize == "svd":
        return steepest_direction([matrix], "spectral")[0][0].view(m.shape)
    return _zeropower_via_newtonschulz(matrix, ns_coefficients, ns_steps, eps).view(m.shape)


def _check_group(group: dict, where: str) -> None:
    check_number(where, "lr", group["lr"], low=0)
    check_number(where, "weight_decay", group["weight_decay"], low=0)
    check_number(where, "momentum", group["momentum"], low=0, high=1)
    check_number(where, "eps", group["eps"], low=0, low_open=True)
    check_int(where, "ns_steps", group["ns_steps"], low=1, high=99)
    coefficients = group["ns_coefficients"]
    if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
        raise WrongTypeError(f"{where}: ns_coefficients must be three numbers (a, b, c), got {coefficients!r}")
    for key, c in zip("abc", coefficients):
        check_number(where, f"ns_coefficients {key}", c)
    for key, allowed in (("adjust_lr_fn", ADJUST_LR), ("orthogonalize", ORTHOGONALIZE), ("fallback", FALLBACKS)):
        if group[key] not in allowed:
            raise ValueError(f"{where}: {key} must be one of {allowed}, got {group[key]!r}")
    if group["adamw_lr"] is not None:
        check_number(where, "adamw_lr", group["adamw_lr"], low=0)
    check_betas(where, "adamw_betas", group["adamw_betas"])
    check_number(where, "adamw_eps", group["adamw_eps"], low=0, low_open=True)
    check_number(where, "adamw_weight_decay", group["adamw_weight_decay"], low=0)
    if group["fallback"] == "none":
        for p in group["params"]:
            if p.dim() < 2:
                raise ValueError(f"{where}: a parameter of shape {tuple(p.shape)} is not a matrix and fallback is "
                                 f"'none'; use fallback='adamw' or give it to another optimizer")


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with conv weights as matrices, an exact polar-factor option and an AdamW fallback for
    non-matrix parameters (module docstring). On 2-D parameters with the default ``orthogonalize`` its step is
    torch's, and its state (``momentum_buffer``) and state dicts are torch's.

    Args:
        params: Parameters or parameter groups; each group may mix matrices and vectors.
        lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn: as
            ``torch.optim.Muon`` (``adjust_lr_fn`` sees the matrix shape, ``(out, in * kh * kw)`` for a conv).
        orthogonalize: ``"newton-schulz"`` (torch's) or ``"svd"`` (the exact ``U V^T``).
        fallback: ``"adamw"`` (non-matrix parameters take AdamW steps) or ``"none"`` (they are rejected).
        adamw_lr: The fallback's learning rate (None: ``lr``).
        adamw_betas, adamw_eps, adamw_weight_decay: The fallback's AdamW settings (defaults of Jordan's
            ``MuonWithAuxAdam``: ``(0.9, 0.95)``, ``1e-10``, ``0``).

    Raises:
        ValueError: an option out of range (at construction, when a group is added and at each step), a
            non-matrix parameter with ``fallback="none"``, or a non-finite gradient at a step (no parameter is
            changed then).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = (DEFAULT_A, DEFAULT_B, DEFAULT_C),
                 eps: float = EPS, ns_steps: int = DEFAULT_NS_STEPS, adjust_lr_fn: str | None = None, *,
                 orthogonalize: str = "newton-schulz", fallback: str = "adamw", adamw_lr: float | None = None,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-10,
                 adamw_weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                    "ns_coefficients": ns_coefficients, "eps": eps, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn,
                    "orthogonalize": orthogonalize, "fallback": fallback, "adamw_lr": adamw_lr,
                    "adamw_betas": adamw_betas, "adamw_eps": adamw_eps, "adamw_weight_decay": adamw_weight_decay}
        _check_group({**defaults, "params": []}, "Muon")
        # torch.optim.Muon.__init__ refuses all but 2-D parameters; the base class takes the groups instead
        torch.optim.Optimizer.__init__(self, params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _check_group(self.param_groups[-1], f"Muon: param group {len(self.param_groups) - 1}")

    def _checked_groups(self) -> None:
        for i, group in enumerate(self.param_groups):
            for key, value in self.defaults.items():  # a torch.optim.Muon state dict lacks the library's keys
                group.setdefault(key, value)
            _check_group(group, f"Muon: param group {i}")
            for p in group["params"]:
                if p.grad is None:
                    continue
                if torch.is_complex(p) or p.grad.is_sparse:
                    raise RuntimeError("Muon does not support complex parameters or sparse gradients")
                if not torch.isfinite(p.grad).all():
                    raise FloatingPointError(f"Muon: non-finite gradient in a tensor of shape {tuple(p.shape)}; "
                                             f"no parameter was changed")

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every group (module docstring); ``closure`` re-evaluates the loss with gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._checked_groups()
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            self._matrix_steps([p for p in with_grad if p.dim() >= 2], group)
            self._adamw_steps([p for p in with_grad if p.dim() < 2], group)
        return loss

    def _matrix_steps(self, params: list[torch.Tensor], group: dict) -> None:
        lr, momentum = float(group["lr"]), group["momentum"]
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            direction = muon_direction(update, group["orthogonalize"], group["ns_coefficients"], group["ns_steps"],
                                       group["eps"])
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(direction, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], (p.shape[0], p[0].numel())))

    def _adamw_steps(self, params: list[torch.Tensor], group: dict) -> None:
        if not params:
            return
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [self.state[p] for p in params]
        beta1, beta2 = group["adamw_betas"]
        lr = group["lr"] if group["adamw_lr"] is None else group["adamw_lr"]
        adam(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
             [s["step"] for s in states], foreach=False, decoupled_weight_decay=True, amsgrad=False, beta1=beta1,
             beta2=beta2, lr=lr, weight_decay=group["adamw_weight_decay"], eps=group["adamw_eps"], maximize=False)
