"""Reproduction: Path-SGD vs SGD, AdaGrad and Adam under balanced and unbalanced initialization.

Neyshabur, Salakhutdinov & Srebro, "Path-SGD: Path-Normalized Optimization in Deep Neural
Networks", NeurIPS 2015. Protocol: an MLP with two hidden ReLU layers, batch 100, each optimizer
with its learning rate chosen on a validation split carved from the training set (highest mean
validation accuracy over seeds; a best value at the grid's edge extends the grid, ``geomopt.sweep``),
from a balanced (He) and an unbalanced (same function, layers rescaled by random factors per hidden
unit) initialization. The paper's claims: Path-SGD optimizes faster and generalizes better than SGD
and AdaGrad, most clearly from the unbalanced start, to which it is invariant.

Tiers: ``quick``: 256-256 hidden units on MNIST-1D and digits, 3 seeds (minutes on 2 cores). ``mid``:
1000-1000 units on 10,000 Fashion-MNIST training images (Debian's ``dataset-fashion-mnist``), 10 epochs,
3 seeds (about 45 minutes on 2 cores): real images and two hidden layers of 1000 units from the
unbalanced initialization, where the paper's gap is largest, and every optimizer's loss falls well below
its start within the budget, so the speed comparison is between converging runs. ``full``: 4000-4000
units on MNIST and CIFAR-10 read from ``data_dir`` (``--set data_dir=PATH``), 100 epochs, 5 seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.experiments.records import Records, gate_failures
from geomopt.experiments.skeleton import (Context, Experiment, Protocol, Ran, Report, chance_loss, seed_band, selected,
                                          tuned_records)
from geomopt.experiments.tuning import Problem, compute_seconds, tune
from geomopt.report import plot_bands
from geomopt.sweep import Claim, Grid, Outcome, RunGate, all_of, gated, less, seed_stats, untestable
from geomopt.train import TrainConfig

NAME = "path-sgd"
CITATIONS = (
    'Neyshabur, Salakhutdinov & Srebro, "Path-SGD: Path-Normalized Optimization in Deep Neural Networks", NeurIPS 2015',
)  # the papers, by title, for the report
TITLE = "Path-SGD (Neyshabur, Salakhutdinov & Srebro 2015)"
PAPER = "Neyshabur, Salakhutdinov & Srebro 2015"
# relative gap in training loss after one epoch between initializations that float32 rounding explains
INVARIANCE_TOLERANCE = 1e-3
BASELINES = ("sgd", "adagrad")  # the paper's comparisons (Adam, when run, is shown but not claimed about)


@dataclass
class PathSGDExperiment(Protocol, name=NAME):
    """Plain-data configuration of the experiment; every field can be set with ``--set key=value``."""

    datasets: tuple[str, ...] = ("mnist", "cifar10")
    data_dir: str | None = None
    widths: tuple[int, ...] = (4000, 4000)
    optimizers: tuple[str, ...] = ("sgd", "adagrad", "adam", "path-sgd")
    inits: tuple[str, ...] = ("kaiming", "unbalanced")
    lrs: dict[str, list[float]] = field(default_factory=lambda: {
        "sgd": [0.003, 0.01, 0.03, 0.1, 0.3],
        "adagrad": [0.001, 0.003, 0.01, 0.03, 0.1],
        "adam": [1e-4, 3e-4, 1e-3, 3e-3],
        "path-sgd": [0.003, 0.01, 0.03, 0.1, 0.3],
    })
    epochs: int = 100
    batch_size: int = 100
    train_size: int | None = None
    val_fraction: float = 0.1  # of the training set, for choosing learning rates
    max_extensions: int = 2  # grid-edge rule: steps allowed past each end of a learning-rate grid
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)

    @classmethod
    def quick(cls) -> PathSGDExperiment:
        return cls(datasets=("mnist1d", "digits"), widths=(256, 256), epochs=20,
                   optimizers=("sgd", "adagrad", "path-sgd"), lrs={
                       "sgd": [0.03, 0.1, 0.3],
                       "adagrad": [0.01, 0.03, 0.1],
                       "adam": [3e-4, 1e-3, 3e-3],
                       "path-sgd": [0.1, 0.3, 1.0],
                   }, seeds=(0, 1, 2))

    @classmethod
    def mid(cls) -> PathSGDExperiment:
        return cls(datasets=("fashion-mnist",), widths=(1000, 1000), epochs=10, train_size=10000,
                   optimizers=("sgd", "adagrad", "path-sgd"), lrs={
                       "sgd": [0.01, 0.03, 0.1],
                       "adagrad": [0.003, 0.01, 0.03],
                       "adam": [1e-4, 3e-4, 1e-3],
                       "path-sgd": [0.01, 0.03, 0.1],
                   }, seeds=(0, 1, 2))

    def check(self) -> None:
        missing = [o for o in self.optimizers if o not in self.lrs]
        if missing:
            raise ValueError(f"{NAME}: no learning-rate grid in `lrs` for optimizer(s) {missing}")


CONFIG = PathSGDExperiment  # the config class (geomopt results check rebuilds it from experiment.json)


def _problems(exp: PathSGDExperiment, root: Path) -> dict[tuple[str, str, str], Problem]:
    def make(data: str, init: str, opt: str):
        return lambda lr, seed: TrainConfig(
            model="mlp", widths=exp.widths, data=data, data_dir=exp.data_dir, init=init, optimizer=opt, lr=lr,
            epochs=exp.epochs, batch_size=exp.batch_size, seed=seed, train_size=exp.train_size,
            val_fraction=exp.val_fraction)
    return {(data, init, opt): Problem(Grid(tuple(exp.lrs[opt]), max_steps=exp.max_extensions), make(data, init, opt),
                                       root / "runs" / data / init / opt)
            for data in exp.datasets for init in exp.inits for opt in exp.optimizers}


def _run(ctx: Context) -> Ran:
    """Every (dataset, init, optimizer)'s learning rate tuned on validation accuracy over the seeds."""
    exp, root = ctx.exp, ctx.root
    tuned = tune(_problems(exp, root), exp.seeds, jobs=ctx.jobs, desc=NAME, score="val_acc", minimize=False,
                 overwrite=ctx.overwrite)

    def row(key, lr, seed, s, t):
        data, init, opt = key
        return {"dataset": data, "init": init, "optimizer": opt, "lr": lr, "seed": seed,
                "train_loss": s["train_loss"], "val_loss": s.get("val_loss"), "train_err": 1 - s["train_acc"],
                "val_err": 1 - s["val_acc"] if "val_acc" in s else None, "test_err": 1 - s["test_acc"],
                "diverged": bool(s.get("diverged", False)), **selected(t, lr, s)}

    def epoch(key, r):
        return {"epoch": r["epoch"], "train_loss": r["train_loss"], "test_err": 1 - r["test_acc"],
                **({"val_err": 1 - r["val_acc"]} if "val_acc" in r else {})}
    return Ran(tuned_records(exp, tuned, root, row, epoch), compute_seconds(tuned), tuned)


