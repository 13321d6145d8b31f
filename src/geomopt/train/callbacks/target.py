"""Stopping at a target training loss: a run ends after the first epoch whose training loss (evaluated on
the evaluation copy of the training set) is at most the target, e.g. to compare optimizers by the steps
or time they need (``summary["reached_target"]`` says whether it was reached)."""

from __future__ import annotations

from typing import Any

from geomopt.checks import check_number
from geomopt.train.callbacks.base import Callback, TrainState
from geomopt.train.callbacks.metrics import stored_epochs


class TargetLoss(Callback):
    """Sets ``state.should_stop`` at the end of the first epoch whose ``train_loss`` is ``<= target``; a run
    resumed after reaching it trains no further. Adds ``"reached_target"`` to the summary."""

    def __init__(self, target: float):
        self.target = check_number("TargetLoss", "target", target, allow_inf=True)

    def reached(self, record: dict[str, Any] | None) -> bool:
        return record is not None and record["train_loss"] <= self.target

    def on_train_start(self, state: TrainState) -> None:
        if state.resumed and state.batch == 0 and state.epoch > 0:
            done = [r for r in stored_epochs(state) if r["epoch"] == state.epoch]
            state.should_stop = bool(done) and self.reached(done[-1])

    def on_epoch_end(self, state: TrainState) -> None:
        state.should_stop = state.should_stop or self.reached(state.record)

    def on_train_end(self, state: TrainState) -> None:
        state.summary["reached_target"] = self.reached(state.record)
