"""The progress bar (tqdm, main process only): steps done of ``epochs * steps per epoch``, with the epoch
and the last batch loss."""

from __future__ import annotations

from tqdm.auto import tqdm

from geomopt.train.callbacks.base import Callback, TrainState


class ProgressBar(Callback):
    """A tqdm bar over the run's steps (a resumed run starts at its checkpoint's step); ``enabled=False``
    or a process other than the main one shows nothing."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar = enabled, None

    def on_train_start(self, state: TrainState) -> None:
        self.bar = tqdm(total=state.epochs * len(state.train_loader), initial=state.step, leave=False,
                        disable=not (self.enabled and state.is_main), desc=state.out_dir.name, dynamic_ncols=True)

    def on_step_end(self, state: TrainState) -> None:
        self.bar.update(1)
        self.bar.set_postfix(epoch=state.epoch + 1, loss=f"{state.loss_value:.4f}", refresh=False)

    def teardown(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
