r"""The geometry half of an optimizer: a norm on parameter space and its steepest-descent direction.

An optimizer of this package is a *geometry* plus a *step rule* (:mod:`geomopt.optim.step_rule`), the
separation of kfac-jax (curvature estimator | damping and step size | optimizer) and of optax
(``chain(precondition, scale_by_lr)``):

- a :class:`Geometry` maps the gradient ``g`` of a block of parameters to the steepest-descent direction
  under its norm, ``d = argmin_d <g, d> + ||d||^2 / 2 = P^{-1} g`` for a norm ``||d||^2 = d^T P d``
  (Euclidean: ``P = I``; path norm: ``P = diag(gamma)``, Path-SGD; Kronecker: ``P = (A + pi sqrt(l) I) (x) (G + sqrt(l)/pi I)``
  per layer, K-FAC; eigen-Kronecker: ``P = (U_A (x) U_G) diag(s + damping) (U_A (x) U_G)^T``, EKFAC; a non-Euclidean
  norm such as the spectral one gives the dual map instead of a linear solve), and owns the statistics
  that define ``P`` (updated by :meth:`Geometry.update` once per step, before any direction);
- the step rule turns directions into parameter changes: learning rate, momentum, weight decay (added
  to the gradient before the geometry: ``d = P^{-1}(g + wd w)``), the KL clip, Levenberg-Marquardt damping
  and the automatic step size.

A geometry works on *blocks*: the parameters whose direction it computes jointly, seen as one matrix
(:class:`Block`). Euclidean and path-norm geometries have one block per tensor (its own view); a
Kronecker geometry one per layer, ``[W | b]`` of shape ``(d_out, d_in + 1)``. The step rule works
elementwise on those matrices and on the blocks' inner products, so any geometry composes with it.

Contract of a geometry (what :class:`geomopt.optim.Preconditioner` and the optimizers call, in order,
each step ``k`` = 0, 1, ...; ``arm(k)`` before the passes of step ``k``, at construction and after each step):

1. ``update(k, groups)``: refresh the statistics that step ``k`` uses (factors, inverses, scales) for the
   param groups ``groups`` (dicts with ``params`` and the geometry's per-group options, e.g. ``damping``);
   may raise ``FloatingPointError`` naming the layer (then no parameter may have changed).
2. ``direction(block, grad, group)`` for each block of :meth:`blocks` that is :meth:`ready` and has
   gradients: the direction ``(same shape as grad)``. A block that is not ready (no statistics yet) takes
   the Euclidean direction, the gradient itself. ``grad`` (possibly a view of ``.grad``) is read only.
3. ``end_step()``: drop what was recorded for this step.

Statistics live in :attr:`Geometry.state`, a ``{parameter: dict}`` mapping: an optimizer composed of a
geometry hands it its own ``Optimizer.state``, so the statistics are saved and restored with
``optimizer.state_dict()`` next to the momentum buffers (checkpoints keep their layout); a geometry used
alone as a preconditioner saves them with its own :meth:`Geometry.state_dict`. Geometries that need
the model's forward and backward passes (K-FAC's layer inputs and output gradients) register hooks at
construction and remove them with :meth:`Geometry.remove_hooks`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor


def _identity_to_matrix(tensors: Sequence[Tensor]) -> Tensor:
    return tensors[0]


def _identity_from_matrix(matrix: Tensor) -> list[Tensor]:
    return [matrix]


@dataclass(frozen=True, eq=False)
class Block:
    """Parameters whose direction a geometry computes jointly, and their matrix view.

    Attributes:
        name: for messages (the layer's or the parameter's name in the model).
        params: the block's parameters; ``params[0]`` keys the block's statistics in the geometry's state.
        to_matrix: tensors shaped like ``params`` (gradients, weights, buffers) -> the block's matrix.
        from_matrix: the inverse: a matrix -> tensors shaped like ``params``.
    """

    name: str
    params: tuple[Tensor, ...]
    to_matrix: Callable[[Sequence[Tensor]], Tensor] = _identity_to_matrix
    from_matrix: Callable[[Tensor], list[Tensor]] = _identity_from_matrix

    @property
    def key(self) -> Tensor:
        """The parameter whose state holds the block's statistics."""
        return self.params[0]


