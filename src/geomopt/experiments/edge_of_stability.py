"""Reproduction: full-batch gradient descent trains at the edge of stability.

Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically Occurs at the
Edge of Stability" (ICLR 2021). Gradient descent with step size ``lr`` is stable on a quadratic iff
its sharpness ``lambda_max(H) < 2 / lr``. On neural networks the paper finds that full-batch GD
(1) increases the sharpness ("progressive sharpening") until it reaches ``2 / lr``, then (2) the
sharpness hovers just around ``2 / lr`` instead of exceeding it for long, while (3) the training loss
keeps falling over long horizons, though not monotonically. Its main setting is the squared loss (MSE);
it reports the same with cross-entropy, whose sharpness falls again late in training as the loss
approaches zero.

Protocol: a ReLU MLP (PyTorch's default initialization, whose initial sharpness is below every ``2 / lr``
used) trained by full-batch GD (``batch_size = train_size``, plain SGD without momentum) with the squared
loss against one-hot labels (``TrainConfig.loss = "mse"``: ``1/2 ||f(x) - e_y||^2``, mean over examples,
as the paper) and with cross-entropy, at several step sizes and seeds; the top Hessian eigenvalue of the
training loss on the whole training subset is logged every ``track_every`` steps (``--track-sharpness``;
Lanczos, relative tolerance 1e-3). The traces (sharpness and full-batch training loss per step) are
stored in ``curves.csv``; every claim is computed from them.

Per run, with ``s_t = lambda_max(H_t) lr / 2`` (1 at the threshold) and the band ``|s_t - 1| <= band``
(``band = 0.1``: within 10% of ``2 / lr``):

- ``initial_ratio = s_0``, ``peak = max_t s_t``, ``reach_step`` = the first measurement with ``s_t >= 1``;
- over the *edge window* (from ``reach_step`` to the end): ``within`` (fraction of measurements in the
  band), ``above`` (fraction above ``1 + band``), ``median_ratio``, ``loss_increases`` (steps whose
  full-batch training loss rose) and ``loss_drop`` (loss at ``reach_step`` / final loss).

Claims (per loss, each tested per learning rate over seeds with :mod:`geomopt.sweep.claims`; a claim
holds when it holds at every learning rate): progressive sharpening (``initial_ratio < 1 - band`` is a
gate, then ``min(peak, 1 + band) > 1 - band``: it enters the band; how far it overshoots is the edge
claim's question); the edge (``within > 0.5``: most measurements after the sharpness first
reaches ``2 / lr`` lie within 10% of it, so neither a plateau below nor an overshoot counts); the loss
falls over the window (``loss_drop > 1``) and is not monotone (per seed: whether it rose at some step of
the window, tested against 1/2). Run-quality gate: finite loss and
sharpness, the training loss ends at most half its initial value and at most twice its best (a run in a
blow-up decides nothing); a run that never reaches ``2 / lr`` has no edge window, so the edge and loss
claims are ``untestable here`` for its learning rate (run longer), while the sharpening claim tests it.

Tiers: ``quick``: 500 digits, MLP 32-32, lr 0.2 and 0.3, 500 steps (minutes). ``mid``: MLP 200-200 on 1,000
Fashion-MNIST images (Debian's ``dataset-fashion-mnist``), full-batch GD for 400 steps at lr 0.1 (2/lr = 20)
with MSE and with cross-entropy, 3 seeds. It can test the headline: in 1-run timings the MSE sharpness starts
at 0.37 x 2/lr and first exceeds 2/lr at step 40, then stays within 10% of it at 89% of the later measurements
(500 steps on 1,000 images), and the cross-entropy sharpness starts at 0.06 x 2/lr and passes 2/lr near step 60
(300 steps on 2,000 images), so both leave most of the run as the edge window. Cost: 593 s for the 500-step MSE
run with OMP_NUM_THREADS=1 on the shared 2-core machine (the per-step evaluation of the 10,000 test images is
about half of it), so about 45 minutes for the 6 runs. ``full``: the paper's setting, a 5,000-image CIFAR-10
subset (``--set data_dir=PATH``), MLP 200-200, 10,000 steps at lr 0.01, 0.02 and 0.04, 5 seeds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from geomopt.experiments.records import Records  # noqa: E402
from geomopt.experiments.records import gate_failures as shared_gate  # noqa: E402
from geomopt.experiments.skeleton import (Context, Experiment, Protocol, Ran, Report, plan_grid,  # noqa: E402
                                          planned_records)
from geomopt.sweep import run_all  # noqa: E402
from geomopt.sweep.claims import Claim, Outcome, RunGate, all_of, gated, greater, untestable  # noqa: E402
from geomopt.sweep.stats import seed_stats  # noqa: E402
from geomopt.train import TrainConfig, read_metrics  # noqa: E402

NAME = "edge-of-stability"
CITATIONS = (
    'Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability", ICLR 2021',
)  # the papers, by title, for the report
TITLE = "Edge of stability: full-batch gradient descent (Cohen, Kaur, Li, Kolter & Talwalkar 2021)"
PAPER = "Cohen, Kaur, Li, Kolter & Talwalkar 2021"
LOSSES = {"mse": "mse", "cross-entropy": "task"}  # experiment's loss name -> TrainConfig.loss
HOVER = 0.5  # the edge claim: more than this fraction of the window's measurements lie in the band
GATE = RunGate(drop=0.5, rebound=1.0)
GATE_TEXT = ("finite training loss and sharpness; the full-batch training loss ends at most half its value before "
             "training (it learned) and at most twice its best (not in a blow-up)")


@dataclass
class EdgeOfStabilityExperiment(Protocol, name=NAME):
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    data: str = "cifar10"
    data_dir: str | None = None
    train_size: int = 5000
    widths: tuple[int, ...] = (200, 200)
    init: str = "torch"
    losses: tuple[str, ...] = ("mse", "cross-entropy")
    lrs: tuple[float, ...] = (0.01, 0.02, 0.04)
    steps: int = 10000
    track_every: int = 50
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    band: float = 0.1

    @classmethod
    def quick(cls) -> EdgeOfStabilityExperiment:
        return cls(data="digits", train_size=500, widths=(32, 32), lrs=(0.2, 0.3), steps=500, track_every=10,
                   seeds=(0, 1, 2))

    @classmethod
    def mid(cls) -> EdgeOfStabilityExperiment:
        return cls(data="fashion-mnist", train_size=1000, widths=(200, 200), lrs=(0.1,), steps=400, track_every=10,
                   seeds=(0, 1, 2))

    def check(self) -> None:
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"{NAME}: lrs must be positive step sizes, got {list(self.lrs)}")
        bad = [loss for loss in self.losses if loss not in LOSSES]
        if bad or not self.losses:
            raise ValueError(f"{NAME}: losses must be among {list(LOSSES)}, got {list(self.losses)}")
        if len(self.seeds) < 2:
            raise ValueError(f"{NAME}: a verdict needs at least two seeds, got {list(self.seeds)}")
        if self.steps < 2 * self.track_every or self.track_every < 1:
            raise ValueError(f"{NAME}: need track_every >= 1 and steps >= 2 track_every, got steps={self.steps}, "
                             f"track_every={self.track_every}")
        if not 0 < self.band < 1:
            raise ValueError(f"{NAME}: need 0 < band < 1, got band={self.band}")


CONFIG = EdgeOfStabilityExperiment  # the config class (geomopt results check rebuilds it from experiment.json)


def _configs(exp: EdgeOfStabilityExperiment, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    def make(loss: str, lr: float, seed: int) -> tuple[TrainConfig, Path]:
        return (TrainConfig(model="mlp", widths=exp.widths, init=exp.init, data=exp.data, data_dir=exp.data_dir,
                            train_size=exp.train_size, optimizer="sgd", lr=lr, batch_size=exp.train_size,
                            epochs=exp.steps, seed=seed, track_sharpness=exp.track_every,
                            sharpness_examples=exp.train_size, loss=LOSSES[loss]),
                root / "runs" / loss / f"lr{lr:g}" / f"seed{seed}")
    return plan_grid({"loss": exp.losses, "lr": exp.lrs, "seed": exp.seeds}, make)


def trace(run_dir: Path) -> list[dict[str, Any]]:
    """The run's curve: per step ``t`` (one full-batch update per epoch), the full-batch training ``loss``
    after ``t`` updates and, at the tracked steps, the ``sharpness`` lambda_max(H) at those weights."""
    records = read_metrics(run_dir)
    sharp = {r["step"]: r["sharpness"] for r in records if r["kind"] == "callback" and "sharpness" in r}
    return [{"step": r["epoch"], "loss": r["train_loss"],
             **({"sharpness": sharp[r["epoch"]]} if r["epoch"] in sharp else {})}
            for r in records if r["kind"] == "epoch"]


def edge_statistics(curve: list[dict[str, Any]], lr: float, band: float) -> dict[str, Any]:
    """The per-run numbers of the module docstring from a :func:`trace` (``reach_step`` None: ``2 / lr``
    never reached; the window's numbers are then NaN)."""
    tracked = [(r["step"], r["sharpness"] * lr / 2) for r in curve if r.get("sharpness") is not None]
    if not tracked:
        raise ValueError(f"{NAME}: a run without sharpness measurements (track_sharpness off?)")
    ratio = [s for _, s in tracked]
    out: dict[str, Any] = {"initial_ratio": ratio[0], "peak": max(ratio), "reach_step": None, "within": math.nan,
                           "above": math.nan, "median_ratio": math.nan, "loss_increases": math.nan,
                           "loss_drop": math.nan}
    first = next((i for i, s in enumerate(ratio) if s >= 1), None)
    if first is None:
        return out
    start, window = tracked[first][0], ratio[first:]
    losses = [r["loss"] for r in curve if r["step"] >= start]
    out.update(reach_step=start, median_ratio=statistics.median(window),
               within=sum(abs(s - 1) <= band for s in window) / len(window),
               above=sum(s > 1 + band for s in window) / len(window),
               loss_increases=float(sum(b > a for a, b in zip(losses, losses[1:]))),
               loss_drop=losses[0] / losses[-1] if losses[-1] > 0 else math.inf)
    return out


def _run(ctx: Context) -> Ran:
    """Every (loss, lr, seed) trained by full-batch GD with sharpness tracking (finished runs skipped); one row per
    run with its loss and sharpness trace."""
    planned = _configs(ctx.exp, ctx.root)
    summaries = run_all([(c, o) for c, o, _ in planned], ctx.jobs, desc=NAME, overwrite=ctx.overwrite)

    def row(summary, run_dir):
        return {"diverged": bool(summary.get("diverged")), "final_loss": summary["train_loss"],
                "train_acc": summary["train_acc"], "test_acc": summary["test_acc"],
                "seconds": summary.get("seconds", 0.0)}
    return Ran(planned_records(ctx.exp, planned, summaries, ctx.root, row, trace),
               sum(float(s.get("seconds", 0.0)) for s in summaries))


def run_statistics(records: Records, row: dict[str, Any]) -> dict[str, Any]:
    """:func:`edge_statistics` of a stored run."""
    return edge_statistics(records.curves.get(row["run"], []), row["lr"], records.exp.band)


def gate_failures(records: Records, rows: list[dict[str, Any]]) -> list[str]:
    """The run-quality gate's failures among ``rows`` (:data:`GATE_TEXT`)."""
    nonfinite = [f"{_describe_run(r)}: non-finite sharpness" for r in rows if not r["diverged"] and not all(
        math.isfinite(c["sharpness"]) for c in records.curves.get(r["run"], []) if c.get("sharpness") is not None)]
    return nonfinite + shared_gate(records, rows, GATE, _describe_run, loss="loss")


def _describe_run(r: dict[str, Any]) -> str:
    return f"{r['loss']} lr {r['lr']:g} seed {r['seed']}"


def _per_lr(loss: str, test):
    """A claim on ``loss``'s runs: ``test(records, rows, stats) -> Outcome`` per learning rate (its rows in
    seed order), gated on the runs' quality, joined with :func:`all_of`."""
    def claim(records: Records) -> Outcome:
        parts = {}
        for lr in records.exp.lrs:
            rows = sorted(records.where(loss=loss, lr=lr), key=lambda r: r["seed"])
            if not rows:
                parts[f"lr {lr:g}"] = untestable(f"no {loss} run at lr {lr:g}")
                continue
            failures = gate_failures(records, rows)
            stats = [] if failures else [run_statistics(records, r) for r in rows]
            parts[f"lr {lr:g}"] = gated(test(records, rows, stats) if stats else untestable("gated"), failures)
        return all_of(parts)
    return claim


def _sharpening(records: Records, rows, stats) -> Outcome:
    low = 1 - records.exp.band
    started = [f"{_describe_run(r)}: starts at {s['initial_ratio']:.3g} x 2/lr, not below {low:g} (nothing to rise)"
               for r, s in zip(rows, stats) if not s["initial_ratio"] < low]
    high = 1 + records.exp.band  # how far the sharpness overshoots is the edge claim's question, not this one's
    peaks = [min(s["peak"], high) for s in stats]
    return gated(greater(peaks, low, label=f"min(peak lambda lr/2, {high:g}) - {low:g}"), started)


def _window(rows, stats) -> list[str]:
    """Runs without an edge window (the sharpness never reached 2 / lr)."""
    return [f"{_describe_run(r)}: the sharpness never reached 2/lr (peak {s['peak']:.3g} x 2/lr; run longer or at "
            "a larger lr)" for r, s in zip(rows, stats) if s["reach_step"] is None]


def _edge(records: Records, rows, stats) -> Outcome:
    missing = _window(rows, stats)
    if missing:
        return gated(untestable("no edge window"), missing)
    return greater([s["within"] for s in stats], HOVER, digits=2,
                   label=f"fraction within +-{100 * records.exp.band:g}% of 2/lr - {HOVER:g}")


def _loss_falls(records: Records, rows, stats) -> Outcome:
    missing = _window(rows, stats)
    if missing:
        return gated(untestable("no edge window"), missing)
    return all_of({"falls": greater([s["loss_drop"] for s in stats], 1.0, label="loss at 2/lr / final loss - 1"),
                   "non-monotone": greater([float(s["loss_increases"] > 0) for s in stats], 0.5,
                                           label="[the loss rose at some step of the window] - 0.5")})


def claims(exp: EdgeOfStabilityExperiment) -> list[Claim]:
    """Per loss: progressive sharpening, the edge (band fraction), and the non-monotone fall of the loss."""
    out = []
    for loss in exp.losses:
        main = " (the paper's main setting)" if loss == "mse" else (
            " (the paper: its sharpness falls again late in training as the loss approaches 0)")
        band = f"{100 * exp.band:g}%"
        out += [
            Claim(f"sharpening-{loss}", f"With {loss} loss{main}, the sharpness of full-batch GD rises from below "
                  f"2/lr to it (peak above {1 - exp.band:g} x 2/lr) at every step size", PAPER, "Sec. 3, Fig. 1-2",
                  "lambda_max rises until it reaches 2/lr, at every step size tried", _per_lr(loss, _sharpening)),
            Claim(f"edge-{loss}", f"With {loss} loss, once the sharpness reaches 2/lr, most later measurements "
                  f"(> {100 * HOVER:g}%) lie within {band} of 2/lr: it hovers there instead of rising beyond",
                  PAPER, "Sec. 3, Fig. 1-2", "lambda_max then hovers just above 2/lr for the rest of training",
                  _per_lr(loss, _edge)),
            Claim(f"loss-falls-{loss}", f"With {loss} loss, at the edge of stability the training loss keeps "
                  "falling over the run, non-monotonically (at least one increase)", PAPER, "Sec. 3, Fig. 1",
                  "the loss falls over long horizons with short-term spikes", _per_lr(loss, _loss_falls))]
    return out


def plot_trajectories(records: Records, path: Path) -> Path:
    """Sharpness vs step with the 2/lr line and its band (top row) and the training loss (bottom row), one
    column per (loss, lr), one line per seed."""
    exp = records.exp
    keys = [(loss, lr) for loss in exp.losses for lr in exp.lrs]
    fig, axes = plt.subplots(2, len(keys), figsize=(4.0 * len(keys), 6.0), squeeze=False, sharex="col")
    for j, (loss, lr) in enumerate(keys):
        top, bottom = axes[0, j], axes[1, j]
        for r in sorted(records.where(loss=loss, lr=lr), key=lambda r: r["seed"]):
            curve = records.curves.get(r["run"], [])
            tracked = [c for c in curve if c.get("sharpness") is not None]
            (line,) = top.plot([c["step"] for c in tracked], [c["sharpness"] for c in tracked], linewidth=1.2,
                               label=f"seed {r['seed']}")
            bottom.plot([c["step"] for c in curve], [c["loss"] for c in curve], linewidth=1.0, color=line.get_color())
        top.axhline(2 / lr, color="k", linestyle="--", linewidth=1.0, label="2 / lr")
        top.axhspan((1 - exp.band) * 2 / lr, (1 + exp.band) * 2 / lr, color="k", alpha=0.08,
                    label=f"+-{100 * exp.band:g}%")
        top.set_title(f"{loss}, lr = {lr:g}", fontsize=10)
        top.set_ylabel("top Hessian eigenvalue")
        bottom.set_ylabel(f"training {loss} loss (full batch)")
        bottom.set_yscale("log")
        bottom.set_xlabel("step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(records: Records) -> tuple[list[str], list[list[Any]]]:
    exp = records.exp
    columns = ["loss", "lr", "2/lr", "initial lambda lr/2", "peak lambda lr/2", "reached 2/lr at step",
               f"% of window within +-{100 * exp.band:g}%", f"% of window above +{100 * exp.band:g}%",
               "loss increases in window", "final training loss"]
    table = []
    for loss in exp.losses:
        for lr in exp.lrs:
            rows = [r for r in records.where(loss=loss, lr=lr) if not r["diverged"]]
            if not rows:
                table.append([loss, lr, 2 / lr, *["diverged"] * (len(columns) - 3)])
                continue
            st = [run_statistics(records, r) for r in rows]
            reached = [s for s in st if s["reach_step"] is not None]

            def fmt(key: str, scale: float = 1.0) -> str:  # fractions (scale 100: %) and counts are >= 0
                bounds = (0.0, 1.0) if scale == 100 else (0.0, math.inf)
                return seed_stats([s[key] for s in reached]).fmt(scale, bounds=bounds) + (
                    f" ({len(reached)}/{len(st)} seeds)" if len(reached) < len(st) else "") if reached else "-"
            table.append([loss, lr, 2 / lr, seed_stats([s["initial_ratio"] for s in st]).fmt(),
                          seed_stats([s["peak"] for s in st]).fmt(),
                          f"{len(reached)}/{len(st)} seeds" + (
                              f", median {statistics.median(s['reach_step'] for s in reached):g}" if reached else ""),
                          fmt("within", 100), fmt("above", 100), fmt("loss_increases"),
                          seed_stats([r["final_loss"] for r in rows]).fmt()])
    return columns, table


def _report(ctx: Context, records: Records, ran: Ran) -> Report:
    """The sharpness and loss table per loss and step size, the trajectories, the protocol."""
    exp = ctx.exp
    columns, table = _table(records)
    plot_trajectories(records, ctx.root / "sharpness.png")
    paragraphs = [
        f"Protocol ({ctx.tier} tier): ReLU MLP {list(exp.widths)} ({exp.init} initialization) on {exp.train_size} "
        f"{exp.data} training examples, full-batch gradient descent (no momentum) for {exp.steps} steps with the "
        f"loss(es) {', '.join(exp.losses)} (mse: 1/2 the squared distance to the one-hot label, mean over "
        f"examples) at lr in {list(exp.lrs)}, seeds {list(exp.seeds)}. Every {exp.track_every} steps the engine "
        "logs the top eigenvalue of the training loss's Hessian on the whole training subset (geomopt train "
        "--track-sharpness; Lanczos with full reorthogonalization, relative Ritz residual <= 1e-3, warm-started "
        "from the previous eigenvector); the traces are in curves.csv.",
        f"Columns are relative to the stability threshold: lambda lr/2 = 1 at 2/lr. The edge window runs from the "
        f"first measurement with lambda lr/2 >= 1 to the end of training; the edge claim asks that more than "
        f"{100 * HOVER:g}% of its measurements lie within +-{100 * exp.band:g}% of 2/lr (a plateau below the band or "
        f"an overshoot above it does not count). Run-quality gate: {GATE_TEXT}; a run that never reaches 2/lr "
        "leaves the edge and loss claims untestable at its lr.",
    ]
    return Report(paragraphs, tables=[
        {"caption": "Sharpness and loss per loss and step size (mean [95% interval] over seeds; the window's numbers "
                    "over the seeds that reached 2/lr)", "columns": columns, "rows": table}], figures=[
        {"file": "sharpness.png", "caption": f"Top: top Hessian eigenvalue vs step with 2/lr dashed and its "
         f"+-{100 * exp.band:g}% band shaded; bottom: full-batch training loss (log scale). One line per seed "
         f"({len(exp.seeds)} seeds)."}])


EXPERIMENT = Experiment(NAME, EdgeOfStabilityExperiment, TITLE, CITATIONS, order=40, run=_run, claims=claims,
                        report=_report)
reproduce = EXPERIMENT.reproduce
