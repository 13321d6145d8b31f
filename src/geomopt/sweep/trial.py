"""One trial of a sweep: what a worker runs (in its own temporary folder) and what the driver stores.

A trial is a picklable *job* (``job(workdir) -> dict``) and the output folder the driver owns. The
worker runs the job in a work folder of its own, never in the output folder, and hands back the
files the job wrote there as bytes; the driver writes them under the output folder atomically, the
job's result file (``summary.json`` by default) last, so that a folder holding it is a finished
trial. Workers therefore need no filesystem shared with the driver. The work folder is a fresh
temporary folder, except on the local backend: there it is ``OUT/.partial``, kept when an attempt
dies or is interrupted, so that the next attempt (or the same sweep run again) resumes a training
run from its last checkpoint; it is removed once the trial is stored.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geomopt.nn.factory import trusted_models
from geomopt.train.checkpoint import atomic_write_bytes, write_json
from geomopt.train.config import TrainConfig, same_config
from geomopt.train.engine import CHECKPOINT, NonFiniteLossError
from geomopt.train.run import CONFIG, train

SUMMARY = "summary.json"
FAILED = "failed.json"
SCRATCH = ".partial"


@dataclass(frozen=True)
class TrainJob:
    """Train one :class:`TrainConfig` with :func:`geomopt.train.train`; with ``measures`` (the options
    of :func:`geomopt.runs.measure_run`), also compute ``measures.json`` on the worker.

    A divergence (:class:`NonFiniteLossError`) is a result (``summary["diverged"]``), not a failure.
    A ``MODULE:FACTORY`` model is imported on the worker: whoever made the job from a file checked that
    the reference is trusted (:func:`geomopt.nn.factory.check_trusted`).
    """

    config: TrainConfig
    measures: dict[str, Any] | None = None
    result_file = SUMMARY

    def __call__(self, workdir: Path) -> dict[str, Any]:
        with trusted_models(self.config.model):
            return self._run(workdir)

    def _run(self, workdir: Path) -> dict[str, Any]:
        # a work folder holding this config (an interrupted attempt) resumes; anything else starts over
        overwrite = not same_config(workdir / CONFIG, self.config)
        try:
            summary = train(self.config, workdir, overwrite=overwrite, progress=False)
        except NonFiniteLossError as exc:
            summary = {"diverged": True, "error": str(exc), "train_loss": float("inf"), "train_acc": 0.0,
                       "test_loss": float("inf"), "test_acc": 0.0}
            write_json(workdir / SUMMARY, summary)
            return summary
        for key in ("out_dir", "skipped"):  # the worker's folder, gone once the trial is stored
            summary.pop(key, None)
        write_json(workdir / SUMMARY, summary)
        if self.measures is not None:
            from geomopt.runs import measure_run
            measure_run(workdir, progress=False, **self.measures)
        return summary

    def done(self, out: Path) -> bool:
        """Finished in ``out`` with this very config (and its measures, when asked for)."""
        if not (out / SUMMARY).is_file() or not same_config(out / CONFIG, self.config):
            return False
        if self.measures is None or json.loads((out / SUMMARY).read_text()).get("diverged"):
            return True
        from geomopt.runs import stored_measures
        return stored_measures(out, self.measures) is not None


def check_targets(trials: list[Trial]) -> None:
    """Refuse, before anything runs, trial folders that hold a different training run (ValueError
    naming what differs)."""
    clashes = []
    for trial in trials:
        stored = trial.out / CONFIG
        if isinstance(trial.job, TrainJob) and stored.is_file() and not same_config(stored, trial.job.config):
            try:
                diff = TrainConfig.load(stored).differences(trial.job.config)
                what = ", ".join(f"{k}: stored {a!r}, planned {b!r}" for k, (a, b) in diff.items())
            except ValueError as exc:
                what = str(exc)
            clashes.append(f"{trial.out} ({what})")
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise ValueError(f"{len(clashes)} run folder(s) hold a different run: {'; '.join(clashes[:3])}{more}. "
                         "Choose another --out, or pass --overwrite to retrain them")


@dataclass(frozen=True)
class Trial:
    """A job and its output folder.

    ``job``: a :class:`TrainConfig` (trained by :class:`TrainJob`) or any picklable callable
    ``job(workdir: Path) -> dict``. It may define ``result_file`` (the file that marks the trial
    finished, default ``summary.json``; the returned dict is written there unless the job wrote it)
    and ``done(out) -> bool`` (default: the result file exists).
    ``inputs``: names of files in ``out`` copied into the worker's folder before the job runs (not
    sent back). ``checkpoint``: send the final ``checkpoint.pt`` back too.
    """

    job: Any
    out: Path
    inputs: tuple[str, ...] = ()
    checkpoint: bool = True
    name: str = field(default="", compare=False)

    def __post_init__(self):
        if isinstance(self.job, TrainConfig):
            object.__setattr__(self, "job", TrainJob(self.job))
        if not callable(self.job):
            raise TypeError(f"sweep trial {self.out}: the job must be a TrainConfig or a callable job(workdir) -> "
                            f"dict, got {type(self.job).__name__}")
        object.__setattr__(self, "out", Path(self.out))
        if not self.name:
            object.__setattr__(self, "name", self.out.name)

    @property
    def scratch(self) -> Path:
        """The work folder of attempts on a worker that shares the driver's filesystem."""
        return self.out / SCRATCH

    @property
    def result_file(self) -> str:
        return getattr(self.job, "result_file", SUMMARY)

    def finished(self) -> dict[str, Any] | None:
        """The stored result when the trial is finished under ``out``, else None."""
        done: Callable[[Path], bool] | None = getattr(self.job, "done", None)
        path = self.out / self.result_file
        ok = done(self.out) if done is not None else path.is_file()
        return json.loads(path.read_text()) if ok and path.is_file() else None

    def payload(self) -> tuple[Any, dict[str, bytes], bool]:
        """What a worker needs: the job, the input files' bytes, whether to send the checkpoint back."""
        missing = [n for n in self.inputs if not (self.out / n).is_file()]
        if missing:
            raise FileNotFoundError(f"sweep trial {self.out}: input file(s) {missing} missing")
        return self.job, {n: (self.out / n).read_bytes() for n in self.inputs}, self.checkpoint


