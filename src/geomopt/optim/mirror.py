"""Mirror descent with a strongly convex potential (Nemirovski & Yudin 1983; Beck & Teboulle 2003), the
geometry whose implicit bias Gunasekar, Lee, Soudry & Srebro characterize ("Characterizing Implicit Bias in
Terms of Optimization Geometry", ICML 2018, the regression part): on underdetermined linear regression it converges to
the zero-loss solution closest to the start in the potential's Bregman divergence,
``argmin_{Xw = y} D_psi(w, w_0)``, whatever the step size and momentum.

The step, with momentum ``m`` taken in the mirror (dual) space:

    theta_t = grad psi(w_t),   theta_{t+1} = theta_t - lr * g_t + m (theta_t - theta_{t-1}),   w_{t+1} = grad psi^*(theta_{t+1}).

Potentials (each over all of a parameter group's tensors as one vector ``w``):

- ``"lp"`` with ``p`` in (1, inf): ``psi(w) = 1/2 ||w||_p^2``; ``grad psi(w) = ||w||_p^{2-p} sign(w) |w|^{p-1}``, and
  ``grad psi^*`` is the same map with the dual exponent ``q = p / (p - 1)`` (``p = 2``: gradient descent);
- ``"entropy"``: ``psi(w) = sum w_i log w_i`` on ``w > 0``; ``grad psi(w) = 1 + log w``, so
  ``w_{t+1} = w_t exp(-lr g_t)`` (exponentiated gradient, unnormalized);
- ``"hypentropy"`` with ``beta > 0`` (Ghai, Hazan & Singer 2020): ``psi(w) = sum w_i arcsinh(w_i / beta) -
  sqrt(w_i^2 + beta^2)``; ``grad psi(w) = arcsinh(w / beta)``, ``grad psi^*(theta) = beta sinh(theta)``; it
  interpolates between the squared l2 potential (beta large) and the entropy (beta -> 0), for signed weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from geomopt.checks import check_number

__all__ = ["POTENTIALS", "MirrorDescent", "PotentialStep", "check_options", "mirror_map", "inverse_mirror_map",
           "bregman"]

POTENTIALS = ("lp", "entropy", "hypentropy")


def _lp_map(w: torch.Tensor, p: float) -> torch.Tensor:
    """``grad (1/2 ||w||_p^2) = ||w||_p^{2-p} sign(w) |w|^{p-1}`` (0 at w = 0)."""
    norm = torch.linalg.vector_norm(w, ord=p)
    if norm == 0:
        return torch.zeros_like(w)
    return norm ** (2 - p) * torch.sign(w) * w.abs() ** (p - 1)


def mirror_map(w: torch.Tensor, potential: str, p: float = 2.0, beta: float = 1.0) -> torch.Tensor:
    """``grad psi(w)`` of a potential (module docstring) on the vector ``w``."""
    if potential == "lp":
        return _lp_map(w, p)
    if potential == "entropy":
        return 1 + torch.log(w)
    if potential == "hypentropy":
        return torch.asinh(w / beta)
    raise ValueError(f"mirror_map: potential must be one of {POTENTIALS}, got {potential!r}")


def inverse_mirror_map(theta: torch.Tensor, potential: str, p: float = 2.0, beta: float = 1.0) -> torch.Tensor:
    """``grad psi^*(theta)``, the inverse of :func:`mirror_map`."""
    if potential == "lp":
        return _lp_map(theta, p / (p - 1))
    if potential == "entropy":
        return torch.exp(theta - 1)
    if potential == "hypentropy":
        return beta * torch.sinh(theta)
    raise ValueError(f"inverse_mirror_map: potential must be one of {POTENTIALS}, got {potential!r}")


def _psi(w: torch.Tensor, potential: str, p: float, beta: float) -> torch.Tensor:
    if potential == "lp":
        return 0.5 * torch.linalg.vector_norm(w, ord=p) ** 2
    if potential == "entropy":
        return (w * torch.log(w)).sum()
    return (w * torch.asinh(w / beta) - torch.sqrt(w * w + beta * beta)).sum()


def bregman(w: torch.Tensor, v: torch.Tensor, potential: str, p: float = 2.0, beta: float = 1.0) -> torch.Tensor:
    """``D_psi(w, v) = psi(w) - psi(v) - <grad psi(v), w - v>``."""
    return (_psi(w, potential, p, beta) - _psi(v, potential, p, beta)
            - (mirror_map(v, potential, p, beta) * (w - v)).sum())


def check_options(lr, potential, p, beta, momentum, where: str) -> None:
    """The options of a potential's optimizer (:class:`MirrorDescent`, :class:`geomopt.optim.NaturalGradient`)."""
    check_number(where, "lr", lr, low=0)
    if potential not in POTENTIALS:
        raise ValueError(f"{where}: potential must be one of {POTENTIALS}, got {potential!r}")
    check_number(where, "p", p, low=1, low_open=True)
    check_number(where, "beta", beta, low=0, low_open=True)
    check_number(where, "momentum", momentum, low=0, high=1, high_open=True)


