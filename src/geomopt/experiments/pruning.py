"""Reproduction: pruning by loss modelling, and the locality of pruning steps.

Laurent, Ballas, George, Schwartz & Vincent, "Revisiting Loss Modelling for Unstructured
Pruning", 2020. Protocol: an MLP 300-100 trained to convergence, pruned globally to high
sparsity by magnitude (MP), the linear (LM) and quadratic (QM) loss models, OBD and Kronecker-factored OBS (kobs), in
k = 1, 14, 140 steps (each removing r = 1 - (1 - p)^(1/k) of what is left, scores recomputed on
the masked network from 1000 examples), then fine-tuned with the mask. The paper's findings:
locality (many small steps) is crucial; first- and second-order models end up similar; a better
loss right after pruning does not mean a better network after fine-tuning.

``--quick``: digits and MNIST-1D, sparsity 0.95, k in {1, 14}, 500 examples. Full protocol:
MNIST from ``data_dir`` at 98.85% sparsity, k in {1, 14, 140}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from geomopt.experiments.config import experiment_dir, merge_overrides
from geomopt.sweep import run_all
from geomopt.prune import prune_run
from geomopt.report import Section, write_records, write_section, write_tables
from geomopt.report.figures import plt
from geomopt.train import TrainConfig

NAME = "pruning"
PAPER = ("Laurent et al. (2020), MLP 300-100 on MNIST at 98.85% sparsity, VGG11 and PreActResNet18 on CIFAR-10 at "
         "95.6%: pruning in many steps (locality) is crucial; with it, first-order (LM) and second-order (QM, OBD) "
         "loss models end up similar; a better loss right after pruning does not imply a better network after "
         "fine-tuning.")


@dataclass
class PruningExperiment:
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    datasets: tuple[str, ...] = ("mnist",)
    data_dir: str | None = None
    widths: tuple[int, ...] = (300, 100)
    train_epochs: int = 30
    lr: float = 0.1
    batch_size: int = 100
    sparsity: float = 0.9885
    criteria: tuple[str, ...] = ("mp", "lm", "qm", "obd", "kobs")
    steps: tuple[int, ...] = (1, 14, 140)
    examples: int = 1000
    locality: float = 0.0
    finetune_epochs: int = 10
    seeds: tuple[int, ...] = (0, 1)

    @classmethod
    def quick(cls) -> PruningExperiment:
        return cls(datasets=("digits", "mnist1d"), train_epochs=30, sparsity=0.95, steps=(1, 14), examples=500,
                   finetune_epochs=5, seeds=(0,))

    def replace(self, overrides: dict[str, Any]) -> PruningExperiment:
        d = merge_overrides(self, overrides, NAME)
        return PruningExperiment(**d)


def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Train the dense networks (skipping finished ones), prune each with every criterion and
    number of steps (skipping finished prunings), then write the table, figure and section."""
    exp = (PruningExperiment.quick() if quick else PruningExperiment()).replace(overrides or {})
    root = experiment_dir(out, NAME, exp)
    dense = {(d, s): root / "dense" / d / f"seed{s}" for d in exp.datasets for s in exp.seeds}
    configs = {key: TrainConfig(model="mlp", widths=exp.widths, data=key[0], data_dir=exp.data_dir, optimizer="sgd",
                                lr=exp.lr, epochs=exp.train_epochs, batch_size=exp.batch_size, seed=key[1])
               for key in dense}
    run_all([(configs[k], dense[k]) for k in dense], jobs, desc=f"{NAME}: dense", overwrite=overwrite)

    rows = []
    todo = [(d, s, c, k) for d in exp.datasets for s in exp.seeds for c in exp.criteria for k in exp.steps]
    for data, seed, criterion, steps in tqdm(todo, desc=f"{NAME}: prune"):
        target = root / "pruned" / data / f"seed{seed}" / f"{criterion}-k{steps}"
        done = target / "prune.json"
        record = json.loads(done.read_text()) if done.is_file() else prune_run(
            dense[data, seed], criterion=criterion, target_sparsity=exp.sparsity, steps=steps,
            finetune_epochs=exp.finetune_epochs, n_examples=exp.examples, locality=exp.locality, out=target,
            progress=False)
        rows.append({"dataset": data, "seed": seed, "criterion": criterion, "steps": steps,
                     "dense_test_acc": record["dense_test_acc"], "pruned_train_loss": record["pruned_train_loss"],
                     "pruned_test_acc": record["pruned_test_acc"],
                     "finetuned_test_acc": record.get("finetuned_test_acc", math.nan),
                     "history": record["history"]})
    write_records(root / "results.csv", rows, exclude=["history"])

    table = []
    for data in exp.datasets:
        for criterion in exp.criteria:
            for steps in exp.steps:
                rs = [r for r in rows if (r["dataset"], r["criterion"], r["steps"]) == (data, criterion, steps)]
                table.append([data, criterion, steps, _mean(r["pruned_train_loss"] for r in rs),
                              100 * _mean(r["pruned_test_acc"] for r in rs),
                              100 * _mean(r["finetuned_test_acc"] for r in rs),
                              100 * _mean(r["dense_test_acc"] for r in rs)])
    columns = ["dataset", "criterion", "steps k", "train loss after pruning", "test acc % after pruning",
               "test acc % after fine-tuning", "dense test acc %"]
    write_tables(root / "table.csv", (columns, table))
    _figure(rows, root / "predicted_vs_actual.png")
    paragraphs = [
        f"Protocol: MLP {'-'.join(map(str, exp.widths))} trained with SGD (lr {exp.lr}, {exp.train_epochs} epochs), "
        f"pruned globally to {100 * exp.sparsity:g}% of its Linear weights (biases kept) in k in {list(exp.steps)} "
        f"steps, scores on {exp.examples} training examples, locality lambda = {exp.locality}, fine-tuned "
        f"{exp.finetune_epochs} epochs with the mask; datasets {', '.join(exp.datasets)}; mean over seeds "
        f"{list(exp.seeds)}.",
        "Paper: " + PAPER,
        "Our result: " + _verdict(exp, table),
    ]
    section = Section(title="Pruning by loss modelling (Laurent et al. 2020)", paragraphs=paragraphs,
                      tables=[{"caption": "Mean over seeds", "columns": columns, "rows": table}],
                      figures=[{"file": "predicted_vs_actual.png",
                                "caption": "Loss change predicted by each loss model vs the actual change, one point "
                                           "per pruning step (log-log of absolute values)."}], order=40)
    return write_section(root, section)