def _report(ctx: Context, records: Records, ran: Ran) -> Report:
    """The table of each optimizer at its chosen learning rate, the loss and error curves, the protocol."""
    exp, tuned = ctx.exp, ran.state
    columns = ["dataset", "init", "optimizer", "chosen lr", "final train loss", "validation error %", "test error %"]
    table_rows = []
    for (data, init, opt), t in tuned.items():
        chosen = records.where(dataset=data, init=init, optimizer=opt, chosen=True)
        diverged = sum(bool(r["diverged"]) for r in chosen)
        val_err = [r["val_err"] for r in chosen]
        table_rows.append([data, init, opt, t.selection.label, seed_stats([r["train_loss"] for r in chosen]).fmt()
                           + (f" ({diverged} of {len(chosen)} seeds DIVERGED)" if diverged else ""),
                           seed_stats(val_err).fmt(100, bounds=(0, 1)) if None not in val_err else "diverged",
                           seed_stats([r["test_err"] for r in chosen]).fmt(100, bounds=(0, 1))])
    figures = []
    for field_name, label, fname in [("train_loss", "training cross-entropy", "train_loss.png"),
                                     ("test_err", "test error (%)", "test_error.png")]:
        panels: dict[str, dict[str, tuple[list[float], ...]]] = {}
        for (data, init, opt), t in tuned.items():
            runs = [r["run"] for r in records.where(dataset=data, init=init, optimizer=opt, chosen=True)
                    if not r["diverged"]]
            if runs:
                panels.setdefault(f"{data}, {init} init", {})[f"{opt} (lr {t.value:g})"] = seed_band(
                    [records.curve(run, field_name) for run in runs], scale=100 if field_name == "test_err" else 1)
        plot_bands(panels, ctx.root / fname, xlabel="epoch", ylabel=label, logy=field_name == "train_loss",
                   bounds=None if field_name == "train_loss" else (0, 100))
        figures.append({"file": fname, "caption": f"{label} per epoch, each optimizer at its chosen learning rate: "
                                                  f"mean over seeds {list(exp.seeds)} with its 95% interval."})
    paragraphs = [
        f"Protocol ({ctx.tier} tier): MLP {'-'.join(map(str, exp.widths))} hidden ReLU units, batch {exp.batch_size}, "
        f"{exp.epochs} epochs, datasets {', '.join(exp.datasets)}"
        + (f" ({exp.train_size} training examples)" if exp.train_size else "") + f", seeds {list(exp.seeds)}; "
        f"learning rate per optimizer chosen from "
        f"{json.dumps({o: exp.lrs[o] for o in exp.optimizers})} by the highest mean validation accuracy over seeds "
        f"(each run scored by the mean of its last epochs; {100 * exp.val_fraction:g}% of the training set held out; "
        f"a best value at a grid's edge extends the grid by up to {exp.max_extensions} steps). The unbalanced "
        "initialization is the balanced (He) one with every hidden unit rescaled by its own random factor "
        "(incoming weights times c, outgoing divided by c, c log-uniform in [0.1, 10]): the same function, badly "
        f"scaled units. Run-quality gate of every compared run: {GATE_TEXT}.",
    ]
    return Report(paragraphs, tables=[{"caption": "Each optimizer at its chosen learning rate: mean [95% interval] "
                                                  "over seeds", "columns": columns, "rows": table_rows}],
                  figures=figures)


