"""The callback protocol of :func:`geomopt.train.fit` and the state its hooks see.

The hooks follow PyTorch Lightning's names (``setup``, ``on_train_start``, ``on_before_backward``,
``on_after_backward``, ``on_train_batch_end`` there / ``on_step_end`` here, ``on_train_epoch_end`` /
``on_epoch_end``, ``on_save_checkpoint``, ``on_load_checkpoint``, ``on_train_end``, ``teardown``) and
Keras's way of stopping early (``model.stop_training = True``; here ``state.should_stop = True``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from geomopt.train import distributed

#: the checkpoint's file name inside ``out_dir``
CHECKPOINT = "checkpoint.pt"


class Callback:
    """One concern of training (logging, checkpointing, a guard, a measurement) with a few named hooks.

    Subclass it and override the hooks you need; every hook gets the :class:`TrainState` ``state``
    (the model, the optimizer, the position, the last loss and epoch record) and may read or change it.
    :func:`geomopt.train.fit` calls them, for the callbacks in their order, at these moments:

    - ``setup(state)``: once, before anything is evaluated, after a checkpoint was restored
      (``state.resumed``); prepare here (open files, wrap the model).
    - ``on_train_start(state)``: once, before the first step; on a fresh run ``state.record`` is the
      epoch-0 record (the untrained model), on a resumed one it is None.
    - ``on_before_backward(state)`` / ``on_after_backward(state)``: around ``state.loss.backward()``
      in every evaluation of the optimizer's closure (``state.inputs``, ``state.targets``: the batch;
      ``state.loss``: its loss tensor, ``state.loss_value``: its value; several times per step for
      L-BFGS-like optimizers).
    - ``on_step_end(state)``: after every optimizer step (``state.step`` counts them from 1;
      ``state.loss_value``, ``state.lr``: the step's loss and learning rate).
    - ``on_epoch_end(state)``: after every epoch, once ``state.record`` holds its evaluation.
    - ``on_log(state, record)``: every record logged (``state.log``): steps, epochs, callbacks' own.
    - ``on_save_checkpoint(state, checkpoint)``: add this callback's state to the dict ``checkpoint``
      (new keys only) just before it is written; ``on_load_checkpoint(state, checkpoint)`` gets the whole
      stored dict back when a run resumes, before ``setup``.
    - ``on_train_end(state)``: after the last epoch, when training ended normally; ``state.summary``
      (the dict ``fit`` returns) may be extended here.
    - ``teardown(state)``: always last, also after an error or Ctrl-C: release what ``setup`` took.

    ``state.should_stop = True`` (in ``on_train_start``, ``on_step_end`` or ``on_epoch_end``) ends
    training early: after the current step the epoch is cut short, evaluated and checkpointed as usual.
    Raising an exception stops the run at once (the last checkpoint is kept). ``should_stop`` is not
    checkpointed: a resumed run's callbacks decide again (:class:`TargetLoss` does in ``on_train_start``).
    """

    def setup(self, state: TrainState) -> None:
        """Before anything is evaluated (after a resumed checkpoint was loaded)."""

    def on_train_start(self, state: TrainState) -> None:
        """Before the first step (after the epoch-0 evaluation of a fresh run)."""

    def on_before_backward(self, state: TrainState) -> None:
        """The batch's loss ``state.loss`` is computed; its gradient is not."""

    def on_after_backward(self, state: TrainState) -> None:
        """The gradients of ``state.loss`` are in the parameters' ``.grad``; the step is not taken."""

    def on_step_end(self, state: TrainState) -> None:
        """After optimizer step ``state.step``."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After epoch ``state.epoch``, evaluated in ``state.record``."""

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        """A record was logged."""

    def on_save_checkpoint(self, state: TrainState, checkpoint: dict[str, Any]) -> None:
        """Add this callback's state to ``checkpoint`` (keys of its own)."""

    def on_load_checkpoint(self, state: TrainState, checkpoint: dict[str, Any]) -> None:
        """Restore this callback's state from a resumed run's ``checkpoint``."""

    def on_train_end(self, state: TrainState) -> None:
        """Training ended normally; ``state.summary`` is what ``fit`` returns."""

    def teardown(self, state: TrainState) -> None:
        """Always called last, also after an error or Ctrl-C."""


@dataclass(eq=False)
class TrainState:
    """Everything a :class:`Callback` sees and may change during :func:`geomopt.train.fit`.

    The position (``epoch`` finished epochs, ``batch`` batches done in the current epoch, ``step``
    optimizer steps in all) is what a checkpoint stores; ``elapsed`` is the training time of earlier
    sessions of a resumed run. ``replica`` is the module the loss is computed with (the model itself,
    or its ``DistributedDataParallel`` wrapper); ``data_parallel`` the process's place in a data-parallel
    run (None: one process), where only the main process (``is_main``) writes files.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    eval_train_loader: DataLoader
    test_loader: DataLoader
    val_loader: DataLoader | None
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    metric: Callable[[Tensor, Tensor], Tensor] | None
    device: torch.device | str
    out_dir: Path
    epochs: int
    callbacks: list[Callback]
    data_parallel: distributed.DataParallel | None = None
    replica: nn.Module | None = None
    epoch: int = 0
    batch: int = 0
    step: int = 0
    elapsed: float = 0.0
    resumed: bool = False
    inputs: Tensor | None = None
    targets: Tensor | None = None
    loss: Tensor | None = None
    loss_value: float = float("nan")
    lr: float = float("nan")
    non_finite_ranks: list[int] = field(default_factory=list)
    record: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    should_stop: bool = False
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.replica is None:
            self.replica = self.model

    @property
    def is_main(self) -> bool:
        """This process writes the files (always true in one process)."""
        return self.data_parallel is None or self.data_parallel.is_main

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def seconds(self) -> float:
        """Training time so far, over all sessions of the run."""
        return self.elapsed + time.perf_counter() - self.started

    def call(self, hook: str, *args: Any) -> None:
        """Call hook ``hook`` of every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def log(self, record: dict[str, Any]) -> None:
        """Log ``record`` (a JSON-able dict with ``"kind"`` and ``"step"``) through every callback's ``on_log``.

        Raises:
            ValueError: ``record`` has no ``"kind"`` or no ``"step"`` (what a resumed run truncates by).
        """
        if not (isinstance(record, dict) and "kind" in record and "step" in record):
            raise ValueError(f"TrainState.log: a record is a dict with a 'kind' and a 'step', got {record!r}")
        self.call("on_log", record)

    def kept(self) -> str:
        """What an error message says about the checkpoint a failed run leaves."""
        if self.checkpoint_path.exists():
            return f"the last good checkpoint {self.checkpoint_path} is kept"
        return "no checkpoint had been written yet"

    def from_main(self, read: Callable[[], Any]) -> Any:
        """``read()`` evaluated on the main process, given to every process (e.g. what a file holds)."""
        return distributed.broadcast_object(read() if self.is_main else None, self.data_parallel)
