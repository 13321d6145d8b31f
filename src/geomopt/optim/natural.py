"""Natural gradient descent in the Hessian metric of a potential (Amari 1998), the geometry Gunasekar, Lee,
Soudry & Srebro contrast with mirror descent ("Characterizing Implicit Bias in Terms of Optimization Geometry",
ICML 2018, Example 3 and Fig. 1b):

    w_{t+1} = w_t - lr * [grad^2 psi(w_t)]^{-1} g_t.

Its continuous-time flow is mirror descent's (``d/dt grad psi(w) = grad^2 psi(w) dw/dt = -g``), so as the step
goes to 0 both reach the Bregman projection ``argmin_{Xw = y} D_psi(w, w_0)`` on underdetermined linear
regression; at a finite step the discrete iterates differ, and natural gradient's limit depends on the step
size (the error is first order in it), while mirror descent's does not.

The metric solves, for the potentials of :mod:`geomopt.optim.mirror` on the vector ``w``:

- ``"entropy"``: ``grad^2 psi = diag(1 / w)``, so the direction is ``w * g`` (needs ``w > 0``);
- ``"hypentropy"``: ``grad^2 psi = diag(1 / sqrt(w^2 + beta^2))``, direction ``sqrt(w^2 + beta^2) * g``;
- ``"lp"``, ``psi = 1/2 ||w||_p^2`` with ``N = ||w||_p`` and ``s = sign(w) |w|^{p-1}``:
  ``grad^2 psi = (p-1) N^{2-p} diag(|w|^{p-2}) + (2-p) N^{2-2p} s s^T``; by Sherman-Morrison (``D^{-1} s = w /
  ((p-1) N^{2-p})``, ``s^T w = N^p``) its inverse applied to ``g`` is

      N^{p-2} / (p-1) * |w|^{2-p} * g  -  (2-p) / ((p-1) N^2) * <w, g> w

  (``p = 2``: ``g``). For ``p > 2`` the metric is singular where a coordinate is 0, and it is refused there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from geomopt.optim.geometry import Block, Geometry
from geomopt.optim.mirror import POTENTIALS, PotentialStep, check_options

__all__ = ["NaturalGradient", "PotentialGeometry", "metric_solve"]


def metric_solve(w: Tensor, g: Tensor, potential: str, p: float = 2.0, beta: float = 1.0) -> Tensor:
    """``[grad^2 psi(w)]^{-1} g`` for the vector ``w`` (module docstring).

    Raises:
        ValueError: an unknown potential, shapes that differ, non-positive ``w`` for the entropy, ``w = 0`` for
            ``lp``, or a zero coordinate for ``lp`` with ``p > 2`` (the metric is singular there).
    """
    if w.shape != g.shape:
        raise ValueError(f"metric_solve: w {tuple(w.shape)} and g {tuple(g.shape)} differ in shape")
    if potential == "entropy":
        if not bool((w > 0).all()):
            raise ValueError("metric_solve: the entropy potential's metric needs positive weights")
        return w * g
    if potential == "hypentropy":
        return torch.sqrt(w * w + beta * beta) * g
    if potential != "lp":
        raise ValueError(f"metric_solve: potential must be one of {POTENTIALS}, got {potential!r}")
    if p == 2:
        return g.clone()
    norm = torch.linalg.vector_norm(w, ord=p)
    if norm == 0:
        raise ValueError("metric_solve: the lp potential's metric is singular at w = 0")
    if p > 2 and bool((w == 0).any()):
        raise ValueError(f"metric_solve: the lp potential's metric (p = {p:g} > 2) is singular where a weight is 0")
    diagonal = norm ** (p - 2) / (p - 1) * w.abs() ** (2 - p) * g
    return diagonal - (2 - p) / ((p - 1) * norm ** 2) * torch.dot(w, g) * w


class NaturalGradient(PotentialStep):
    """Natural gradient descent in the Hessian metric of the ``lp``, ``entropy`` or ``hypentropy`` potential
    (module docstring), with heavy-ball momentum on the step: ``d_t = m d_{t-1} + [grad^2 psi(w_t)]^{-1} g_t``,
    ``w_{t+1} = w_t - lr d_t``.

    Args:
        params: Parameters or parameter groups (each group is one vector ``w``, as in :class:`MirrorDescent`).
        lr: Step size.
        potential, p, beta: The potential (:class:`geomopt.optim.MirrorDescent`'s).
        momentum: Heavy-ball momentum, in [0, 1).

    Raises:
        ValueError: an option out of range (per group, at construction and at each step), or a point where the
            metric is singular (:func:`metric_solve`); no parameter is changed then.
        FloatingPointError: a non-finite gradient or direction (no parameter is changed then).
    """

    label = "NaturalGradient"

    def _move(self, w: Tensor, g: Tensor, group: dict, state: dict) -> tuple[Tensor, dict]:
        d = self._heavy_ball(metric_solve(w, g, group["potential"], group["p"], group["beta"]), group, state,
                             "direction")
        if not torch.isfinite(d).all():
            raise FloatingPointError(f"NaturalGradient: the {group['potential']} direction is non-finite; no "
                                     "parameter was changed")
        return w - group["lr"] * d, {"direction": d}


class PotentialGeometry(Geometry):
    """The Hessian metric of a potential as a plug-in :class:`Geometry`: each tensor's direction is
    :func:`metric_solve` at its current value (the tensor as one vector; for the separable ``entropy`` and
    ``hypentropy`` potentials that is the whole group's metric too). ``Preconditioner(PotentialGeometry(...))``
    in front of ``torch.optim.SGD`` takes :class:`NaturalGradient`'s steps.

    Args:
        params: The parameters it preconditions.
        names: ``{parameter: name}`` for messages.
        potential, p, beta: The potential (:func:`metric_solve`).
    """

    name = "natural gradient"

    def __init__(self, params: Sequence[Tensor], names: dict[Tensor, str] | None = None, *, potential: str = "lp",
                 p: float = 2.0, beta: float = 1.0) -> None:
        super().__init__(params, names)
        check_options(0.0, potential, p, beta, 0.0, "PotentialGeometry")
        self.potential, self.p, self.beta = potential, p, beta

    def direction(self, block: Block, grad: Tensor, group: dict[str, Any]) -> Tensor | None:
        (param,) = block.params
        d = metric_solve(param.detach().reshape(-1), grad.reshape(-1), self.potential, self.p, self.beta)
        return d.reshape(grad.shape)
