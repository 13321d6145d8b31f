"""TensorBoard logging of a run (``--log tensorboard``): the records of ``metrics.jsonl`` as scalars.

:class:`TensorBoardLog` is a :func:`geomopt.train.fit` callback beside the metrics log: every
record ``fit`` writes to ``metrics.jsonl`` also becomes scalars in ``OUT/tensorboard`` (event files of
``torch.utils.tensorboard.SummaryWriter``), tagged ``KIND/KEY`` at the record's global step:
``step/loss``, ``step/lr`` every optimizer step; ``epoch/train_loss``, ``epoch/train_acc``,
``epoch/test_loss``, ``epoch/test_acc`` (``epoch/val_*``, ``epoch/time``) every epoch; the step
callback's values (``callback/sharpness`` with ``--track-sharpness``). The run's config is logged as
text (tag ``config``). A resumed run purges the events written after its checkpoint, as
``metrics.jsonl`` drops those records. ``tensorboard --logdir runs`` shows every run below ``runs``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from geomopt.train.callbacks.base import Callback, TrainState

FOLDER = "tensorboard"
SKIPPED = ("kind", "step", "epoch")  # the record's position, not a quantity


class TensorBoardLog(Callback):
    """Writes ``fit``'s metric records and ``config`` (a JSON-able dict) to ``OUT/tensorboard`` (main
    process only); flushed with every checkpoint.

    Raises ImportError (one line, naming the extra to install) when tensorboard is missing.
    """

    def __init__(self, config: dict[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--log tensorboard needs the tensorboard package: pip install 'geomopt[tensorboard]' "
                              "(or pip install tensorboard)") from None
        self._writer_class, self.config, self.writer = SummaryWriter, config, None

    def setup(self, state: TrainState) -> None:
        """Start writing at global step ``state.step`` (0 for a fresh run; a resumed run's checkpoint step)."""
        if not state.is_main:
            return
        step = state.step
        self.writer = self._writer_class(str(state.out_dir / FOLDER), purge_step=step + 1 if step else None)
        text = json.dumps(self.config, indent=2, sort_keys=True)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), step)

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if (key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value)):  # NaN accuracy of a regression task: not a point
                self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def on_save_checkpoint(self, state: TrainState, checkpoint: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.flush()

    def teardown(self, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