def tensor_blocks(params: Sequence[Tensor], names: dict[Tensor, str] | None = None) -> list[Block]:
    """One block per tensor, viewed as itself (Euclidean, path-norm, per-matrix geometries)."""
    names = names or {}
    return [Block(names.get(p, f"param {i}"), (p,)) for i, p in enumerate(params)]


class Geometry:
    """A norm on parameter space: its steepest-descent direction and the statistics that define it.

    Subclasses override :meth:`direction` (and, where they have statistics, :meth:`update`, :meth:`ready`,
    :meth:`blocks`, :meth:`arm`, :meth:`end_step`, :meth:`extra_state` / :meth:`load_extra_state`,
    :meth:`remove_hooks`). The base class is the Euclidean geometry's contract: blocks are single
    tensors and the direction is the gradient.

    Attributes:
        name: for messages (``"K-FAC"``, ``"PathSGD"``, ...).
        params: the parameters it preconditions, in a fixed order (that of :meth:`state_dict`).
        names: ``{parameter: name}`` for messages (the model's parameter names where known).
        state: ``{parameter: dict}`` of its statistics; an optimizer composed of it replaces this with its
            own ``Optimizer.state`` (:meth:`share_state`).
    """

    name = "geometry"

    def __init__(self, params: Sequence[Tensor], names: dict[Tensor, str] | None = None):
        self.params = list(params)
        self.names = dict(names or {})
        self.state: dict[Tensor, dict[str, Any]] = defaultdict(dict)

    def share_state(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Keep the statistics in ``state`` (an optimizer's ``self.state``) from now on."""
        self.state = state

    def arm(self, step: int) -> None:
        """Prepare what the passes before step ``step`` record (hooks that record only when that step needs
        statistics). Default: nothing."""

    def blocks(self) -> list[Block]:
        """The blocks of :attr:`params` (default: one per tensor)."""
        return tensor_blocks(self.params, self.names)

    def update(self, step: int, groups: Sequence[dict[str, Any]]) -> None:
        """Refresh the statistics that step ``step`` (0, 1, ...) uses, for the param groups ``groups`` (their
        per-group options, e.g. ``damping``); called once per step before any :meth:`direction`. Default:
        none."""

    def ready(self, block: Block) -> bool:
        """Whether the block has the statistics its direction needs (default: always)."""
        return True

    def direction(self, block: Block, grad: Tensor, group: dict[str, Any]) -> Tensor | None:
        """The steepest-descent direction of ``block`` for its gradient matrix ``grad`` (weight decay
        included; possibly a view of ``.grad``: do not modify it) and param group ``group`` (its ``damping`` etc.); ``None`` if the
        block is not :meth:`ready`. Default: ``grad`` itself (Euclidean)."""
        return grad

    def end_step(self) -> None:
        """Drop what was recorded for the step just taken. Default: nothing."""

    def remove_hooks(self) -> None:
        """Detach any hooks from the model. Default: none."""

    def extra_state(self) -> dict[str, Any]:
        """What :meth:`state_dict` saves beyond the per-parameter statistics (step counters, RNG)."""
        return {}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index in params: statistics}, "extra": extra_state()}`` (tensors cloned)."""
        state = {i: {k: v.clone() if isinstance(v, Tensor) else v for k, v in self.state[p].items()}
                 for i, p in enumerate(self.params) if self.state.get(p)}
        return {"state": state, "extra": self.extra_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors moved to each parameter's device, floating ones to its dtype)."""
        for i, stats in state_dict["state"].items():
            p = self.params[int(i)]
            self.state[p] = {k: (v.to(p.device, p.dtype if v.is_floating_point() else v.dtype)
                                 if isinstance(v, Tensor) else v) for k, v in stats.items()}
        self.load_extra_state(state_dict.get("extra", {}))


class Euclidean(Geometry):
    """The Euclidean norm ``||d||_2``: the direction is the gradient (SGD's geometry)."""

    name = "Euclidean"


__all__ = ["Block", "Euclidean", "Geometry", "tensor_blocks"]
