"""Shampoo: Kronecker-factored preconditioning with gradient statistics (Gupta, Koren & Singer, "Shampoo:
Preconditioned Stochastic Tensor Optimization", ICML 2018, Algorithm 1).

For a matrix parameter ``W`` (a conv weight ``(out, in, kh, kw)`` is the matrix ``(out, in * kh * kw)``) with
gradient ``G`` at step ``t``::

    L <- beta2 L + w G G^T,   R <- beta2 R + w G^T G       (w = 1 - beta2, or 1 when beta2 = 1: the paper's sums)
    D = (L + eps I)^{-1/4} G (R + eps I)^{-1/4}

(the paper starts from ``L_0 = eps I``, ``R_0 = eps I``; ``eps I`` added at the root is the same for sums).
A parameter with fewer than two dimensions takes diagonal AdaGrad, the one-dimensional case of the same
rule: ``H <- beta2 H + w g^2``, ``D = g / sqrt(H + eps)``. The statistics are updated every ``update_freq``
steps and the inverse roots recomputed every ``precondition_freq`` steps (steps 1, 1 + k, 1 + 2k, ...), from an
eigendecomposition in float64. With ``grafting`` ``"sgd"`` or ``"adam"``, ``D`` is rescaled to the Frobenius
norm of that method's direction (``G``, or ``G / (sqrt(v_hat) + graft_eps)`` with Adam's bias-corrected second
moment ``v``, as Distributed Shampoo's Adam grafting; Agarwal et al. 2020, "Disentangling Adaptive Gradient
Methods from Learning Rates"); Adam grafting is the default, ``grafting="none"`` the paper's step. Then, with
decoupled weight decay and heavy-ball momentum::

    B <- momentum B + D,   W <- (1 - lr wd) W - lr B

``max_dim`` caps the factors' size (their eigendecompositions cost the cube of it): a side longer than
``max_dim`` gets no statistic, and the kept side takes the one-sided step ``(L + eps I)^{-1/2} G`` (or
``G (R + eps I)^{-1/2}``: the root of a one-factor Kronecker approximation); with both sides longer, the
matrix takes the diagonal AdaGrad step. A classifier head ``Linear(1568, 10)`` with ``max_dim = 1024`` keeps its
10 x 10 factor only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from geomopt.checks import check_int, check_number

__all__ = ["Shampoo", "GRAFTINGS", "kronecker_statistics_", "inverse_root", "shampoo_direction", "eigenbasis",
           "check_gradients", "kept_sides", "kronecker_roots", "kronecker_bases"]

GRAFTINGS = ("none", "sgd", "adam")


def kept_sides(shape: tuple[int, ...], max_dim: int | None) -> tuple[bool, bool]:
    """Which sides of an ``(m, n)`` matrix get a Kronecker factor: those of length at most ``max_dim`` (both
    when it is None)."""
    if max_dim is None:
        return True, True
    return shape[0] <= max_dim, shape[1] <= max_dim


def kronecker_statistics_(left: torch.Tensor | None, right: torch.Tensor | None, g: torch.Tensor, beta: float) -> None:
    """``left <- beta left + w g g^T``, ``right <- beta right + w g^T g`` in place (``w = 1 - beta``, or 1 when
    ``beta == 1``: running sums). ``g``: ``(m, n)``; ``left``: ``(m, m)``; ``right``: ``(n, n)``; a side given
    as None (not kept, :func:`kept_sides`) is skipped."""
    weight = 1.0 if beta == 1 else 1.0 - beta
    if left is not None:
        left.mul_(beta).addmm_(g, g.mT, alpha=weight)
    if right is not None:
        right.mul_(beta).addmm_(g.mT, g, alpha=weight)


def _eigh64(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.isfinite(s).all():
        raise FloatingPointError(f"a {tuple(s.shape)} gradient statistic holds NaN/inf (the gradients grew without "
                                 f"bound: lower the learning rate)")
    try:
        return torch.linalg.eigh(s.double())
    except torch.linalg.LinAlgError as exc:
        raise FloatingPointError(f"the eigendecomposition of a {tuple(s.shape)} gradient statistic failed: {exc}") \
            from exc


def eigenbasis(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigenvalues, eigenvectors)`` of the symmetric ``s`` (ascending), computed in float64, in ``s``'s dtype.

    Raises:
        FloatingPointError: ``s`` holds NaN/inf, or the decomposition fails to converge.
    """
    evals, evecs = _eigh64(s)
    return evals.to(s.dtype), evecs.to(s.dtype)


