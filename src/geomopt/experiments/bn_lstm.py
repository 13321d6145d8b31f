"""Reproduction: recurrent batch normalization (BN-LSTM) against the LSTM.

Cooijmans, Ballas, Laurent, Gulcehre & Courville, "Recurrent Batch Normalization", 2016.
Protocol: LSTM vs BN-LSTM (and BN-RNN) with 100 hidden units on sequential and permuted pixel
classification (and character-level language modelling on a local text file); the paper reports
faster convergence and better generalization for BN-LSTM: test accuracy MNIST 98.9 -> 99.0, pMNIST
90.2 -> 95.4 (RMSProp 1e-3), Penn Treebank characters 1.38 -> 1.32 bits per character.

Each model's learning rate is chosen on a validation split carved from the training set (the text's own
validation part for ``chars``), highest mean validation accuracy over seeds with the grid-edge rule
(``geomopt.experiments.tuning``); numbers are over seeds (``--seeds N``: 3 in the quick and mid tiers, 5 in full)
and the claims are tested across them (``claims.json``).

Tiers: ``quick``: sequential and permuted digits (64 steps), LSTM and BN-LSTM, 100 units, Adam with the
learning rate chosen from {3e-3, 1e-2} (one extension step allowed; with {1e-3, 3e-3} three of the four
selections ended at the high edge 9e-3), 6 epochs, 3 seeds. ``mid``: row-by-row Fashion-MNIST
(``rows-fashion-mnist``, T = 28 steps of 28 pixels; Debian's ``dataset-fashion-mnist``), 10,000 training
images (9,000 after the validation split) and the 10,000 test images, 100 units, both models from the learning
rates {1e-3, 3e-3, 1e-2} (one extension step at an edge: equal care for both), 15 epochs, 3 seeds. It can test
the headline (faster convergence, better test accuracy) on real images: both models learn within the budget
(in timed runs at lr 3e-3, training cross-entropy 2.3 -> 0.51 (BN-LSTM) and 0.60 (LSTM) after 2 epochs, test
accuracy 81.5% and 77.4%), so the averaged training loss compares converging runs and the accuracies are far
from chance and from a ceiling. Cost, from those runs (CPU seconds of one core, evaluation included): about 10
s per epoch for the BN-LSTM and 3.5 s for the LSTM, so 18 runs in about 30 minutes with ``--jobs 1`` (about 40
with a grid extension). ``full``: sequential and permuted MNIST (784 steps) from ``data_dir`` and, with
``text`` set to a local text file, character-level modelling; BN-RNN too, 5 seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomopt.experiments.records import Records, gate_failures
from geomopt.experiments.skeleton import (Context, Experiment, Protocol, Ran, Report, chance_loss, seed_band, selected,
                                          tuned_records)
from geomopt.experiments.tuning import Problem, compute_seconds, tune
from geomopt.report import plot_bands
from geomopt.sweep import Claim, Grid, Outcome, RunGate, all_of, gated, greater, less, seed_stats, untestable
from geomopt.train import TrainConfig

NAME = "bn-lstm"
CITATIONS = (
    'Cooijmans, Ballas, Laurent, Gulcehre & Courville, "Recurrent Batch Normalization", ICLR 2017',
    'Laurent, Pereyra, Brakel, Zhang & Bengio, "Batch Normalized Recurrent Neural Networks", ICASSP 2016',
)  # the papers, by title, for the report
TITLE = "Recurrent batch normalization (Cooijmans et al. 2016)"
PAPER = "Cooijmans, Ballas, Laurent, Gulcehre & Courville 2016"
PUBLISHED = {  # test accuracy % (Cooijmans et al. 2016, table 1), bits per character (table 2)
    ("seq-mnist", "lstm"): 98.9, ("seq-mnist", "bnlstm"): 99.0,
    ("seq-mnist-perm", "lstm"): 90.2, ("seq-mnist-perm", "bnlstm"): 95.4,
    ("chars", "lstm"): 1.38, ("chars", "bnlstm"): 1.32,
}


@dataclass
class BNLSTMExperiment(Protocol, name=NAME):
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    datasets: tuple[str, ...] = ("seq-mnist", "seq-mnist-perm")
    data_dir: str | None = None
    text: str | None = None
    text_seq_len: int = 100
    models: tuple[str, ...] = ("lstm", "bnlstm", "bnrnn")
    hidden: int = 100
    optimizer: str = "adam"
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    val_fraction: float = 0.1
    max_extensions: int = 2
    epochs: int = 20
    batch_size: int = 64
    max_grad_norm: float | None = 1.0
    train_size: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)

    @classmethod
    def quick(cls) -> BNLSTMExperiment:
        return cls(datasets=("seq-digits", "seq-digits-perm"), models=("lstm", "bnlstm"), lrs=(3e-3, 1e-2),
                   max_extensions=1, epochs=6, seeds=(0, 1, 2))

    @classmethod
    def mid(cls) -> BNLSTMExperiment:
        return cls(datasets=("rows-fashion-mnist",), models=("lstm", "bnlstm"), lrs=(1e-3, 3e-3, 1e-2),
                   max_extensions=1, epochs=15, train_size=10_000, seeds=(0, 1, 2))


CONFIG = BNLSTMExperiment  # the config class (geomopt results check rebuilds it from experiment.json)


def _problems(exp: BNLSTMExperiment, root: Path) -> dict[tuple[str, str], Problem]:
    def make(data: str, model: str):
        chars = data == "chars"
        return lambda lr, seed: TrainConfig(
            model=model, widths=(exp.hidden,), data=data, data_dir=exp.text if chars else exp.data_dir,
            seq_len=exp.text_seq_len if chars else None, optimizer=exp.optimizer, lr=lr, epochs=exp.epochs,
            batch_size=exp.batch_size, max_grad_norm=exp.max_grad_norm, train_size=exp.train_size, seed=seed,
            val_fraction=0.0 if chars else exp.val_fraction)  # the text has its own validation part
    datasets = list(exp.datasets) + (["chars"] if exp.text else [])
    return {(data, model): Problem(Grid(exp.lrs, max_steps=exp.max_extensions), make(data, model),
                                   root / "runs" / data / model)
            for data in datasets for model in exp.models}


def _final(data: str, summary: dict[str, Any]) -> float:
    """Test accuracy % (bits per character for ``chars``; a diverged run: 0 % or inf)."""
    if data == "chars":
        return summary["test_loss"] / math.log(2)
    return 100 * summary["test_acc"]


def _run(ctx: Context) -> Ran:
    """Every (dataset, model)'s learning rate tuned on validation accuracy over the seeds; one row per run
    (final number, selection) with its per-epoch training loss and test error (or bits per character)."""
    exp, root = ctx.exp, ctx.root
    tuned = tune(_problems(exp, root), exp.seeds, jobs=ctx.jobs, desc=NAME, score="val_acc", minimize=False,
                 overwrite=ctx.overwrite)

    def row(key, lr, seed, s, t):
        data, model = key
        return {"dataset": data, "model": model, "lr": lr, "seed": seed, "final": _final(data, s),
                "metric": "test bits/char" if data == "chars" else "test accuracy %",
                "val_loss": s.get("val_loss"), "train_loss": s["train_loss"],
                "diverged": bool(s.get("diverged", False)), **selected(t, lr, s)}

    def epoch(key, r):
        return {"epoch": r["epoch"], "train_loss": r["train_loss"],
                "test": r["test_loss"] / math.log(2) if key[0] == "chars" else 1 - r["test_acc"]}
    return Ran(tuned_records(exp, tuned, root, row, epoch), compute_seconds(tuned), tuned)


def _report(ctx: Context, records: Records, ran: Ran) -> Report:
    """The final numbers beside the paper's, the test curves, the protocol."""
    exp = ctx.exp
    table, panels = [], {}
    for data, model in dict.fromkeys((r["dataset"], r["model"]) for r in records.rows):
        rows = _chosen(records, data, model)
        paper = PUBLISHED.get((data, model))
        diverged = sum(bool(r["diverged"]) for r in rows)
        stats = seed_stats([r["final"] for r in rows])
        edge = f" ({rows[0]['edge']} edge)" if rows[0]["edge"] else ""
        table.append([data, model, f"{rows[0]['lr']:g}{edge}", rows[0]["metric"],
                      stats.fmt(bounds=None if data == "chars" else (0, 100))
                      + (f" ({diverged} of {len(rows)} seeds DIVERGED)" if diverged else ""),
                      paper if paper is not None else "-"])
        curves = [records.curve(r["run"], "test") for r in rows if not r["diverged"]]
        if curves:
            panels.setdefault(data, {})[f"{model} (lr {rows[0]['lr']:g})"] = seed_band(
                curves, scale=1 if data == "chars" else 100)
    columns = ["dataset", "model", "chosen lr", "metric", "ours: mean [95% interval]", "paper (Cooijmans et al. 2016)"]
    plot_bands(panels, ctx.root / "test_curves.png", xlabel="epoch", ylabel="test error (%; bits/char for chars)",
               bounds=(0, math.inf))
    paragraphs = [
        f"Protocol ({ctx.tier} tier): {exp.hidden} hidden units, {exp.optimizer} with the learning rate chosen from "
        f"{list(exp.lrs)} on {100 * exp.val_fraction:g}% of the training set held out (highest mean over seeds of "
        f"each run's validation accuracy averaged over its last epochs, grid extended by up to {exp.max_extensions} "
        f"step(s) at an edge), batch {exp.batch_size}, {exp.epochs} epochs, gradient norm clipped at "
        f"{exp.max_grad_norm}; models {', '.join(exp.models)}; datasets "
        f"{', '.join(dict.fromkeys(d for d, _ in ran.state))}"
        + (f" ({exp.train_size} training examples)" if exp.train_size else "") + f"; seeds {list(exp.seeds)}. "
        "BN-LSTM: separate BN of W_h h and W_x x (gamma 0.1, no shift), BN of c_t, statistics per time step; BN-RNN: "
        "ReLU RNN with the same recurrent BN. The paper used RMSProp 1e-3; the paper's numbers are for MNIST "
        "(784 steps) and Penn Treebank.",
        f"Run-quality gate of every compared run: {GATE_TEXT}.",
    ]
    return Report(paragraphs, tables=[{"caption": "Final test numbers at the chosen learning rate beside the paper's",
                                       "columns": columns, "rows": table}],
                  figures=[{"file": "test_curves.png", "caption": "Test error (%; bits per character for "
                            "chars) per epoch at the chosen learning rate: mean over seeds with its 95% "
                            "interval."}])


