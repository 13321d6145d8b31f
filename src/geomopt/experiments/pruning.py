"""Reproduction: pruning by loss modelling, and the locality of pruning steps.

Laurent, Ballas, George, Schwartz & Vincent, "Revisiting Loss Modelling for Unstructured
Pruning", 2020. Protocol: an MLP 300-100 trained to convergence, pruned globally to high
sparsity by magnitude (MP), the linear (LM) and quadratic (QM) loss models, OBD and Kronecker-factored OBS (kobs), in
k = 1, 14, 140 steps (each removing r = 1 - (1 - p)^(1/k) of what is left, scores recomputed on
the masked network from 1000 examples), then fine-tuned with the mask. The paper's findings:
locality (many small steps) is crucial; first- and second-order models end up similar; a better
loss right after pruning does not mean a better network after fine-tuning.

The dense network's learning rate is chosen on a validation split carved from the training set (the
highest mean over seeds of each run's last-epochs validation accuracy, grid-edge rule:
``geomopt.experiments.tuning``); every number is over seeds (``--seeds N``: 3 with the quick and mid tiers, 5
in full; the seed reaches the dense network, its pruning batches and its fine-tuning). ``results.csv`` holds
one row per dense run (``part = dense``) and per pruning (``part = pruned``), ``curves.csv`` the dense runs'
per-epoch training loss and each pruning's per-step predicted and actual loss change; the claims are decided
on them:

- ``locality``: per criterion other than MP (whose k-step pruning is the one-shot one), the training loss
  right after pruning in the most steps minus in the fewest, over seeds (``less``);
- ``first-vs-second-order``: with the most steps, LM's test accuracy after fine-tuning minus each
  second-order criterion's lies within +-1 accuracy point (two one-sided tests, ``equivalent``).

Run-quality gate (both claims): every dense network at the chosen learning rate finite, its training loss at
most half its initial value and at most 1.5x its best, the chosen learning rate not at a grid edge after
extension, and every compared pruning's loss and accuracy finite; otherwise ``untestable here``, naming the runs.

Tiers: ``quick``: digits, sparsity 0.95, k in {1, 14}, MP/LM/QM/OBD, 500 examples. ``mid``: the paper's MLP
300-100 on 10,000 Fashion-MNIST training images (Debian's ``dataset-fashion-mnist``), 10 epochs, pruned to 98%
(the paper: 98.85%) in k in {1, 14} steps by MP/LM/QM/OBD from 1000 examples, 2 epochs of fine-tuning, 3 seeds:
real images on which the dense network's loss falls well below its start (0.37 from 2.3 at lr 0.1, 83% test
accuracy), and a sparsity at which one-shot pruning costs most of it (at 95% already: training loss 1.3-1.7
right after pruning, 54-68% test accuracy), so locality and the fine-tuned accuracies have room to differ.
Cost from 1-run timings with OMP_NUM_THREADS=1 on the shared 2-core machine: 75 s per dense run (9 runs, up
to 15 with grid extensions), 17-40 s per pruning with its fine-tuning (24): about 25-30 minutes. ``full``:
MNIST from ``data_dir`` at 98.85% sparsity, k in {1, 14, 140}, with Kronecker OBS, 5 seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from geomopt.experiments.records import Records
from geomopt.experiments.records import gate_failures as shared_gate
from geomopt.experiments.skeleton import Context, Experiment, Protocol, Ran, Report, selected, tuned_records
from geomopt.experiments.tuning import Problem, Tuned, compute_seconds, tune
from geomopt.figures import plt
from geomopt.runs import prune_run
from geomopt.sweep import Claim, Grid, Outcome, RunGate, all_of, equivalent, gated, less, seed_stats
from geomopt.train import TrainConfig
from geomopt.train.config import read_json

NAME = "pruning"
CITATIONS = (
    'Laurent, Ballas, George, Schwartz & Vincent, "Revisiting Loss Modelling for Unstructured Pruning", 2020',
)  # the papers, by title, for the report
TITLE = "Pruning by loss modelling (Laurent et al. 2020)"
PAPER = "Laurent, Ballas, George, Schwartz & Vincent 2020"
SECOND_ORDER = ("qm", "obd", "kobs")
SIMILAR = 1.0  # accuracy points: "end up similar" after fine-tuning (the equivalence margin)
GATE = RunGate(drop=0.5, rebound=0.5)
GATE_TEXT = ("every dense network at the chosen learning rate finite, its final training loss at most half its value "
             "before training and at most 1.5x its best, the chosen learning rate not at a grid edge after extension; "
             "every compared pruning's loss and accuracy finite")


@dataclass
class PruningExperiment(Protocol, name=NAME):
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    datasets: tuple[str, ...] = ("mnist",)
    data_dir: str | None = None
    train_size: int | None = None
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

    @classmethod
    def mid(cls) -> PruningExperiment:
        return cls(datasets=("fashion-mnist",), train_size=10000, train_epochs=10, sparsity=0.98, steps=(1, 14),
                   examples=1000, criteria=("mp", "lm", "qm", "obd"), finetune_epochs=2, seeds=(0, 1, 2))


CONFIG = PruningExperiment  # the config class (geomopt results check rebuilds it from experiment.json)


def _prune_dir(root: Path, data: str, lr: float, seed: int, criterion: str, steps: int) -> Path:
    return root / "pruned" / data / f"lr{lr:g}" / f"seed{seed}" / f"{criterion}-k{steps}"


def _run(ctx: Context) -> Ran:
    """Tune and train the dense networks (skipping finished ones), then prune each chosen one with every
    criterion and number of steps (skipping finished prunings)."""
    exp, root = ctx.exp, ctx.root

    def make(data: str):
        return lambda lr, seed: TrainConfig(model="mlp", widths=exp.widths, data=data, data_dir=exp.data_dir,
                                            train_size=exp.train_size, optimizer="sgd", lr=lr,
                                            epochs=exp.train_epochs, batch_size=exp.batch_size, seed=seed,
                                            val_fraction=exp.val_fraction)
    tuned = tune({d: Problem(Grid(exp.lrs, max_steps=exp.max_extensions), make(d), root / "dense" / d)
                  for d in exp.datasets}, exp.seeds, jobs=ctx.jobs, desc=f"{NAME}: dense", score="val_acc",
                 minimize=False, overwrite=ctx.overwrite)
    todo = [(d, s, c, k) for d in exp.datasets for s in exp.seeds for c in exp.criteria for k in exp.steps]
    for data, seed, criterion, steps in tqdm(todo, desc=f"{NAME}: prune"):
        lr = tuned[data].value
        target = _prune_dir(root, data, lr, seed, criterion, steps)
        if not (target / "prune.json").is_file():
            prune_run(tuned[data].runs[lr, seed][1], criterion=criterion, target_sparsity=exp.sparsity, steps=steps,
                      finetune_epochs=exp.finetune_epochs, n_examples=exp.examples, locality=exp.locality,
                      out=target, progress=False)
    # the dense networks' seconds; pruning and fine-tuning time is not recorded
    return Ran(_records(exp, tuned, root), compute_seconds(tuned), tuned)


def _report(ctx: Context, records: Records, ran: Ran) -> Report:
    """The table per criterion and number of steps, the predicted-vs-actual figure, the protocol."""
    exp = ctx.exp
    columns = ["dataset", "criterion", "steps k", "train loss after pruning", "test acc % after pruning",
               "test acc % after fine-tuning", "dense test acc %"]
    table = []
    for data in exp.datasets:
        for criterion in exp.criteria:
            for steps in exp.steps:
                rs = records.where(part="pruned", dataset=data, criterion=criterion, steps=steps)
                table.append([data, criterion, steps, _fmt(r["pruned_train_loss"] for r in rs),
                              _fmt((r["pruned_test_acc"] for r in rs), 100),
                              _fmt((r["finetuned_test_acc"] for r in rs), 100),
                              _fmt((r["dense_test_acc"] for r in rs), 100)])
    _figure(records, ctx.root / "predicted_vs_actual.png")
    lrs = ", ".join(f"{d} {t.selection.note}" for d, t in ran.state.items())
    paragraphs = [
        f"Protocol ({ctx.tier} tier): MLP {'-'.join(map(str, exp.widths))} trained with SGD ({exp.train_epochs} epochs"
        + (f" on {exp.train_size} training examples" if exp.train_size else "") + ", learning rate "
        f"chosen on {100 * exp.val_fraction:g}% of the training set held out: {lrs}), pruned globally to "
        f"{100 * exp.sparsity:g}% of its Linear weights (biases kept) in k in {list(exp.steps)} steps, scores on "
        f"{exp.examples} training examples, locality lambda = {exp.locality}, fine-tuned {exp.finetune_epochs} "
        f"epochs with the mask; datasets {', '.join(exp.datasets)}; seeds {list(exp.seeds)}. Run-quality gate: "
        f"{GATE_TEXT}. 'Similar' means within +-{SIMILAR:g} accuracy point (two one-sided tests).",
    ]
    return Report(paragraphs, tables=[{"caption": "Mean [95% interval] over seeds", "columns": columns, "rows": table}],
                  figures=[{"file": "predicted_vs_actual.png",
                            "caption": "Loss change predicted by each loss model vs the actual change, one point "
                                       "per pruning step (log-log of absolute values), all seeds."}])


def _records(exp: PruningExperiment, tuned: dict[str, Tuned], root: Path) -> Records:
    """Rows: every dense run (``part = dense``) and every pruning of the chosen dense networks (``part =
    pruned``); curves: the dense runs' per-epoch training loss, each pruning's per-step loss changes."""
    rows, curves = [], {}

    def dense(data, lr, seed, s, t):
        return {"part": "dense", "dataset": data, "lr": lr, "seed": seed, "train_loss": s["train_loss"],
                "val_err": 1 - s["val_acc"] if "val_acc" in s else None, "test_err": 1 - s["test_acc"],
                "diverged": bool(s.get("diverged", False)), **selected(t, lr, s)}
    for data, t in tuned.items():
        runs = tuned_records(exp, {data: t}, root, dense, lambda _, r: {"epoch": r["epoch"],
                                                                         "train_loss": r["train_loss"]})
        rows += runs.rows
        curves.update(runs.curves)
        for seed in exp.seeds:
            for criterion in exp.criteria:
                for steps in exp.steps:
                    target = _prune_dir(root, data, t.value, seed, criterion, steps)
                    rec = read_json(target / "prune.json", "a pruning's prune.json")
                    run = str(target.relative_to(root))
                    rows.append({"run": run, "part": "pruned", "dataset": data, "seed": seed, "dense_lr": t.value,
                                 "criterion": criterion, "steps": steps, "dense_test_acc": rec["dense_test_acc"],
                                 "pruned_train_loss": rec["pruned_train_loss"],
                                 "pruned_test_acc": rec["pruned_test_acc"],
                                 "finetuned_test_acc": rec.get("finetuned_test_acc", math.nan)})
                    curves[run] = rec["history"]
    return Records(exp, rows, curves)


def _fmt(values, scale: float = 1.0) -> str:
    vs = [float(v) for v in values if v is not None and not math.isnan(v)]
    return seed_stats(vs).fmt(scale, bounds=(0.0, 1.0) if scale == 100 else None) if vs else "-"


def gate_failures(records: Records, data: str, pruned: list[dict[str, Any]], key: str) -> list[str]:
    """The run-quality gate (:data:`GATE_TEXT`) for ``data``'s chosen dense networks and the prunings compared."""
    dense = records.where(part="dense", dataset=data, chosen=True)
    failures = shared_gate(records, dense, GATE, lambda r: f"{data} dense lr {r['lr']:g} seed {r['seed']}")
    return failures + [f"{data} {r['criterion']} k={r['steps']} seed {r['seed']}: non-finite {key}"
                       for r in pruned if r.get(key) is None or not math.isfinite(r[key])]


