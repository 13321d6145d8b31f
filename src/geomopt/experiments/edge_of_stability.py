"""Reproduction: full-batch gradient descent trains at the edge of stability.

Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically Occurs at the
Edge of Stability" (ICLR 2021). Gradient descent with step size ``lr`` is stable on a quadratic iff
its sharpness ``lambda_max(H) < 2 / lr``. On neural networks the paper finds that full-batch GD
(1) increases the sharpness ("progressive sharpening") until it reaches about ``2 / lr``, then
(2) the sharpness hovers around ``2 / lr`` instead of exceeding it for long, while (3) the training
loss keeps falling over long horizons, though not monotonically.

Protocol: a ReLU MLP (PyTorch's default initialization, whose initial sharpness is far below every
``2 / lr`` used) on a subset of digits trained by full-batch GD (``batch_size =
train_size``, plain SGD without momentum, cross-entropy) at several step sizes and seeds with the one
training engine; the top Hessian eigenvalue of the training loss on the whole training subset is
logged every ``track_every`` steps (``--track-sharpness``; Lanczos, relative tolerance 1e-3).

Per run (seed, lr), with ``s_t = lambda_max(H_t) lr / 2`` (sharpness relative to the threshold):

- ``peak`` = max_t s_t and ``reach_step`` = the first step with ``s_t >= reach`` (0.9);
- over the *edge window* (from ``reach_step`` to the end of training): ``median_ratio`` (median of
  ``s_t``), ``within`` (fraction of measurements with ``|s_t - 1| <= band``, band 0.2);
- over the same window: ``loss_increases`` (steps whose full-batch training loss rose) and
  ``loss_drop`` (loss at ``reach_step`` / final loss).

Claims (each tested per learning rate over seeds with :mod:`geomopt.sweep.claims`; holds when it holds
at every learning rate): sharpness reaches ``0.9 * 2 / lr`` (``peak > 0.9``); it then hovers
(``median_ratio`` within ``1 +- band``); the loss still falls over the window (``loss_drop > 1``) and
does so non-monotonically (``loss_increases > 0``). Cross-entropy loss: the paper notes that its
sharpness falls again late in training as the loss approaches zero (its Appendix), which the
``within`` fraction shows.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from geomopt.experiments.config import experiment_dir, merge_overrides  # noqa: E402
from geomopt.report import Section, write_records, write_section, write_tables  # noqa: E402
from geomopt.sweep import run_all  # noqa: E402
from geomopt.sweep.claims import FAILS, Claim, Outcome, all_of, greater, less, write_claims  # noqa: E402
from geomopt.sweep.stats import seed_stats  # noqa: E402
from geomopt.train import TrainConfig, read_metrics  # noqa: E402

NAME = "edge-of-stability"
CITATIONS = (
    'Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability", ICLR 2021',
)  # the papers, by title, for the report
TITLE = "Edge of stability: full-batch gradient descent (Cohen, Kaur, Li, Kolter & Talwalkar 2021)"


@dataclass
class EdgeOfStabilityExperiment:
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    data: str = "digits"
    data_dir: str | None = None
    train_size: int = 1000
    widths: tuple[int, ...] = (64, 64)
    init: str = "torch"
    lrs: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3)
    steps: int = 3000
    track_every: int = 10
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    reach: float = 0.9
    band: float = 0.2

    @classmethod
    def quick(cls) -> EdgeOfStabilityExperiment:
        return cls(train_size=500, widths=(32, 32), lrs=(0.1, 0.2, 0.3), steps=500, track_every=10, seeds=(0, 1, 2))

    def replace(self, overrides: dict[str, Any]) -> EdgeOfStabilityExperiment:
        exp = EdgeOfStabilityExperiment(**merge_overrides(self, overrides, NAME))
        if not exp.lrs or any(lr <= 0 for lr in exp.lrs):
            raise ValueError(f"{NAME}: lrs must be positive step sizes, got {list(exp.lrs)}")
        if len(exp.seeds) < 2:
            raise ValueError(f"{NAME}: a verdict needs at least two seeds, got {list(exp.seeds)}")
        if exp.steps < 2 * exp.track_every or exp.track_every < 1:
            raise ValueError(f"{NAME}: need track_every >= 1 and steps >= 2 track_every, got steps={exp.steps}, "
                             f"track_every={exp.track_every}")
        if not 0 < exp.reach <= 1 or not 0 < exp.band < 1:
            raise ValueError(f"{NAME}: need 0 < reach <= 1 and 0 < band < 1, got reach={exp.reach}, band={exp.band}")
        return exp


def _configs(exp: EdgeOfStabilityExperiment, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    jobs = []
    for lr in exp.lrs:
        for seed in exp.seeds:
            cfg = TrainConfig(model="mlp", widths=exp.widths, init=exp.init, data=exp.data, data_dir=exp.data_dir,
                              train_size=exp.train_size, optimizer="sgd", lr=lr, batch_size=exp.train_size,
                              epochs=exp.steps, seed=seed, track_sharpness=exp.track_every,
                              sharpness_examples=exp.train_size)
            jobs.append((cfg, root / "runs" / f"lr{lr:g}" / f"seed{seed}", {"lr": lr, "seed": seed}))
    return jobs


def trajectory(run_dir: Path) -> dict[str, list]:
    """The run's logged sharpness ``(steps, values)`` and full-batch training loss per step."""
    records = read_metrics(run_dir)
    sharp = [r for r in records if r["kind"] == "callback" and "sharpness" in r]
    steps = [r for r in records if r["kind"] == "step"]
    return {"sharp_steps": [r["step"] for r in sharp], "sharpness": [r["sharpness"] for r in sharp],
            "loss_steps": [r["step"] for r in steps], "loss": [r["loss"] for r in steps]}


