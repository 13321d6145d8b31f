"""Learning-rate schedule stepping: ``scheduler.step()`` after every optimizer step, its state checkpointed."""

from __future__ import annotations

from typing import Any

import torch

from geomopt.train.callbacks.base import Callback, TrainState


class LRSchedule(Callback):
    """Steps a ``torch.optim.lr_scheduler.LRScheduler`` once per optimizer step (the step's record logs
    the rate the step used) and stores its state in the checkpoint under ``"scheduler"``."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler):
        self.scheduler = scheduler

    def on_step_end(self, state: TrainState) -> None:
        self.scheduler.step()

    def on_save_checkpoint(self, state: TrainState, checkpoint: dict[str, Any]) -> None:
        checkpoint["scheduler"] = self.scheduler.state_dict()

    def on_load_checkpoint(self, state: TrainState, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("scheduler") is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