def _mean(values) -> float:
    vs = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vs) / len(vs) if vs else math.nan


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


def _verdict(exp: PruningExperiment, table: list[list[Any]]) -> str:
    parts = []
    if len(exp.steps) > 1:
        few, many = min(exp.steps), max(exp.steps)
        better, total = 0, 0
        for data in exp.datasets:
            for criterion in exp.criteria:
                row = {r[2]: r for r in table if r[0] == data and r[1] == criterion}
                total += 1
                better += row[many][3] < row[few][3]
        parts.append(f"Locality: pruning in {many} steps left a lower training loss right after pruning than in "
                     f"{few} step(s) for {better}/{total} (dataset, criterion) pairs"
                     + (" (magnitude pruning removes the same weights whatever the number of steps, since nothing "
                        "changes the weights between steps)." if "mp" in exp.criteria else "."))
    for data in exp.datasets:
        k = max(exp.steps)
        rows = {r[1]: r for r in table if r[0] == data and r[2] == k}
        after = sorted(rows, key=lambda c: rows[c][3])
        tuned = sorted(rows, key=lambda c: -rows[c][5])
        spread = max(rows[c][5] for c in rows) - min(rows[c][5] for c in rows)
        parts.append(f"{data}, k = {k}: lowest loss after pruning {after[0]} ({rows[after[0]][3]:.3g}), best after "
                     f"fine-tuning {tuned[0]} ({rows[tuned[0]][5]:.1f}%); criteria span {spread:.1f} accuracy points "
                     "after fine-tuning.")
    return " ".join(parts)