@dataclass
class Output:
    """What a worker sends back: the job's result, its files (relative path -> bytes) and its seconds."""

    result: dict[str, Any]
    files: dict[str, bytes]
    seconds: float


def execute(job: Any, inputs: dict[str, bytes], checkpoint: bool, threads: int = 1,
            scratch: str | None = None) -> Output:
    """Run ``job`` in a work folder and collect what it wrote there: ``scratch`` (kept if the job
    raises or the process dies; removed after a success) or else a fresh temporary folder.

    Trials use ``threads`` torch threads (1 by default, so that the numbers do not depend on how
    many trials run side by side).
    """
    start, old = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        if scratch is None:
            with tempfile.TemporaryDirectory(prefix="geomopt-trial-") as tmp:
                result, files = _run(job, Path(tmp), inputs, checkpoint)
        else:
            result, files = _run(job, Path(scratch), inputs, checkpoint)
            shutil.rmtree(scratch)
    finally:
        torch.set_num_threads(old)
    return Output(result, files, time.perf_counter() - start)


def _run(job: Any, work: Path, inputs: dict[str, bytes], checkpoint: bool) -> tuple[dict[str, Any], dict[str, bytes]]:
    work.mkdir(parents=True, exist_ok=True)
    for name, data in inputs.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    result = job(work)
    if not isinstance(result, dict):
        raise TypeError(f"sweep job {job!r} returned {type(result).__name__}; a job returns a dict")
    files = {}
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work).as_posix()
        if path.is_file() and rel not in inputs and (checkpoint or rel != CHECKPOINT):
            files[rel] = path.read_bytes()
    return result, files


def store(trial: Trial, output: Output) -> dict[str, Any]:
    """Write a worker's files under ``trial.out`` atomically, the result file last; return the result."""
    out, marker = trial.out, trial.result_file
    out.mkdir(parents=True, exist_ok=True)
    for stale in (marker, FAILED):
        (out / stale).unlink(missing_ok=True)
    if isinstance(trial.job, TrainJob) and not trial.checkpoint:
        (out / CHECKPOINT).unlink(missing_ok=True)  # a checkpoint of an earlier run would not match this one
    files = dict(output.files)
    last = files.pop(marker, None)
    if last is None:
        last = (json.dumps(output.result, indent=2, sort_keys=True) + "\n").encode()
    for rel in sorted(files, key=lambda r: (r != CHECKPOINT, r)):  # the checkpoint before what is derived from it
        _check_inside(out, rel)
        atomic_write_bytes(out / rel, lambda f, data=files[rel]: f.write(data))
    atomic_write_bytes(out / marker, lambda f: f.write(last))
    return json.loads(last)


def _check_inside(out: Path, rel: str) -> None:
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise ValueError(f"sweep trial {out}: a worker sent back the file {rel!r}, outside the trial folder")


def record_failure(trial: Trial, errors: list[str], backend: str) -> None:
    """Write ``failed.json`` (every attempt's error) into the trial folder; a later sweep retries it."""
    write_json(trial.out / FAILED, {"trial": trial.name, "attempts": len(errors), "errors": errors,
                                    "backend": backend, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    shutil.rmtree(trial.scratch, ignore_errors=True)  # the next sweep starts it over


