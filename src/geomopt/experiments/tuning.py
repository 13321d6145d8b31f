"""Learning-rate (or any TrainConfig field) selection for the reproductions, on validation data.

:func:`tune` runs each problem's grid for every seed through the experiment sweep, scores each value by
its mean validation loss or accuracy over seeds (``val_loss`` / ``val_acc`` of runs with
``TrainConfig.val_fraction > 0``: a split carved from the training set, never the test set) and extends
a grid whose best value is at an edge (:func:`geomopt.sweep.select_grids`). Runs go to ``directory / f"{name}{value:g}" / f"seed{seed}"``
and are skipped when already finished.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.sweep import Grid, Selection, run_all, select_grids
from geomopt.train import TrainConfig, read_metrics

__all__ = ["Problem", "Tuned", "tune", "smoothed_score", "compute_seconds"]


@dataclass(frozen=True)
class Problem:
    """One selection problem: a grid, ``make(value, seed) -> TrainConfig`` and the folder of its runs."""

    grid: Grid
    make: Callable[[float, int], TrainConfig]
    directory: Path


@dataclass
class Tuned:
    """A problem's selection and every run it made: ``runs[value, seed] = (config, run dir, summary)``."""

    selection: Selection
    seeds: tuple[int, ...]
    runs: dict[tuple[float, int], tuple[TrainConfig, Path, dict[str, Any]]] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return self.selection.value

    def at(self, value: float | None = None) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
        """The runs at ``value`` (default: the selected one), in seed order."""
        v = self.value if value is None else value
        return [self.runs[v, s] for s in self.seeds]

    def metric(self, name: str, value: float | None = None) -> list[float]:
        """``summary[name]`` per seed at ``value`` (default: the selected one); a diverged run's loss is
        ``inf``, its accuracy 0."""
        return [float(summary[name]) for _, _, summary in self.at(value)]


def run_dir(directory: Path, grid: Grid, value: float, seed: int) -> Path:
    return Path(directory) / f"{grid.name}{value:g}" / f"seed{seed}"


SMOOTH_EPOCHS = 3  # selection scores a run by the mean of its last 3 epochs' validation score


def smoothed_score(run_dir: Path, score: str, summary: dict[str, Any]) -> float:
    """The mean ``score`` over a run's last ``SMOOTH_EPOCHS`` epochs (from its metrics.jsonl), so that an
    unstable run's lucky last epoch does not win the selection; the summary's value for runs that log
    no epochs with it (custom jobs)."""
    try:
        values = [float(r[score]) for r in read_metrics(run_dir) if r.get("kind") == "epoch" and score in r
                  and r.get("epoch", 1) > 0]
    except (OSError, ValueError):
        values = []
    if not values:
        return float(summary[score])
    tail = values[-SMOOTH_EPOCHS:]
    return sum(tail) / len(tail)


RESTART_SEED = 1000  # restart r of seed s trains with TrainConfig.seed = s + RESTART_SEED * r (a new init)


def tune(problems: Mapping[Hashable, Problem], seeds: Sequence[int], *, jobs: int | None, desc: str,
         score: str = "val_loss", minimize: bool = True, overwrite: bool = False,
         restarts: Mapping[Hashable, int] | None = None) -> dict[Hashable, Tuned]:
    """Select every problem's value by its mean smoothed ``score`` over ``seeds`` (:func:`smoothed_score`:
    the mean of a run's last epochs) (lower is better, or higher with
    ``minimize=False``, e.g. ``score="val_acc"``).

    Each round of :func:`geomopt.sweep.select_grids` is one sweep over all pending (problem, value, seed)
    runs. A diverged run scores worst (``inf``, or ``-inf`` when maximizing). ``overwrite``: retrain run folders that hold a different run
    (otherwise refused, :func:`geomopt.sweep.run_all`). ``restarts[key]``: a diverged run of that problem
    is restarted up to this many times from a new initialization (``seed + RESTART_SEED * r``, in
    ``run dir / f"restart{r}"``; Le et al. 2015's IRNN protocol); the first that does not diverge (or the
    last) stands for the seed, and its summary records ``restarts = r``.

    Raises:
        ValueError: no seeds, or a finished run without ``score`` in its summary (set ``val_fraction``).
    """
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError(f"{desc}: no seeds")
    tuned = {k: Tuned(selection=None, seeds=seeds) for k in problems}  # type: ignore[arg-type]

    limit = dict(restarts or {})

    def run(pairs: list[tuple[Hashable, float]]) -> dict[tuple[Hashable, float], list[float]]:
        pending = [(k, v, s, 0) for k, v in pairs for s in seeds]
        got: dict[tuple[Hashable, float, int], float] = {}
        while pending:
            jobs_ = []
            for k, v, s, r in pending:
                out = run_dir(problems[k].directory, problems[k].grid, v, s)
                jobs_.append((k, v, s, r, problems[k].make(v, s + RESTART_SEED * r), out / f"restart{r}" if r else out))
            summaries = run_all([(cfg, out) for *_, cfg, out in jobs_], jobs, desc=desc, overwrite=overwrite)
            pending = []
            for (k, v, s, r, cfg, out), summary in zip(jobs_, summaries):
                if summary.get("diverged") and r < limit.get(k, 0):
                    pending.append((k, v, s, r + 1))
                    continue
                if summary.get("diverged"):
                    summary = {**summary, score: math.inf if minimize else -math.inf}
                elif score not in summary:
                    raise ValueError(f"{desc}: run {out} has no {score!r} in its summary; its TrainConfig needs "
                                     "val_fraction > 0 (a validation split carved from the training set)")
                tuned[k].runs[v, s] = (cfg, out, {**summary, "restarts": r})
                got[k, v, s] = (float(summary[score]) if summary.get("diverged")
                                else smoothed_score(out, score, summary))
        return {(k, v): [got[k, v, s] for s in seeds] for k, v in pairs}

    for k, sel in select_grids({k: p.grid for k, p in problems.items()}, run, minimize=minimize).items():
        tuned[k].selection = sel
    return tuned


def compute_seconds(tuned: Mapping[Hashable, Tuned]) -> float:
    """Training seconds of every run of every problem (the compute a reproduction spent)."""
    return sum(float(s.get("seconds", 0.0)) for t in tuned.values() for _, _, s in t.runs.values())