# ----------------------------------------------------------------------------- gates and claims

GATE = RunGate(drop=0.5, rebound=0.5)
GATE_TEXT = ("finite, final training loss at most half its value before training (it learned) and at most 1.5x its "
             "best (stable at the end), selected learning rate not at a grid edge after extension")


def _chosen(records: Records, data: str, model: str) -> list[dict[str, Any]]:
    return sorted(records.where(dataset=data, model=model, chosen=True), key=lambda r: r["seed"])


def mean_train_loss(records: Records, row: dict[str, Any]) -> float:
    """A run's training loss averaged over epochs 1..E (the area under its training curve: lower = faster)."""
    losses = records.curve(row["run"], "train_loss")[1:]
    return math.inf if row["diverged"] or not losses else math.fsum(losses) / len(losses)


def _compare(value, test, unit: str):
    """BN-LSTM against the LSTM on every dataset, per seed: ``test(bn, lstm)`` on ``value(records, row)``."""
    def run(records: Records) -> Outcome:
        parts, failures = {}, []
        for data in dict.fromkeys(r["dataset"] for r in records.rows):
            bn, lstm = _chosen(records, data, "bnlstm"), _chosen(records, data, "lstm")
            if not bn or not lstm:
                continue
            parts[data] = test(data)([value(records, r) for r in bn], [value(records, r) for r in lstm],
                                     label=f"BN-LSTM - LSTM {unit(data)}")
            failures += gate_failures(records, bn + lstm, GATE, _describe_run)
        if not parts:
            return untestable("the LSTM and the BN-LSTM were not both run on any dataset")
        return gated(all_of(parts), failures)
    return run


