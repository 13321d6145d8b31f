"""Checkpoints that resume exactly: ``out_dir/checkpoint.pt``, written atomically.

A checkpoint holds the model, the optimizer, the global RNG state (and CUDA's), the position (epoch,
batch in the epoch, step), the training time so far, ``extra`` (e.g. the run's config) and what every
callback adds in ``on_save_checkpoint`` (the scheduler's state under ``"scheduler"``, a step
function's under ``"callback"``). The data order is a pure function of (seed, epoch) through
``sampler.set_epoch``, so a run resumed from it (:func:`restore`) ends with exactly the numbers of an
uninterrupted one. A model with a NaN/inf parameter is never saved: the last good checkpoint stays.
"""

from __future__ import annotations

from typing import Any

import torch

from geomopt.checks import check_int
from geomopt.train.callbacks.base import Callback, TrainState
from geomopt.train.callbacks.divergence import NonFiniteLossError
from geomopt.train.checkpoint import load_checkpoint, load_model_state, save_checkpoint

class Checkpoint(Callback):
    """Saves ``out_dir/checkpoint.pt`` after every epoch and, with ``every > 0``, every ``every`` steps
    (inside an epoch; its last step is the epoch's checkpoint). Place it after the callbacks whose
    state it stores, so that they have updated it.

    Args:
        every: steps between two checkpoints inside an epoch (0: at epoch ends only).
        extra: stored as ``checkpoint["extra"]`` (e.g. the config).

    Raises (at a checkpoint): :class:`NonFiniteLossError` when a parameter is NaN/inf; ValueError when
    a callback stores a key the checkpoint already holds.
    """

    def __init__(self, every: int = 0, extra: dict[str, Any] | None = None):
        self.every, self.extra = check_int("Checkpoint", "every", every, low=0), extra or {}

    def setup(self, state: TrainState) -> None:
        if not state.resumed and state.is_main:  # a fresh run: an earlier run's checkpoint must not be resumed
            state.checkpoint_path.unlink(missing_ok=True)

    def on_step_end(self, state: TrainState) -> None:
        if self.every and state.step % self.every == 0 and state.batch < len(state.train_loader):
            self.save(state)

    def on_epoch_end(self, state: TrainState) -> None:
        self.save(state)

    def save(self, state: TrainState) -> None:
        """Write the checkpoint of ``state``'s position (main process; every process checks the parameters)."""
        if not all(bool(torch.isfinite(p).all()) for p in state.model.parameters()):
            raise NonFiniteLossError(f"a parameter became NaN/inf at step {state.step} (epoch {state.epoch}); "
                                     f"{state.kept()}; lower the learning rate")
        checkpoint = {
            "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "epoch": state.epoch, "batch": state.batch, "step": state.step, "elapsed": state.seconds(),
            "extra": self.extra,
        }
        for callback in state.callbacks:
            own: dict[str, Any] = {}
            callback.on_save_checkpoint(state, own)
            if clash := sorted(own.keys() & checkpoint.keys()):
                raise ValueError(f"fit: callback {type(callback).__name__} stores {clash} in the checkpoint, which "
                                 "another part of it already holds; store its state under a key of its own")
            checkpoint.update(own)
        if state.is_main:
            save_checkpoint(state.checkpoint_path, checkpoint)


def restore(state: TrainState) -> None:
    """Continue the run of ``state.out_dir/checkpoint.pt``: the model, the optimizer, the RNG states and
    the position; every callback's ``on_load_checkpoint`` gets the checkpoint. Sets ``state.resumed``.

    Raises:
        FileNotFoundError, ValueError: no checkpoint, a damaged one, or one of another model or optimizer.
    """
    path = state.checkpoint_path
    location = state.device if state.data_parallel is None else "cpu"
    checkpoint = state.from_main(lambda: load_checkpoint(path, map_location=location))
    load_model_state(state.model, checkpoint["model"], path)
    try:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: the optimizer state does not fit this run's optimizer ({exc}); "
                         "train again with --overwrite") from None
    torch.set_rng_state(checkpoint["rng"])
    if torch.cuda.is_available() and checkpoint.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    state.epoch, state.batch, state.step = checkpoint["epoch"], checkpoint["batch"], checkpoint["step"]
    state.elapsed, state.resumed = checkpoint["elapsed"], True
    state.call("on_load_checkpoint", checkpoint)
