"""Run many training configs in a local process pool, skipping the ones already finished."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from geomopt.train import NonFiniteLossError, TrainConfig, train


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _finished(config: TrainConfig, out: Path) -> dict[str, Any] | None:
    summary, stored = out / "summary.json", out / "config.json"
    if summary.is_file() and _same_config(stored, config):
        return json.loads(summary.read_text())
    return None


def _same_config(stored: Path, config: TrainConfig) -> bool:
    """Whether ``stored`` holds ``config`` (a config of an older geomopt that no longer loads does not)."""
    try:
        return stored.is_file() and TrainConfig.load(stored) == config
    except ValueError:
        return False


def check_targets(jobs: list[tuple[TrainConfig, Path]]) -> None:
    """Refuse, before anything runs, run folders that hold a different run (ValueError naming what differs)."""
    clashes = []
    for config, out in jobs:
        if (out / "config.json").is_file() and not _same_config(out / "config.json", config):
            try:
                diff = TrainConfig.load(out / "config.json").differences(config)
                what = ", ".join(f"{k}: stored {a!r}, planned {b!r}" for k, (a, b) in diff.items())
            except ValueError as exc:
                what = str(exc)
            clashes.append(f"{out} ({what})")
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise ValueError(f"{len(clashes)} run folder(s) hold a different run: {'; '.join(clashes[:3])}{more}. "
                         "Choose another --out, or pass --overwrite to retrain them")


def run_one(config: TrainConfig, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Train one config into ``out`` (or return its stored summary); a divergence is a result, not an error.

    Runs use one thread, so that the numbers do not depend on how many run side by side.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_one(config, out, overwrite)
    finally:
        torch.set_num_threads(threads)


def _run_one(config: TrainConfig, out: Path, overwrite: bool) -> dict[str, Any]:
    done = _finished(config, out)
    if done is not None:
        return done
    resume = (out / "checkpoint.pt").is_file() and _same_config(out / "config.json", config)
    try:
        return train(config, out, resume=resume, overwrite=overwrite, progress=False)
    except NonFiniteLossError as exc:
        summary = {"diverged": True, "error": str(exc), "train_loss": float("inf"), "train_acc": 0.0,
                   "test_loss": float("inf"), "test_acc": 0.0}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary


def run_all(jobs: list[tuple[TrainConfig, Path]], workers: int | None = None, desc: str = "runs",
            overwrite: bool = False) -> list[dict[str, Any]]:
    """Run every (config, out_dir) pair in a local process pool (``workers`` processes, one thread
    each); results in the same order, identical whatever ``workers`` is. A folder holding a different
    run is refused before anything starts, unless ``overwrite``."""
    if not overwrite:
        check_targets(jobs)
    workers = workers or default_jobs()
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    todo = []
    for i, (config, out) in enumerate(jobs):
        done = _finished(config, out)
        if done is not None:
            results[i] = done
        else:
            todo.append(i)
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, dynamic_ncols=True) as bar:
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                results[i] = run_one(*jobs[i], overwrite)
                bar.update(1)
        else:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(run_one, *jobs[i], overwrite): i for i in todo}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
    return results  # type: ignore[return-value]