def inverse_root(s: torch.Tensor, eps: float, root: int) -> torch.Tensor:
    """``(s + eps I)^{-1/root}`` of a positive semi-definite ``s`` (negative rounding in its eigenvalues is set to 0),
    by an eigendecomposition in float64; returned in ``s``'s dtype.

    Raises:
        FloatingPointError: ``s`` holds NaN/inf, or the decomposition fails to converge.
    """
    evals, evecs = _eigh64(s)
    scaled = evecs * (evals.clamp(min=0) + eps).pow(-1.0 / root)
    return (scaled @ evecs.mT).to(s.dtype)


def kronecker_roots(left: torch.Tensor | None, right: torch.Tensor | None, eps: float
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The inverse roots of the kept factors (:func:`kronecker_factors`): ``(L + eps I)^{-1/4}``, ``(R + eps I)^{-1/4}``
    with both sides kept, ``-1/2`` for the one kept side (the one-sided step, module docstring); None stays None."""
    root = 4 if left is not None and right is not None else 2
    return tuple(inverse_root(s, eps, root) if s is not None else None for s in (left, right))  # type: ignore


def kronecker_bases(left: torch.Tensor | None, right: torch.Tensor | None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The eigenbases (:func:`eigenbasis`) of the kept factors; None (the identity basis) stays None."""
    return tuple(eigenbasis(s)[1] if s is not None else None for s in (left, right))  # type: ignore


def shampoo_direction(g: torch.Tensor, left_root: torch.Tensor | None, right_root: torch.Tensor | None
                      ) -> torch.Tensor:
    """``L^{-1/4} G R^{-1/4}`` from the inverse roots (:func:`inverse_root`): the preconditioned ``(m, n)`` gradient;
    a side whose root is None is not multiplied (the one-sided step, module docstring)."""
    if left_root is not None:
        g = left_root @ g
    return g @ right_root if right_root is not None else g


def kronecker_factors(state: dict, prefix: str, g: torch.Tensor, keep: tuple[bool, bool]
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The statistics ``state[prefix + "left"]``, ``state[prefix + "right"]`` of the kept sides of the ``(m, n)``
    gradient ``g`` (created at zero on first use); None for a side not kept."""
    out = []
    for side, n, kept in (("left", g.shape[0], keep[0]), ("right", g.shape[1], keep[1])):
        if kept and prefix + side not in state:
            state[prefix + side] = g.new_zeros(n, n)
        out.append(state[prefix + side] if kept else None)
    return out[0], out[1]


def check_gradients(optimizer: torch.optim.Optimizer, name: str) -> None:
    """Refuse sparse, complex or non-finite gradients before any parameter changes."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            if torch.is_complex(p) or p.grad.is_sparse:
                raise RuntimeError(f"{name} does not support complex parameters or sparse gradients")
            if not torch.isfinite(p.grad).all():
                raise FloatingPointError(f"{name}: non-finite gradient in a tensor of shape {tuple(p.shape)}; "
                                         f"no parameter was changed")


def _check_group(group: dict, where: str) -> None:
    check_number(where, "lr", group["lr"], low=0)
    check_number(where, "momentum", group["momentum"], low=0, high=1, high_open=True)
    check_number(where, "weight_decay", group["weight_decay"], low=0)
    check_number(where, "beta2", group["beta2"], low=0, high=1, low_open=True)
    check_number(where, "eps", group["eps"], low=0, low_open=True)
    check_int(where, "update_freq", group["update_freq"], low=1)
    check_int(where, "precondition_freq", group["precondition_freq"], low=1)
    if group["grafting"] not in GRAFTINGS:
        raise ValueError(f"{where}: grafting must be one of {GRAFTINGS}, got {group['grafting']!r}")
    check_number(where, "graft_beta2", group["graft_beta2"], low=0, high=1, high_open=True)
    check_number(where, "graft_eps", group["graft_eps"], low=0, low_open=True)
    check_max_dim(where, group.get("max_dim"))


def check_max_dim(where: str, max_dim: int | None) -> None:
    """``max_dim`` is None or an integer >= 1."""
    if max_dim is not None:
        check_int(where, "max_dim", max_dim, low=1)


class DirectionFirst(torch.optim.Optimizer):
    """The step shared by Shampoo and SOAP: every parameter's direction ``d`` is computed (and found finite)
    before any parameter changes, then decoupled weight decay and the step, ``w <- (1 - lr wd) w - lr d``.
    A subclass names itself (``label``) and gives ``_check(group, where)`` and ``_update(p, group) -> d``."""

    label = "DirectionFirst"

    def _check(self, group: dict, where: str) -> None:
        raise NotImplementedError

    def _update(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        raise NotImplementedError

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._check(self.param_groups[-1], f"{self.label}: param group {len(self.param_groups) - 1}")

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every parameter with a gradient; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            self._check(group, f"{self.label}: param group {i}")
        check_gradients(self, self.label)
        try:
            updates = [(p, group, self._update(p, group)) for group in self.param_groups for p in group["params"]
                       if p.grad is not None]
        except FloatingPointError as exc:
            raise FloatingPointError(f"{self.label}: {exc}; no parameter was changed") from exc
        for p, group, d in updates:  # every direction is finite: now change the parameters
            p.mul_(1 - float(group["lr"]) * group["weight_decay"])
            p.add_(d.view_as(p), alpha=-float(group["lr"]))
        return loss


class Shampoo(DirectionFirst):
    """Shampoo with diagonal AdaGrad for non-matrix parameters, optional grafting, momentum and decoupled weight
    decay (module docstring).

    Args:
        params: Parameters or parameter groups.
        lr: Step size.
        momentum: Heavy-ball momentum on the preconditioned (grafted) direction, in [0, 1).
        weight_decay: Decoupled weight decay ``W <- (1 - lr wd) W``.
        beta2: Decay of the statistics in (0, 1]; 1 sums them (the paper).
        eps: Added to the statistics' eigenvalues before the inverse root (the paper's ``L_0 = eps I``).
        update_freq: Update the statistics every this many steps.
        precondition_freq: Recompute the inverse roots every this many steps (1: the paper's Algorithm 1; the
            default 10 amortizes the eigendecompositions, as practical implementations do).
        grafting: ``"adam"`` (default: the step takes Adam's norm, the common practice that keeps stale or
            ill-conditioned roots from blowing a step up), ``"sgd"`` (the gradient's norm) or ``"none"`` (the
            paper).
        graft_beta2, graft_eps: Adam grafting's second-moment decay and epsilon.
        max_dim: Sides longer than this get no Kronecker factor (module docstring); None: no cap.

    Raises:
        ValueError: an option out of range (at construction, when a group is added and at each step).
        FloatingPointError: a non-finite gradient or statistic, or a failed eigendecomposition, at a step (no
            parameter is changed then).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 beta2: float = 1.0, eps: float = 1e-6, update_freq: int = 1, precondition_freq: int = 10,
                 grafting: str = "adam", graft_beta2: float = 0.999, graft_eps: float = 1e-8,
                 max_dim: int | None = None) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "beta2": beta2, "eps": eps,
                    "update_freq": update_freq, "precondition_freq": precondition_freq, "grafting": grafting,
                    "graft_beta2": graft_beta2, "graft_eps": graft_eps, "max_dim": max_dim}
        _check_group(defaults, "Shampoo")
        super().__init__(params, defaults)

    label = "Shampoo"

    def _check(self, group: dict, where: str) -> None:
        _check_group(group, where)

    def _direction(self, p: torch.Tensor, group: dict, step: int) -> torch.Tensor:
        state, g = self.state[p], p.grad
        update, refresh = (step - 1) % group["update_freq"] == 0, (step - 1) % group["precondition_freq"] == 0
        matrix = g.reshape(g.shape[0], -1) if p.dim() >= 2 else None
        keep = kept_sides(matrix.shape, group.get("max_dim")) if matrix is not None else (False, False)
        if not any(keep):  # diagonal AdaGrad: a vector, or a matrix with both sides over max_dim
            if "diag" not in state:
                state["diag"] = torch.zeros_like(p)
            if update:
                weight = 1.0 if group["beta2"] == 1 else 1 - group["beta2"]
                state["diag"].mul_(group["beta2"]).addcmul_(g, g, value=weight)
            return g / (state["diag"] + group["eps"]).sqrt()
        left, right = kronecker_factors(state, "", matrix, keep)
        if update:
            kronecker_statistics_(left, right, matrix, group["beta2"])
        if refresh or "left_root" not in state or state.get("kept") != keep:
            state["kept"] = keep
            state["left_root"], state["right_root"] = kronecker_roots(left, right, group["eps"])
        return shampoo_direction(matrix, state["left_root"], state["right_root"]).view_as(g)

    def _graft(self, d: torch.Tensor, g: torch.Tensor, state: dict, group: dict, step: int) -> torch.Tensor:
        if group["grafting"] == "none":
            return d
        if group["grafting"] == "sgd":
            target = g
        else:
            if "graft_sq" not in state:
                state["graft_sq"] = torch.zeros_like(g)
            beta = group["graft_beta2"]
            state["graft_sq"].mul_(beta).addcmul_(g, g, value=1 - beta)
            target = g / ((state["graft_sq"] / (1 - beta ** step)).sqrt() + group["graft_eps"])
        norm = torch.linalg.vector_norm(d)
        return d * (torch.linalg.vector_norm(target) / norm) if norm > 0 else d

    def _update(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """The step direction of ``p`` (after grafting and momentum); the parameter is not changed."""
        state = self.state[p]
        state["step"] = step = state.get("step", 0) + 1
        d = self._graft(self._direction(p, group, step), p.grad, state, group, step)
        if group["momentum"]:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            d = state["momentum_buffer"].mul_(group["momentum"]).add_(d)
        return d