def init_gaps(records: Records, opt: str) -> list[float]:
    """Per seed, the median over (dataset, learning rate of the initial grid) of the relative spread of
    the training loss across initializations after epoch 1 (runs that diverged are left out)."""
    exp = records.exp
    per_seed = []
    for seed in exp.seeds:
        gaps = []
        for data in exp.datasets:
            for lr in exp.lrs[opt]:
                runs = [records.where(dataset=data, init=init, optimizer=opt, lr=lr, seed=seed) for init in exp.inits]
                if any(len(r) != 1 or r[0]["diverged"] for r in runs):
                    continue
                first = [records.curve(r[0]["run"], "train_loss")[1] for r in runs]
                gaps.append((max(first) - min(first)) / min(first))
        per_seed.append(statistics.median(gaps) if gaps else float("inf"))
    return per_seed


def _invariance(records: Records) -> Outcome:
    exp = records.exp
    gaps = init_gaps(records, "path-sgd")
    if not all(math.isfinite(g) for g in gaps):
        return untestable("no learning rate of the initial grid ran without diverging from both initializations in "
                          "every seed")
    out = less(gaps, INVARIANCE_TOLERANCE, label="gap - tolerance", scale=100, digits=2)
    contrast = {o: init_gaps(records, o) for o in exp.optimizers if o != "path-sgd"}
    ours = (f"median epoch-1 gap {seed_stats(gaps).fmt(100, 2)} % (tolerance {100 * INVARIANCE_TOLERANCE:g} %); "
            + ", ".join(f"{o}: {seed_stats(g).fmt(100, 2)} %" for o, g in contrast.items()))
    return Outcome(out.verdict, ours, {**out.numbers, "contrast": contrast}, out.why)


def _beats(metric: str, init: str):
    """Path-SGD's final ``metric`` (train_loss, or test_err) below each baseline's, on every dataset."""
    def test(records: Records) -> Outcome:
        exp = records.exp
        parts, compared = {}, []
        for data in exp.datasets:
            mine = records.where(dataset=data, init=init, optimizer="path-sgd", chosen=True)
            for other in [o for o in BASELINES if o in exp.optimizers]:
                theirs = records.where(dataset=data, init=init, optimizer=other, chosen=True)
                parts[f"{data} vs {other}"] = less([r[metric] for r in mine], [r[metric] for r in theirs],
                                                   label=f"Path-SGD - {other}", scale=1 if metric == "train_loss" else 100)
                compared += mine + theirs
        return gated(all_of(parts), gate_failures(records, list({r["run"]: r for r in compared}.values()), GATE,
                                                  _describe_run))
    return test


def claims(exp: PathSGDExperiment) -> list[Claim]:
    """The paper's claims this experiment can test (those needing an optimizer or init it did not run are left out)."""
    out = []
    if "path-sgd" in exp.optimizers and len(exp.inits) > 1:
        out.append(Claim("invariant", "Path-SGD is invariant to node rescaling: from the unbalanced init it trains "
                         "as from the balanced one", PAPER, "Sec. 3", "exact (by construction)", _invariance))
    if "path-sgd" not in exp.optimizers or not any(o in exp.optimizers for o in BASELINES):
        return out
    for init in exp.inits:
        name = "balanced" if init == "kaiming" else init
        out.append(Claim(f"train-loss-{name}", f"Path-SGD reaches a lower training loss than SGD and AdaGrad "
                         f"({name} init)", PAPER, "Fig. 2", "lower on MNIST, CIFAR-10, CIFAR-100, SVHN (curves, "
                         "no table); gap largest from the unbalanced init", _beats("train_loss", init)))
        out.append(Claim(f"test-error-{name}", f"Path-SGD reaches a lower test error than SGD and AdaGrad "
                         f"({name} init)", PAPER, "Fig. 2", "lower on the 4 datasets (curves, no table)",
                         _beats("test_err", init)))
    return out


GATE = RunGate(drop=0.5, rebound=0.5)
GATE_TEXT = ("finite, final training loss at most half its value before training (it learned) and at most 1.5x its "
             "best (stable at the end), selected learning rate not at a grid edge after extension")


def _describe_run(r: dict[str, Any]) -> str:
    return f"{r['dataset']}, {r['init']} init, {r['optimizer']} lr {r['lr']:g} seed {r['seed']}"


EXPERIMENT = Experiment(NAME, PathSGDExperiment, TITLE, CITATIONS, order=10, run=_run, claims=claims, report=_report,
                        describe=_describe_run, unconverged_above=chance_loss)
reproduce = EXPERIMENT.reproduce