class PotentialStep(torch.optim.Optimizer):
    """The step shared by the optimizers of a potential: each param group is one vector ``w`` (its tensors
    concatenated); every group's new point is computed by :meth:`_move` and found finite before any parameter
    changes. Subclasses name themselves (``label``) and give ``_move(w, g, group, state) -> (w_new, remember)``;
    ``remember`` is stored in the group's state once every group has moved."""

    label = "PotentialStep"

    def __init__(self, params: Iterable, lr: float = 0.01, potential: str = "lp", p: float = 2.0, beta: float = 1.0,
                 momentum: float = 0.0) -> None:
        check_options(lr, potential, p, beta, momentum, self.label)
        super().__init__(params, {"lr": lr, "potential": potential, "p": p, "beta": beta, "momentum": momentum})

    def add_param_group(self, param_group: dict) -> None:
        m = {**self.defaults, **param_group}
        check_options(m["lr"], m["potential"], m["p"], m["beta"], m["momentum"], self.label)
        super().add_param_group(param_group)

    def _move(self, w: torch.Tensor, g: torch.Tensor, group: dict, state: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    @staticmethod
    def _heavy_ball(x: torch.Tensor, group: dict, state: dict, key: str) -> torch.Tensor:
        """``x + momentum * state[key]`` (the previous step), or ``x`` without momentum or a previous step of
        ``x``'s shape."""
        prev = state.get(key)
        if group["momentum"] and prev is not None and prev.shape == x.shape:
            return x + group["momentum"] * prev
        return x

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        new = []
        for i, group in enumerate(self.param_groups):
            check_options(group["lr"], group["potential"], group["p"], group["beta"], group["momentum"],
                          f"{self.label}: param group {i}")
            params = [q for q in group["params"] if q.grad is not None]
            if not params:
                continue
            w = torch.cat([q.reshape(-1) for q in params])
            g = torch.cat([q.grad.reshape(-1) for q in params])
            if not torch.isfinite(g).all():
                raise FloatingPointError(f"{self.label}: non-finite gradient; no parameter was changed")
            state = self.state[params[0]]
            new.append((params, state, *self._move(w, g, group, state)))
        for params, state, w_new, remember in new:
            state.update(remember)
            i = 0
            for q in params:
                q.copy_(w_new[i:i + q.numel()].reshape(q.shape))
                i += q.numel()
        return loss


class MirrorDescent(PotentialStep):
    """Mirror descent with the ``lp``, ``entropy`` or ``hypentropy`` potential (module docstring).

    Args:
        params: Parameters or parameter groups (each group is one vector ``w``).
        lr: Step size.
        potential: ``"lp"`` (with ``p``), ``"entropy"`` (positive weights) or ``"hypentropy"`` (with ``beta``).
        p: The exponent of the ``lp`` potential, in (1, inf).
        beta: The scale of the ``hypentropy`` potential, > 0.
        momentum: Heavy-ball momentum in the mirror space, in [0, 1).

    Raises:
        ValueError: an option out of range (per group, at construction and at each step), or non-positive
            weights under the entropy potential.
        FloatingPointError: a non-finite gradient or update (no parameter is changed then).
    """

    label = "MirrorDescent"

    def _move(self, w: torch.Tensor, g: torch.Tensor, group: dict, state: dict) -> tuple[torch.Tensor, dict]:
        opts = {"potential": group["potential"], "p": group["p"], "beta": group["beta"]}
        if group["potential"] == "entropy" and not (w > 0).all():
            raise ValueError("MirrorDescent: the entropy potential needs positive weights")
        step = self._heavy_ball(-group["lr"] * g, group, state, "mirror_step")
        w_new = inverse_mirror_map(mirror_map(w, **opts) + step, **opts)
        if not torch.isfinite(w_new).all():
            raise FloatingPointError(f"MirrorDescent: the {group['potential']} update is non-finite (lr "
                                     f"{group['lr']:g} too large?); no parameter was changed")
        return w_new, {"mirror_step": step}
