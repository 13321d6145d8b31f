r"""A geometry as a preconditioner in front of any torch optimizer (the interface of kfac-pytorch).

::

    precond = KFACPreconditioner(model)            # hooks on the model's Linear / Conv2d layers
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        precond.step()                             # every .grad <- the geometry's direction
        opt.step()

:meth:`Preconditioner.step` replaces, in place, the gradient of every block the geometry has statistics
for with its steepest-descent direction ``D = P^{-1} g`` (:mod:`geomopt.optim.geometry`); the other
parameters keep their gradients. With an optional KL clip (Ba, Grosse & Martens 2017; it needs the
learning rate the optimizer will apply) the directions are scaled by
``nu = min(1, sqrt(kl_clip / (lr^2 sum <D, g>)))``. Momentum, weight decay and the learning rate are the
torch optimizer's (its weight decay then acts after the geometry, ``D + wd w``, unlike
:class:`geomopt.optim.KFAC`'s ``P^{-1}(g + wd w)``). ``KFACPreconditioner`` + ``torch.optim.SGD(lr)`` takes
the steps of ``KFAC(lr, momentum=0, kl_clip=None)`` (equal up to the rounding of the last addition;
tests/optim/test_precond.py), and ``PathPreconditioner`` + SGD those of ``PathSGD``.

The Kronecker preconditioners record the batches of every forward/backward since their last
:meth:`Preconditioner.step` (the optimizers drop discarded ones in ``zero_grad``; here call
:meth:`Preconditioner.discard` when gradients are thrown away without a step).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from geomopt.checks import check_number
from geomopt.optim.geometry import Geometry
from geomopt.optim.kfac import DEFAULT_DAMPING
from geomopt.optim.kronecker_geometry import EigenKroneckerGeometry, KroneckerGeometry
from geomopt.optim.path_geometry import PathGeometry
from geomopt.optim.step_rule import block_steps, check_gradients, kl_clip_factor


class Preconditioner:
    """Any :class:`Geometry` in front of a torch optimizer: :meth:`step` turns gradients into directions.

    Args:
        geometry: the geometry (its :attr:`Geometry.params` are the parameters preconditioned).
        options: the geometry's per-group options (e.g. ``damping``, ``eps``), one group for all parameters.
        kl_clip, lr: optional KL clip bound and the learning rate it assumes (both or neither).
    """

    def __init__(self, geometry: Geometry, options: dict[str, Any] | None = None, *, kl_clip: float | None = None,
                 lr: float | None = None):
        where = f"{type(self).__name__}: option"
        if (kl_clip is None) != (lr is None):
            raise ValueError(f"{where} kl_clip needs lr (the learning rate of the optimizer behind it), and lr is "
                             f"only used by kl_clip; got kl_clip={kl_clip!r}, lr={lr!r}")
        if kl_clip is not None:
            check_number(where, "kl_clip", kl_clip, low=0, low_open=True)
            check_number(where, "lr", lr, low=0, low_open=True)
        self.geometry, self.kl_clip, self.lr = geometry, kl_clip, lr
        self.group: dict[str, Any] = {"params": list(geometry.params), "weight_decay": 0.0, **(options or {})}
        self.steps = 0
        geometry.arm(0)

    @torch.no_grad()
    def step(self) -> None:
        """Replace the gradients by the geometry's directions (call after ``backward``, before ``opt.step()``).

        Raises:
            FloatingPointError: a NaN/inf gradient, statistic or direction (naming it); no gradient changed.
        """
        geo = self.geometry
        check_gradients(type(self).__name__, [self.group], geo.names)
        try:
            geo.update(self.steps, [self.group])
            steps, _ = block_steps(geo, {p: self.group for p in self.group["params"]})
        finally:
            geo.end_step()
        nu = 1.0
        if self.kl_clip is not None and steps:
            nu = kl_clip_factor([s.direction for s in steps], [s.grad for s in steps], [self.lr] * len(steps),
                                self.kl_clip)
        for s in steps:
            d = s.direction * nu if nu != 1.0 else s.direction
            for p, part in zip(s.block.params, s.block.from_matrix(d)):
                p.grad.copy_(part)
        self.steps += 1
        geo.arm(self.steps)

    def discard(self) -> None:
        """Forget the batches recorded since the last step (their gradients were thrown away)."""
        recorder = getattr(self.geometry, "recorder", None)
        if recorder is not None:
            recorder.drop_backpropagated()

    def remove_hooks(self) -> None:
        """Detach the geometry's hooks from the model."""
        self.geometry.remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        """The step count, the group's options and the geometry's statistics."""
        options = {k: v for k, v in self.group.items() if k != "params"}
        return {"steps": self.steps, "options": options, "geometry": self.geometry.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict["steps"])
        self.group.update(state_dict.get("options", {}))
        self.geometry.load_state_dict(state_dict["geometry"])
        self.geometry.arm(self.steps)


def _params(model: nn.Module, params: Iterable[Tensor] | None) -> list[Tensor]:
    return list(model.parameters()) if params is None else list(params)


class KFACPreconditioner(Preconditioner):
    """K-FAC's geometry (:class:`KroneckerGeometry`) as a preconditioner; options as in :class:`geomopt.optim.KFAC`
    (``params``: the parameters to precondition, default all of the model's)."""

    _geometry: type[KroneckerGeometry] = KroneckerGeometry

    def __init__(self, model: nn.Module, damping: float = DEFAULT_DAMPING, factor_decay: float = 0.95,
                 update_freq: int = 10, inv_freq: int = 100, fisher: str = "empirical",
                 likelihood: str = "categorical", mc_samples: int = 1, seed: int | None = None,
                 kl_clip: float | None = None, lr: float | None = None, params: Iterable[Tensor] | None = None,
                 process_group: dist.ProcessGroup | None = None, **geometry_options: Any):
        name = type(self).__name__
        check_number(f"{name}: option", "damping", damping, low=0, low_open=True)
        geometry = self._geometry(model, _params(model, params), factor_decay=factor_decay, update_freq=update_freq,
                                  inv_freq=inv_freq, fisher=fisher, likelihood=likelihood, mc_samples=mc_samples,
                                  seed=seed, process_group=process_group, name=name, stacklevel=3, **geometry_options)
        super().__init__(geometry, {"damping": float(damping)}, kl_clip=kl_clip, lr=lr)


class EKFACPreconditioner(KFACPreconditioner):
    """EKFAC's geometry (:class:`EigenKroneckerGeometry`) as a preconditioner; options as in
    :class:`geomopt.optim.EKFAC` (``diag_freq``, ``diag_decay`` too)."""

    _geometry = EigenKroneckerGeometry


class PathPreconditioner(Preconditioner):
    """The path-norm geometry (:class:`PathGeometry`) as a preconditioner: ``g <- g / max(gamma, eps)`` with the
    scales of the current weights; options as in :class:`geomopt.optim.PathSGD` (its ``normalize="first-step"``
    is a learning-rate factor: scale the optimizer's lr instead)."""

    def __init__(self, model: nn.Module, eps: float = 1e-12, p: float = 2.0, input_shape=None,
                 seq_len: int | None = None, include_kappa2: bool = False, params: Iterable[Tensor] | None = None):
        check_number("PathPreconditioner: option", "eps", eps, low=0, low_open=True)
        geometry = PathGeometry(model, _params(model, params), p=p, input_shape=input_shape, seq_len=seq_len,
                                include_kappa2=include_kappa2)
        super().__init__(geometry, {"eps": float(eps)})


__all__ = ["Preconditioner", "KFACPreconditioner", "EKFACPreconditioner", "PathPreconditioner"]
