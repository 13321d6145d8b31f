"""Picklable sweep jobs for the tests: tiny, and able to fail, die, hang or interrupt the driver on cue."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _count(log: str | None, name: str) -> None:
    """One file per execution in ``log`` (a folder the test reads): which trials ran, how often."""
    if log is not None:
        Path(log, f"{name}.{os.getpid()}.{time.monotonic_ns()}").touch()


@dataclass(frozen=True)
class Square:
    """Writes ``x.txt`` into its work folder; returns x^2 and where it ran."""

    x: int
    log: str | None = None

    def __call__(self, workdir: Path) -> dict:
        _count(self.log, f"square{self.x}")
        (workdir / "x.txt").write_text(str(self.x))
        (workdir / "sub").mkdir()
        (workdir / "sub" / "y.txt").write_text(str(self.x * self.x))
        return {"x": self.x, "square": self.x * self.x, "pid": os.getpid(), "cwd": os.getcwd(),
                "workdir": str(workdir)}


@dataclass(frozen=True)
class DieOnce:
    """Kills its own worker process (SIGKILL) on the first attempt (keyed on a marker file)."""

    marker: str

    def __call__(self, workdir: Path) -> dict:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return {"survived": True}


@dataclass(frozen=True)
class Boom:
    """Always raises."""

    def __call__(self, workdir: Path) -> dict:
        raise ValueError("boom: this job always fails")


@dataclass(frozen=True)
class Hang:
    def __call__(self, workdir: Path) -> dict:
        time.sleep(120)
        return {}


@dataclass(frozen=True)
class InterruptOnce:
    """First attempt: waits until the ``others`` are stored by the driver, sends it SIGINT (Ctrl-C), then
    hangs; later attempts return at once."""

    driver: int
    marker: str
    others: tuple[str, ...]
    log: str | None = None

    def __call__(self, workdir: Path) -> dict:
        _count(self.log, "interrupt")
        if os.path.exists(self.marker):
            return {"interrupted_before": True}
        Path(self.marker).touch()
        deadline = time.monotonic() + 60
        while not all(os.path.exists(p) for p in self.others) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(self.driver, signal.SIGINT)
        time.sleep(120)
        return {}


@dataclass(frozen=True)
class TrainDieOnce:
    """First attempt: trains ``config`` for ``steps`` steps (checkpoints included), then kills its worker;
    the next attempt trains it to the end in the same work folder (resumed.txt: whether a checkpoint was there)."""

    config: Any
    marker: str
    steps: int

    def __call__(self, workdir: Path) -> dict:
        from geomopt.sweep import TrainJob
        from geomopt.train import train
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            try:
                train(self.config, workdir, progress=False, stop_after_steps=self.steps)
            except KeyboardInterrupt:  # how stop_after_steps stops a run
                pass
            os.kill(os.getpid(), signal.SIGKILL)
        resumed = (workdir / "checkpoint.pt").is_file()
        summary = TrainJob(self.config)(workdir)
        (workdir / "resumed.txt").write_text(str(resumed))
        return summary


@dataclass(frozen=True)
class HangOnce:
    """First attempt: writes its pid to ``pidfile`` once the ``others`` are stored, then hangs; later
    attempts return at once."""

    pidfile: str
    others: tuple[str, ...]

    def __call__(self, workdir: Path) -> dict:
        if os.path.exists(self.pidfile):
            return {"hung_before": True}
        deadline = time.monotonic() + 60
        while not all(os.path.exists(p) for p in self.others) and time.monotonic() < deadline:
            time.sleep(0.05)
        Path(self.pidfile).write_text(str(os.getpid()))
        time.sleep(120)
        return {}