def _per_seed(records: Records, data: str, criterion: str, steps: int) -> list[dict[str, Any]]:
    by_seed = {r["seed"]: r for r in records.where(part="pruned", dataset=data, criterion=criterion, steps=steps)}
    missing = [s for s in records.exp.seeds if s not in by_seed]
    if missing:
        raise ValueError(f"{NAME}: no stored pruning {data} {criterion} k={steps} for seed(s) {missing}")
    return [by_seed[s] for s in records.exp.seeds]


def _values(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    """``row[key]`` per row (a missing or non-finite one as ``inf``: the gate has named it)."""
    return [scale * float(r[key]) if r.get(key) is not None and math.isfinite(r[key]) else math.inf for r in rows]


def _locality(records: Records) -> Outcome:
    exp = records.exp
    few, many = min(exp.steps), max(exp.steps)
    parts = {}
    for d in exp.datasets:
        for c in (c for c in exp.criteria if c != "mp"):
            a, b = _per_seed(records, d, c, many), _per_seed(records, d, c, few)
            parts[f"{d} {c}"] = gated(less(_values(a, "pruned_train_loss"), _values(b, "pruned_train_loss"),
                                           label=f"loss k={many} - k={few}"),
                                      gate_failures(records, d, a + b, "pruned_train_loss"))
    return all_of(parts)


def _similar(records: Records) -> Outcome:
    exp = records.exp
    k = max(exp.steps)
    parts = {}
    for d in exp.datasets:
        lm = _per_seed(records, d, "lm", k)
        for c in (c for c in exp.criteria if c in SECOND_ORDER):
            other = _per_seed(records, d, c, k)
            parts[f"{d} lm vs {c}"] = gated(
                equivalent(_values(lm, "finetuned_test_acc", 100), _values(other, "finetuned_test_acc", 100),
                           margin=SIMILAR, label=f"LM - {c} accuracy (points)"),
                gate_failures(records, d, lm + other, "finetuned_test_acc"))
    return all_of(parts)


def claims(exp: PruningExperiment) -> list[Claim]:
    """Locality (needs two step counts and a loss-model criterion); LM ~ second order (needs LM and one of them)."""
    out = []
    if len(exp.steps) > 1 and any(c != "mp" for c in exp.criteria):
        out.append(Claim("locality", f"Pruning in {max(exp.steps)} steps leaves a lower training loss right after "
                         f"pruning than in {min(exp.steps)} (loss-model criteria)", PAPER, "locality "
                         "experiments", "many small steps prune far better than one at high sparsity (MLP 300-100 "
                         "on MNIST at 98.85%)", _locality))
    if "lm" in exp.criteria and any(c in SECOND_ORDER for c in exp.criteria) and exp.finetune_epochs > 0:
        out.append(Claim("first-vs-second-order", f"With {max(exp.steps)} steps, first-order (LM) and second-order "
                         f"criteria end up within +-{SIMILAR:g} accuracy point of each other after fine-tuning",
                         PAPER, "MLP / VGG11 / PreActResNet18 tables",
                         "first- and second-order criteria reach similar accuracy after fine-tuning", _similar))
    return out


def _figure(records: Records, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    pruned = records.where(part="pruned")
    for criterion in sorted({r["criterion"] for r in pruned} - {"mp"}):
        xs, ys = [], []
        for r in pruned:
            if r["criterion"] == criterion:
                for h in records.curves.get(r["run"], []):
                    if h.get("predicted_change") is not None:
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


EXPERIMENT = Experiment(NAME, PruningExperiment, TITLE, CITATIONS, order=40, run=_run, claims=claims, report=_report)
reproduce = EXPERIMENT.reproduce