def edge_statistics(traj: dict[str, list], lr: float, reach: float, band: float) -> dict[str, Any]:
    """The per-run numbers of the module docstring (``reach_step`` None: never reached)."""
    ratio = [s * lr / 2 for s in traj["sharpness"]]
    out: dict[str, Any] = {"initial_ratio": ratio[0], "peak": max(ratio), "reach_step": None,
                           "median_ratio": float("nan"), "within": 0.0, "loss_increases": 0, "loss_drop": float("nan")}
    first = next((i for i, r in enumerate(ratio) if r >= reach), None)
    if first is None:
        return out
    start = traj["sharp_steps"][first]
    window = ratio[first:]
    # the step record of step t holds the loss before update t: the loss at step `start` is record t = start + 1
    losses = [v for t, v in zip(traj["loss_steps"], traj["loss"]) if t > start]
    out.update(reach_step=start, median_ratio=statistics.median(window),
               within=sum(abs(r - 1) <= band for r in window) / len(window),
               loss_increases=sum(b > a for a, b in zip(losses, losses[1:])),
               loss_drop=losses[0] / losses[-1] if losses and losses[-1] > 0 else float("nan"))
    return out


def _per_lr(results: dict[str, Any], key: str) -> dict[float, list[float]]:
    return {lr: [r[key] for r in rows] for lr, rows in results["by_lr"].items()}


def _reaches(results: dict[str, Any]) -> Outcome:
    parts = {}
    for lr, rows in results["by_lr"].items():
        out = greater([r["peak"] for r in rows], results["reach"], label="peak lambda_max lr/2 - reach")
        above = sum(r["initial_ratio"] >= results["reach"] for r in rows)
        parts[f"lr {lr:g}"] = out.with_caveats(
            f"{above}/{len(rows)} seeds started at or above the threshold (nothing to rise)" if above else "")
    return all_of(parts)


def _hovers(results: dict[str, Any]) -> Outcome:
    parts = {}
    for lr, rows in results["by_lr"].items():
        if any(r["reach_step"] is None for r in rows):
            parts[f"lr {lr:g}"] = Outcome(FAILS, "the sharpness never reached the threshold in some seed",
                                          {"peaks": [r["peak"] for r in rows]})
            continue
        med = [r["median_ratio"] for r in rows]
        b = results["band"]
        parts[f"lr {lr:g}"] = all_of({"above": greater(med, 1 - b, label=f"median lambda_max lr/2 - {1 - b:g}"),
                                      "below": less(med, 1 + b, label=f"median lambda_max lr/2 - {1 + b:g}")})
    return all_of(parts)


def _loss_falls(results: dict[str, Any]) -> Outcome:
    parts = {}
    for lr, rows in results["by_lr"].items():
        if any(r["reach_step"] is None for r in rows):
            parts[f"lr {lr:g}"] = Outcome(FAILS, "no edge window: the threshold was never reached in some seed")
            continue
        parts[f"lr {lr:g}"] = all_of({
            "falls": greater([r["loss_drop"] for r in rows], 1.0, label="loss at reach / final loss - 1"),
            "non-monotone": greater([float(r["loss_increases"]) for r in rows], 0.0,
                                    label="steps with a loss increase in the window")})
    return all_of(parts)


CLAIMS = [
    Claim("sharpness-reaches-2-over-lr",
          "Under full-batch gradient descent the sharpness rises until it reaches about 2 / lr.",
          "Cohen, Kaur, Li, Kolter & Talwalkar 2021", "Fig. 1, 2", "lambda_max rises to 2/lr at every step size",
          _reaches),
    Claim("sharpness-hovers-at-2-over-lr",
          "Once there, the sharpness hovers around 2 / lr instead of rising beyond it.",
          "Cohen, Kaur, Li, Kolter & Talwalkar 2021", "Fig. 1, 2", "lambda_max stays near 2/lr (\"edge of stability\")",
          _hovers),
    Claim("loss-falls-non-monotonically",
          "At the edge of stability the training loss keeps decreasing over long horizons, non-monotonically.",
          "Cohen, Kaur, Li, Kolter & Talwalkar 2021", "Fig. 1", "loss falls with short-term spikes",
          _loss_falls),
]


