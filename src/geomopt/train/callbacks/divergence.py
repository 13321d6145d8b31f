"""The divergence guard: a NaN/inf loss, or a training loss far above its value before training, stops
the run with :class:`NonFiniteLossError` (``geomopt train`` exits with status 3; a sweep records the
run as diverged), before the bad step is taken or the bad epoch is checkpointed."""

from __future__ import annotations

import math

from geomopt.checks import check_number
from geomopt.train.callbacks.base import Callback, TrainState
from geomopt.train.callbacks.metrics import stored_epochs


class NonFiniteLossError(FloatingPointError):
    """The loss (or a parameter) became NaN or infinite; training stopped."""


class DivergedError(NonFiniteLossError):
    """The training loss rose above ``divergence_factor`` times its value before training; training stopped."""


class DivergenceGuard(Callback):
    """Stops the run when the batch loss is NaN/inf (before its backward pass: every process of a
    data-parallel run stops, the message names the ranks) or when an epoch's training loss exceeds
    ``factor`` times the loss of the untrained model (epoch 0's record; :class:`DivergedError`).

    Args:
        factor: the divergence factor (> 0); None: only NaN/inf stop the run.
    """

    def __init__(self, factor: float | None = 10.0):
        self.factor = factor if factor is None else check_number("DivergenceGuard", "factor", factor, low=0,
                                                                 low_open=True)
        self.initial: float | None = None

    def on_train_start(self, state: TrainState) -> None:
        if state.record is not None:
            self.initial = state.record["train_loss"]
        else:  # resumed: epoch 0's record, from the main process's metrics
            self.initial = next((r["train_loss"] for r in stored_epochs(state)), None)

    def on_before_backward(self, state: TrainState) -> None:
        if not math.isfinite(state.loss_value):
            ranks = state.non_finite_ranks
            where = f" on rank(s) {ranks} of {state.data_parallel.world}" if ranks else ""
            raise NonFiniteLossError(
                f"the loss became {state.loss_value}{where} at step {state.step + 1} (epoch {state.epoch + 1}); "
                f"the run stopped; {state.kept()}; lower the learning rate or clip gradients")

    def on_epoch_end(self, state: TrainState) -> None:
        loss = state.record["train_loss"]
        if self.factor is not None and self.initial is not None and loss > self.factor * max(self.initial, 1e-12):
            raise DivergedError(f"diverged: the training loss rose from {self.initial:.4g} before training to "
                                f"{loss:.4g} after epoch {state.record['epoch']} (more than {self.factor:g}x); the "
                                f"run stopped; {state.kept()}; lower the learning rate (K-FAC/EKFAC: raise "
                                "--damping or set --kl-clip)")
