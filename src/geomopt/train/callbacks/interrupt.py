"""A simulated Ctrl-C, for tests of interruption and exact resume."""

from __future__ import annotations

from geomopt.checks import check_int
from geomopt.train.callbacks.base import Callback, TrainState


class InterruptAfter(Callback):
    """Raises ``KeyboardInterrupt`` (as Ctrl-C would) once ``steps`` global steps are done, after that
    step's own callbacks (a checkpoint due at that step is written)."""

    def __init__(self, steps: int):
        self.steps = check_int("InterruptAfter", "steps", steps, low=0)

    def on_step_end(self, state: TrainState) -> None:
        if state.step >= self.steps:
            raise KeyboardInterrupt
