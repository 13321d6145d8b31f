"""The sweep loop: skip finished trials, hand the rest to a backend, retry, time out, store, report.

Both backends (:mod:`geomopt.sweep.local`, :mod:`geomopt.sweep.ray_backend`) run *attempts*; this
loop owns everything else, so they behave alike: an attempt that raises or whose worker dies is
retried up to ``max_retries`` times, then the trial is recorded as failed (``failed.json`` with
every attempt's error) and the sweep goes on; an attempt past ``trial_timeout`` seconds is killed
and the trial recorded as failed (a timeout is not retried). Results are stored as they arrive, so
an interrupted sweep (Ctrl-C, a killed driver) keeps every finished trial, and the same sweep run
again reruns only the others.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from geomopt.sweep.local import LocalBackend
from geomopt.sweep.trial import Trial, check_targets, record_failure, store
from geomopt.train.config import TrainConfig

BACKENDS = ("local", "ray")


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class TrialResult:
    """``status``: "done" (run now), "skipped" (finished before) or "failed"; ``result``: the stored
    result file (a run's summary); ``errors``: one per failed attempt."""

    trial: Trial
    status: str
    result: dict[str, Any] | None
    errors: list[str]
    seconds: float = 0.0


class SweepError(RuntimeError):
    """Some trials failed after all their retries (the others are stored)."""

    def __init__(self, failed: list[TrialResult]):
        self.failed = failed
        lines = [f"{r.trial.out}: {r.errors[-1].strip().splitlines()[-1] if r.errors else '?'}" for r in failed[:5]]
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        super().__init__(f"{len(failed)} trial(s) failed after their retries; errors in each folder's failed.json:\n  "
                         + "\n  ".join(lines) + more)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep, once its workers are stopped; the message says what is kept."""


def make_backend(backend: str = "local", *, workers: int | None = None, address: str | None = None,
                 cpus_per_trial: float = 1, gpus_per_trial: float = 0):
    """A backend by name; raises (before anything is written) when Ray is asked for but missing.
    ``workers``: local worker processes, or the CPUs of a local Ray instance started for the sweep."""
    if backend == "local":
        if gpus_per_trial:
            raise ValueError("--gpus-per-trial needs --backend ray (the local pool does not place trials on GPUs; "
                             "set the config's device instead)")
        if address:
            raise ValueError("--address needs --backend ray")
        return LocalBackend(workers or default_jobs(), threads=max(1, int(cpus_per_trial)))
    if backend == "ray":
        from geomopt.sweep.ray_backend import RayBackend
        return RayBackend(address, cpus_per_trial, gpus_per_trial, num_cpus=workers)
    raise ValueError(f"unknown sweep backend {backend!r}; choose one of {BACKENDS}")


_DEFAULTS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("sweep_defaults", default={})


@contextlib.contextmanager
def sweep_options(**options: Any) -> Iterator[None]:
    """Defaults for every :func:`run_sweep` / :func:`run_all` inside the block (how the CLI hands
    ``--backend``, ``--address``, ``--max-retries``... to the experiments, which call :func:`run_all`)."""
    token = _DEFAULTS.set({**_DEFAULTS.get(), **{k: v for k, v in options.items() if v is not None}})
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def _prepare(trials: Sequence[Trial], backend: Any, workers: int | None, max_retries: int | None,
             trial_timeout: float | None, overwrite: bool, backend_options: dict[str, Any]) -> tuple[Any, int, float | None]:
    """:func:`run_sweep`'s options with :func:`sweep_options`' defaults filled in and checked, the trials' folders
    checked (distinct; no different run in one, unless ``overwrite``), and the backend made: ``(backend,
    max_retries, trial_timeout)``."""
    defaults = _DEFAULTS.get()
    backend = backend if backend is not None else defaults.get("backend", "local")
    workers = workers or defaults.get("workers")
    max_retries = max_retries if max_retries is not None else defaults.get("max_retries", 2)
    trial_timeout = trial_timeout if trial_timeout is not None else defaults.get("trial_timeout")
    for key in ("address", "cpus_per_trial", "gpus_per_trial"):
        if key in defaults:
            backend_options.setdefault(key, defaults[key])
    if max_retries < 0 or (trial_timeout is not None and trial_timeout <= 0):
        raise ValueError(f"--max-retries must be >= 0 and --trial-timeout > 0, got {max_retries}, {trial_timeout}")
    outs = [t.out.resolve() for t in trials]
    if len(set(outs)) != len(outs):
        dup = next(o for o in outs if outs.count(o) > 1)
        raise ValueError(f"two trials of the sweep write into the same folder {dup}")
    if not overwrite:
        check_targets(trials)
    if isinstance(backend, str):
        backend = make_backend(backend, workers=workers, **backend_options)
        if getattr(backend, "in_process", False) and trial_timeout is not None:
            backend.in_process = False  # a timeout needs a process to kill
    return backend, max_retries, trial_timeout


def run_sweep(trials: Sequence[Trial], *, backend: Any = None, workers: int | None = None,
              max_retries: int | None = None, trial_timeout: float | None = None, desc: str = "sweep",
              progress: bool = True, overwrite: bool = False, **backend_options: Any) -> list[TrialResult]:
    """Run every unfinished trial; results in the order of ``trials``. A folder holding a different
    training run is refused before anything starts, unless ``overwrite``.

    ``backend``: "local" (default), "ray" or a backend object; ``backend_options`` go to
    :func:`make_backend` (``address``, ``cpus_per_trial``, ``gpus_per_trial``). Defaults come from
    :func:`sweep_options`.
    """
    backend, max_retries, trial_timeout = _prepare(trials, backend, workers, max_retries, trial_timeout, overwrite,
                                                   backend_options)

    results: list[TrialResult | None] = [None] * len(trials)
    todo: deque[int] = deque()
    for i, trial in enumerate(trials):
        done = trial.finished()
        if done is not None:
            results[i] = TrialResult(trial, "skipped", done, [])
        else:
            todo.append(i)
    if not todo:
        return results  # type: ignore[return-value]

    errors: dict[int, list[str]] = {i: [] for i in todo}
    running: dict[int, float] = {}
    failed = 0
    bar = tqdm(total=len(trials), initial=len(trials) - len(todo), desc=desc, dynamic_ncols=True, disable=not progress)

    def show():
        bar.set_postfix_str(f"running {len(running)}, failed {failed}", refresh=True)

    def fail(i: int) -> None:
        nonlocal failed
        failed += 1
        record_failure(trials[i], errors[i], backend.name)
        results[i] = TrialResult(trials[i], "failed", None, errors[i])
        bar.update(1)

    try:
        backend.start()
        while todo or running:
            slots = backend.capacity()
            while todo and len(running) < slots:
                i = todo.popleft()
                backend.submit(i, trials[i].payload(), str(trials[i].scratch))
                running[i] = time.monotonic()
            show()
            now = time.monotonic()
            wait = 1.0 if trial_timeout is None else max(0.0, min(1.0, min(running.values()) + trial_timeout - now))
            for i, status, value in backend.poll(wait):
                del running[i]
                if status == "ok":
                    results[i] = TrialResult(trials[i], "done", store(trials[i], value), errors[i], value.seconds)
                    bar.update(1)
                    continue
                errors[i].append(f"attempt {len(errors[i]) + 1} ({status}): {value}")
                if len(errors[i]) <= max_retries:
                    todo.appendleft(i)
                else:
                    fail(i)
            if trial_timeout is not None:
                now = time.monotonic()
                for i in [i for i, t in running.items() if now - t > trial_timeout]:
                    backend.cancel(i)
                    del running[i]
                    errors[i].append(f"attempt {len(errors[i]) + 1} (timeout): killed after {trial_timeout:g} s")
                    fail(i)
        show()
    except KeyboardInterrupt as exc:
        if isinstance(exc, SweepInterrupted):  # a sweep inside a trial run in this process
            raise
        kept = sum(r is not None and r.status != "failed" for r in results)
        raise SweepInterrupted(f"{desc}: interrupted; the {kept} finished trial(s) are stored; run the same "
                               "command again to run the rest") from None
    finally:
        backend.close()
        bar.close()
    return results  # type: ignore[return-value]


def run_all(jobs: Sequence[tuple[TrainConfig | Any, Path]], workers: int | None = None, desc: str = "runs",
            overwrite: bool = False, **options: Any) -> list[dict[str, Any]]:
    """Run every (config or job, out_dir) pair, skipping finished ones; their summaries in the same
    order, identical whatever ``workers`` and the backend are. A folder holding a different run is
    refused before anything starts, unless ``overwrite``. Raises :class:`SweepError` when a trial
    still fails after its retries (after every other trial is done and stored)."""
    results = run_sweep([Trial(job, Path(out)) for job, out in jobs], workers=workers, desc=desc,
                        overwrite=overwrite, **options)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise SweepError(failed)
    return [r.result for r in results]  # type: ignore[misc]
