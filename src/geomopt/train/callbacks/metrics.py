"""The metrics log ``out_dir/metrics.jsonl``: one JSON object per line, for every record of the run.

A fresh run starts the file empty; a resumed run drops the records written after its checkpoint
(they are written again, with the same numbers), so the file of an interrupted and resumed run equals
that of an uninterrupted one except for wall-clock times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from geomopt.train.callbacks.base import Callback, TrainState

METRICS = "metrics.jsonl"


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``out_dir/metrics.jsonl``."""
    path = Path(out_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stored_epochs(state: TrainState) -> list[dict[str, Any]]:
    """The epoch records of the run's metrics file, as the main process reads them (every process)."""
    return state.from_main(lambda: [r for r in read_metrics(state.out_dir) if r["kind"] == "epoch"])


def truncate_metrics(path: Path, step: int, epoch: int) -> None:
    """Drop the records written after the checkpoint at (``step``, ``epoch``)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["kind"] == "epoch":
            if rec["epoch"] <= epoch:
                kept.append(line)
        elif rec.get("step", 0) <= step:  # "step" records and callbacks' records
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


class MetricsLog(Callback):
    """Writes every logged record as a line of ``out_dir/metrics.jsonl`` (main process only); the file
    is flushed before every checkpoint, so it holds at least every record up to the checkpoint."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None

    def setup(self, state: TrainState) -> None:
        if not state.is_main:
            return
        path = state.out_dir / METRICS
        if state.resumed:
            truncate_metrics(path, state.step, state.epoch)
        else:  # a fresh run: nothing of an earlier run in this directory may be read as this one's
            path.write_text("")
        self.file = path.open("a")

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")

    def on_save_checkpoint(self, state: TrainState, checkpoint: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.flush()

    def teardown(self, state: TrainState) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
