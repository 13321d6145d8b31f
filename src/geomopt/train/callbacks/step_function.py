"""A function of (step, model) as a callback: the way of :class:`~geomopt.train.SharpnessTracker`,
:class:`geomopt.measures.TrajectoryComplexity` and :class:`geomopt.prune.GradualPruner`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from geomopt.train.callbacks.base import Callback, TrainState

StepFn = Callable[[int, nn.Module], "dict[str, Any] | None"]


class StepFunction(Callback):
    """Calls ``fn(step, model)`` before training (step 0, fresh runs) and after every optimizer step; a
    returned dict is logged as ``{"kind": "callback", "step": step, **dict}``. When ``fn`` has
    ``state_dict`` / ``load_state_dict``, its state is checkpointed (under ``key``) and restored on resume.

    Args:
        fn: the step function; None: the subclass's own ``__call__``.
        key: the checkpoint key of its state.
    """

    def __init__(self, fn: StepFn | None = None, key: str = "callback"):
        if fn is not None and not callable(fn):
            raise TypeError(f"StepFunction: fn must be a function of (step, model), got {type(fn).__name__}")
        self.fn: Any = self if fn is None else fn
        self.key = key

    def on_train_start(self, state: TrainState) -> None:
        if not state.resumed:
            self._measure(state)

    def on_step_end(self, state: TrainState) -> None:
        self._measure(state)

    def _measure(self, state: TrainState) -> None:
        record = self.fn(state.step, state.model)
        if record is not None:
            state.log({"kind": "callback", "step": state.step, **record})

    def on_save_checkpoint(self, state: TrainState, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.key] = self.fn.state_dict() if hasattr(self.fn, "state_dict") else None

    def on_load_checkpoint(self, state: TrainState, checkpoint: dict[str, Any]) -> None:
        if hasattr(self.fn, "load_state_dict") and checkpoint.get(self.key) is not None:
            self.fn.load_state_dict(checkpoint[self.key])