def claims(exp: BNLSTMExperiment) -> list[Claim]:
    """BN-LSTM vs LSTM (both must be run)."""
    if "lstm" not in exp.models or "bnlstm" not in exp.models:
        return []
    final = _compare(lambda records, r: float(r["final"]), lambda d: less if d == "chars" else greater,
                     lambda d: "bits/char" if d == "chars" else "test accuracy %")
    speed = _compare(mean_train_loss, lambda d: less, lambda d: "mean training loss over epochs")
    return [Claim("generalizes-better", "BN-LSTM reaches a better test accuracy (bits/char) than the LSTM",
                  PAPER, "Sec. 5, Tables 1 and 2", "test accuracy MNIST 98.9 -> 99.0 %, permuted MNIST 90.2 -> 95.4 %; "
                  "Penn Treebank 1.38 -> 1.32 bits/char", final),
            Claim("converges-faster", "BN-LSTM trains faster than the LSTM (lower training loss averaged over "
                  "the epochs)", PAPER, "Sec. 5, Figures 1 and 2", "faster convergence on every task (training "
                  "curves, no table)", speed)]


def _describe_run(r: dict[str, Any]) -> str:
    return f"{r['dataset']}, {r['model']} lr {r['lr']:g} seed {r['seed']}"


def _unconverged_above(r: dict[str, Any]) -> float:
    return math.inf if r["dataset"] == "chars" else chance_loss(r)


EXPERIMENT = Experiment(NAME, BNLSTMExperiment, TITLE, CITATIONS, order=50, run=_run, claims=claims, report=_report,
                        describe=_describe_run, unconverged_above=_unconverged_above)
reproduce = EXPERIMENT.reproduce
