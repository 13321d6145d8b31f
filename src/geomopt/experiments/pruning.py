"""Reproduction: pruning by loss modelling, and the locality of pruning steps.

Laurent, Ballas, George, Schwartz & Vincent, "Revisiting Loss Modelling for Unstructured
Pruning", 2020. Protocol: an MLP 300-100 trained to convergence, pruned globally to high
sparsity by magnitude (MP), the linear (LM) and quadratic (QM) loss models, OBD and Kronecker-factored OBS (kobs), in
k = 1, 14, 140 steps (each removing r = 1 - (1 - p)^(1/k) of what is left, scores recomputed on
the masked network from 1000 examples), then fine-tuned with the mask. The paper's findings:
locality (many small steps) is crucial; first- and second-order models end up similar; a better
loss right after pruning does not mean a better network after fine-tuning.

The dense network's learning rate is chosen on a validation split carved from the training set (highest
mean validation accuracy over seeds, grid-edge rule: ``geomopt.experiments.tuning``); every number is over
seeds (``--seeds N``: 3 with ``--quick``, 5 in full) and the claims are tested across them
(``claims.json``).

``--quick``: digits, sparsity 0.95, k in {1, 14}, MP/LM/QM/OBD, 500 examples. Full protocol: MNIST from
``data_dir`` at 98.85% sparsity, k in {1, 14, 140}, with Kronecker OBS.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from geomopt.experiments.config import experiment_dir, merge_overrides, seed_list
from geomopt.experiments.tuning import Problem, compute_seconds, edge_caveats, tune
from geomopt.prune import prune_run
from geomopt.report import Section, write_records, write_section, write_tables
from geomopt.report.figures import plt
from geomopt.sweep import Claim, Grid, Outcome, all_of, less, seed_stats, write_claims
from geomopt.train import TrainConfig

NAME = "pruning"
CITATIONS = (
    'Laurent, Ballas, George, Schwartz & Vincent, "Revisiting Loss Modelling for Unstructured Pruning", 2020',
)  # the papers, by title, for the report
TITLE = "Pruning by loss modelling (Laurent et al. 2020)"
PAPER = "Laurent, Ballas, George, Schwartz & Vincent 2020"
SECOND_ORDER = ("qm", "obd", "kobs")
SIMILAR = 1.0  # accuracy points: "end up similar" after fine-tuning


@dataclass
class PruningExperiment:
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    datasets: tuple[str, ...] = ("mnist",)
    data_dir: str | None = None
    widths: tuple[int, ...] = (300, 100)
    train_epochs: int = 30
    lrs: tuple[float, ...] = (0.03, 0.1, 0.3)  # the dense network's, chosen on validation data
    val_fraction: float = 0.1
    max_extensions: int = 2
    batch_size: int = 100
    sparsity: float = 0.9885
    criteria: tuple[str, ...] = ("mp", "lm", "qm", "obd", "kobs")
    steps: tuple[int, ...] = (1, 14, 140)
    examples: int = 1000
    locality: float = 0.0
    finetune_epochs: int = 10
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)

    @classmethod
    def quick(cls) -> PruningExperiment:
        return cls(datasets=("digits",), train_epochs=30, sparsity=0.95, steps=(1, 14), examples=500,
                   criteria=("mp", "lm", "qm", "obd"), finetune_epochs=5, seeds=(0, 1, 2))

    def replace(self, overrides: dict[str, Any]) -> PruningExperiment:
        d = merge_overrides(self, overrides, NAME)
        return PruningExperiment(**d)


def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False, seeds: int | None = None) -> Path:
    """Tune and train the dense networks (skipping finished ones), prune each with every criterion and
    number of steps (skipping finished prunings), then write the table, figure, claims and section."""
    overrides = dict(overrides or {})
    chosen = seed_list(seeds, quick, overrides)
    if chosen is not None:
        overrides["seeds"] = chosen
    exp = (PruningExperiment.quick() if quick else PruningExperiment()).replace(overrides)
    root = experiment_dir(out, NAME, exp)

    def make(data: str):
        return lambda lr, seed: TrainConfig(model="mlp", widths=exp.widths, data=data, data_dir=exp.data_dir,
                                            optimizer="sgd", lr=lr, epochs=exp.train_epochs,
                                            batch_size=exp.batch_size, seed=seed, val_fraction=exp.val_fraction)
    tuned = tune({d: Problem(Grid(exp.lrs, max_steps=exp.max_extensions), make(d), root / "dense" / d)
                  for d in exp.datasets}, exp.seeds, jobs=jobs, desc=f"{NAME}: dense", score="val_acc",
                 minimize=False, overwrite=overwrite)

    rows = []
    todo = [(d, s, c, k) for d in exp.datasets for s in exp.seeds for c in exp.criteria for k in exp.steps]
    for data, seed, criterion, steps in tqdm(todo, desc=f"{NAME}: prune"):
        lr = tuned[data].value
        target = root / "pruned" / data / f"lr{lr:g}" / f"seed{seed}" / f"{criterion}-k{steps}"
        done = target / "prune.json"
        dense = tuned[data].runs[lr, seed][1]
        record = json.loads(done.read_text()) if done.is_file() else prune_run(
            dense, criterion=criterion, target_sparsity=exp.sparsity, steps=steps,
            finetune_epochs=exp.finetune_epochs, n_examples=exp.examples, locality=exp.locality, out=target,
            progress=False)
        rows.append({"dataset": data, "seed": seed, "dense_lr": lr, "criterion": criterion, "steps": steps,
                     "dense_test_acc": record["dense_test_acc"], "pruned_train_loss": record["pruned_train_loss"],
                     "pruned_test_acc": record["pruned_test_acc"],
                     "finetuned_test_acc": record.get("finetuned_test_acc", math.nan),
                     "history": record["history"]})
    write_records(root / "results.csv", rows, exclude=["history"],
                  key=("dataset", "seed", "dense_lr", "criterion", "steps"))

    table = []
    for data in exp.datasets:
        for criterion in exp.criteria:
            for steps in exp.steps:
                rs = [r for r in rows if (r["dataset"], r["criterion"], r["steps"]) == (data, criterion, steps)]
                table.append([data, criterion, steps, _fmt(r["pruned_train_loss"] for r in rs),
                              _fmt((r["pruned_test_acc"] for r in rs), 100),
                              _fmt((r["finetuned_test_acc"] for r in rs), 100),
                              _fmt((r["dense_test_acc"] for r in rs), 100)])
    columns = ["dataset", "criterion", "steps k", "train loss after pruning", "test acc % after pruning",
               "test acc % after fine-tuning", "dense test acc %"]
    write_tables(root / "table.csv", (columns, table))
    _figure(rows, root / "predicted_vs_actual.png")
    seconds = compute_seconds(tuned)  # the dense networks; pruning and fine-tuning time is not recorded
    write_claims(root, NAME, claims(exp), {"exp": exp, "rows": rows, "tuned": tuned}, title=TITLE, seeds=exp.seeds,
                 seconds=seconds, quick=quick)
    lrs = ", ".join(f"{d} {t.selection.note}" for d, t in tuned.items())
    paragraphs = [
        f"Protocol: MLP {'-'.join(map(str, exp.widths))} trained with SGD ({exp.train_epochs} epochs, learning rate "
        f"chosen on {100 * exp.val_fraction:g}% of the training set held out: {lrs}), pruned globally to "
        f"{100 * exp.sparsity:g}% of its Linear weights (biases kept) in k in {list(exp.steps)} steps, scores on "
        f"{exp.examples} training examples, locality lambda = {exp.locality}, fine-tuned {exp.finetune_epochs} "
        f"epochs with the mask; datasets {', '.join(exp.datasets)}; seeds {list(exp.seeds)}.",
    ]
    section = Section(citations=list(CITATIONS), title=TITLE, paragraphs=paragraphs,
                      tables=[{"caption": "Mean [95% interval] over seeds", "columns": columns, "rows": table}],
                      figures=[{"file": "predicted_vs_actual.png",
                                "caption": "Loss change predicted by each loss model vs the actual change, one point "
                                           "per pruning step (log-log of absolute values), all seeds."}], order=40)
    return write_section(root, section)


def _fmt(values, scale: float = 1.0) -> str:
    vs = [v for v in values if v is not None and not math.isnan(v)]
    return seed_stats(vs).fmt(scale) if vs else "-"


def _per_seed(exp: PruningExperiment, rows: list[dict[str, Any]], data: str, criterion: str, steps: int,
              key: str) -> list[float]:
    by_seed = {r["seed"]: r[key] for r in rows
               if (r["dataset"], r["criterion"], r["steps"]) == (data, criterion, steps)}
    return [float(by_seed[s]) for s in exp.seeds]


def _locality(results: dict[str, Any]) -> Outcome:
    exp, rows = results["exp"], results["rows"]
    few, many = min(exp.steps), max(exp.steps)
    parts = {f"{d} {c}": less(_per_seed(exp, rows, d, c, many, "pruned_train_loss"),
                              _per_seed(exp, rows, d, c, few, "pruned_train_loss"), label=f"loss k={many} - k={few}")
             for d in exp.datasets for c in exp.criteria if c != "mp"}
    return all_of(parts).with_caveats(*edge_caveats(results["tuned"]))


def _similar(results: dict[str, Any]) -> Outcome:
    exp, rows = results["exp"], results["rows"]
    k = max(exp.steps)
    parts = {}
    for d in exp.datasets:
        for c in (c for c in exp.criteria if c in SECOND_ORDER):
            gap = [abs(a - b) * 100 for a, b in zip(_per_seed(exp, rows, d, "lm", k, "finetuned_test_acc"),
                                                    _per_seed(exp, rows, d, c, k, "finetuned_test_acc"))]
            parts[f"{d} lm vs {c}"] = less(gap, SIMILAR, label="|acc gap| - 1 point")
    return all_of(parts).with_caveats(*edge_caveats(results["tuned"]))


def claims(exp: PruningExperiment) -> list[Claim]:
    """Locality (needs two step counts and a loss-model criterion); LM ~ second order (needs LM and one of them)."""
    out = []
    if len(exp.steps) > 1 and any(c != "mp" for c in exp.criteria):
        out.append(Claim("locality", f"Pruning in {max(exp.steps)} steps leaves a lower training loss right after "
                         f"pruning than in {min(exp.steps)} (loss-model criteria)", PAPER, "locality experiments",
                         "crucial at high sparsity (MLP 300-100 on MNIST at 98.85%)", _locality))
    if "lm" in exp.criteria and any(c in SECOND_ORDER for c in exp.criteria) and exp.finetune_epochs > 0:
        out.append(Claim("first-vs-second-order", f"With {max(exp.steps)} steps, first-order (LM) and second-order "
                         f"criteria end up within {SIMILAR:g} accuracy point after fine-tuning", PAPER,
                         "MLP / VGG11 / PreActResNet18 tables", "similar accuracy after fine-tuning", _similar))
    return out


def _figure(rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for criterion in sorted({r["criterion"] for r in rows} - {"mp"}):
        xs, ys = [], []
        for r in rows:
            if r["criterion"] == criterion:
                for h in r["history"]:
                    if h["predicted_change"] is not None:
                        xs.append(abs(h["predicted_change"]) + 1e-8)
                        ys.append(abs(h["actual_change"]) + 1e-8)
        ax.scatter(xs, ys, s=8, alpha=0.6, label=criterion)
    ax.set_xscale("log")
    ax.set_yscale("log")
    lims = [1e-8, 10]
    ax.plot(lims, lims, "k--", linewidth=0.8, label="predicted = actual")
    ax.set_xlabel("|predicted loss change|")
    ax.set_ylabel("|actual loss change|")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