def plot_trajectories(exp: EdgeOfStabilityExperiment, trajectories: dict[float, list[dict[str, list]]],
                      path: Path) -> Path:
    """Sharpness vs step with the 2/lr line (top row) and the training loss (bottom row), one column per lr,
    one line per seed."""
    n = len(trajectories)
    fig, axes = plt.subplots(2, n, figsize=(4.0 * n, 6.0), squeeze=False, sharex="col")
    for j, (lr, runs) in enumerate(trajectories.items()):
        top, bottom = axes[0, j], axes[1, j]
        for seed, tr in zip(exp.seeds, runs):
            (line,) = top.plot(tr["sharp_steps"], tr["sharpness"], linewidth=1.2, label=f"seed {seed}")
            bottom.plot(tr["loss_steps"], tr["loss"], linewidth=1.0, color=line.get_color())
        top.axhline(2 / lr, color="k", linestyle="--", linewidth=1.0, label="2 / lr")
        top.set_title(f"lr = {lr:g}", fontsize=10)
        top.set_ylabel("top Hessian eigenvalue")
        bottom.set_ylabel("training loss (full batch)")
        bottom.set_yscale("log")
        bottom.set_xlabel("step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Train every (lr, seed) by full-batch GD with sharpness tracking; write results, figure, claims, section."""
    exp = (EdgeOfStabilityExperiment.quick() if quick else EdgeOfStabilityExperiment()).replace(overrides or {})
    root = experiment_dir(out, NAME, exp)
    planned = _configs(exp, root)
    summaries = run_all([(c, o) for c, o, _ in planned], jobs, desc=NAME, overwrite=overwrite)
    rows, trajectories = [], {}
    for (_, run_dir, key), summary in zip(planned, summaries):
        diverged = bool(summary.get("diverged"))
        tr = trajectory(run_dir)
        trajectories.setdefault(key["lr"], []).append(tr)
        stats = edge_statistics(tr, key["lr"], exp.reach, exp.band) if tr["sharpness"] else {}
        rows.append({**key, **stats, "diverged": diverged, "final_loss": summary["train_loss"],
                     "train_acc": summary["train_acc"], "test_acc": summary["test_acc"], "dir": str(run_dir)})
    write_records(root / "results.csv", rows, key=("dir",))
    results = {"by_lr": {lr: [r for r in rows if r["lr"] == lr] for lr in exp.lrs}, "reach": exp.reach,
               "band": exp.band}
    columns = ["lr", "2/lr", "initial lambda lr/2", "peak lambda lr/2", "reached at step", "median in window",
               f"within +-{exp.band:g}", "loss increases", "loss drop in window", "final loss"]
    table = []
    for lr, rs in results["by_lr"].items():
        reached = [r["reach_step"] for r in rs if r.get("reach_step") is not None]
        table.append([lr, 2 / lr, seed_stats([r["initial_ratio"] for r in rs]).fmt(),
                      seed_stats([r["peak"] for r in rs]).fmt(), f"{len(reached)}/{len(rs)} seeds, "
                      f"median {statistics.median(reached) if reached else '-'}",
                      seed_stats([r["median_ratio"] for r in rs]).fmt() if len(reached) == len(rs) else "-",
                      seed_stats([r["within"] for r in rs]).fmt(),
                      seed_stats([float(r["loss_increases"]) for r in rs]).fmt(),
                      seed_stats([r["loss_drop"] for r in rs]).fmt() if len(reached) == len(rs) else "-",
                      seed_stats([r["final_loss"] for r in rs]).fmt()])
    write_tables(root / "table.csv", (columns, table))
    plot_trajectories(exp, trajectories, root / "sharpness.png")
    seconds = sum(float(s.get("seconds", 0.0)) for s in summaries)
    write_claims(root, NAME, CLAIMS, results, title=TITLE, seeds=exp.seeds, seconds=seconds, quick=quick)
    paragraphs = [
        f"Protocol: ReLU MLP {list(exp.widths)} ({exp.init} initialization) on {exp.train_size} {exp.data} training "
        f"examples, full-batch gradient descent (no momentum, cross-entropy) for {exp.steps} steps at lr in "
        f"{list(exp.lrs)}, seeds "
        f"{list(exp.seeds)}. Every {exp.track_every} steps the engine logs the top eigenvalue of the training loss's "
        "Hessian on the whole training subset (geomopt train --track-sharpness; Lanczos with full "
        "reorthogonalization, relative Ritz residual <= 1e-3, warm-started from the previous eigenvector).",
        f"Columns are relative to the stability threshold: lambda lr/2 = 1 at 2/lr. The edge window runs from the "
        f"first measurement with lambda lr/2 >= {exp.reach:g} to the end of training. Cross-entropy sharpness falls "
        "again late in training as the loss approaches zero (noted by the paper), which lowers the window's median "
        "and the within-band fraction of long runs.",
    ]
    section = Section(citations=list(CITATIONS), title=TITLE, paragraphs=paragraphs, tables=[
        {"caption": "Sharpness and loss per step size (mean [95% interval] over seeds)", "columns": columns,
         "rows": table}], figures=[
        {"file": "sharpness.png", "caption": "Top: top Hessian eigenvalue vs step with 2/lr dashed; bottom: full-batch "
         f"training loss (log scale). One line per seed ({len(exp.seeds)} seeds)."}], order=40)
    return write_section(root, section)
