"""Reproduction: recurrent batch normalization (BN-LSTM) against the LSTM.

Cooijmans, Ballas, Laurent, Gulcehre & Courville, "Recurrent Batch Normalization", 2016.
Protocol: LSTM vs BN-LSTM (and BN-RNN) with 100 hidden units on sequential and permuted pixel
classification (and character-level language modelling on a local text file); the paper reports
faster convergence and better generalization for BN-LSTM: test accuracy MNIST 98.9 -> 99.0, pMNIST
90.2 -> 95.4 (RMSProp 1e-3), Penn Treebank characters 1.38 -> 1.32 bits per character.

Each model's learning rate is chosen on a validation split carved from the training set (the text's own
validation part for ``chars``), highest mean validation accuracy over seeds with the grid-edge rule
(``geomopt.experiments.tuning``); numbers are over seeds (``--seeds N``: 3 with ``--quick``, 5 in full)
and the claims are tested across them (``claims.json``).

``--quick``: sequential and permuted digits (64 steps), LSTM and BN-LSTM, 100 units, Adam with the
learning rate chosen from {3e-3, 1e-2} (one extension step allowed; with {1e-3, 3e-3} three of the four
selections ended at the high edge 9e-3), 6 epochs. Full protocol: sequential and permuted MNIST (784 steps)
from ``data_dir`` and, with ``text`` set to a local text file, character-level modelling; BN-RNN too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomopt.experiments.config import experiment_dir, merge_overrides, seed_list
from geomopt.experiments.tuning import Problem, Tuned, compute_seconds, edge_caveats, tune
from geomopt.report import Section, plot_bands, run_warnings, write_records, write_section, write_tables
from geomopt.sweep import Claim, Grid, Outcome, all_of, band, greater, less, seed_stats, write_claims
from geomopt.train import TrainConfig, read_metrics

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
class BNLSTMExperiment:
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

    def replace(self, overrides: dict[str, Any]) -> BNLSTMExperiment:
        d = merge_overrides(self, overrides, NAME)
        return BNLSTMExperiment(**d)


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


def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False, seeds: int | None = None) -> Path:
    """Tune and train every (dataset, model) over seeds (skipping finished runs); write tables, figure,
    claims and the report section."""
    overrides = dict(overrides or {})
    chosen = seed_list(seeds, quick, overrides)
    if chosen is not None:
        overrides["seeds"] = chosen
    exp = (BNLSTMExperiment.quick() if quick else BNLSTMExperiment()).replace(overrides)
    root = experiment_dir(out, NAME, exp)
    tuned = tune(_problems(exp, root), exp.seeds, jobs=jobs, desc=NAME, score="val_acc", minimize=False,
                 overwrite=overwrite)

    rows = []
    for (data, model), t in tuned.items():
        for (lr, seed), (_, run_dir, s) in sorted(t.runs.items()):
            rows.append({"dataset": data, "model": model, "lr": lr, "seed": seed, "final": _final(data, s),
                         "metric": "test bits/char" if data == "chars" else "test accuracy %",
                         "val_loss": s.get("val_loss"), "train_loss": s["train_loss"],
                         "diverged": bool(s.get("diverged", False)), "chosen": lr == t.value, "dir": str(run_dir)})
    write_records(root / "results.csv", rows, exclude=["dir"], key=("dataset", "model", "lr", "seed"))

    table, panels = [], {}
    for (data, model), t in tuned.items():
        paper = PUBLISHED.get((data, model))
        finals = [_final(data, s) for _, _, s in t.at()]
        diverged = sum(bool(s.get("diverged")) for _, _, s in t.at())
        table.append([data, model, t.selection.label, "test bits/char" if data == "chars" else "test accuracy %",
                      seed_stats(finals).fmt() + (f" ({diverged} of {len(finals)} seeds DIVERGED)" if diverged else ""),
                      paper if paper is not None else "-"])
        curves = [[r["test_loss"] / math.log(2) if data == "chars" else 1 - r["test_acc"]
                   for r in read_metrics(d) if r["kind"] == "epoch"] for _, d, s in t.at() if not s.get("diverged")]
        if curves:
            n = min(len(c) for c in curves)
            panels.setdefault(data, {})[f"{model} (lr {t.value:g})"] = (list(range(n)), *band([c[:n] for c in curves]))
    columns = ["dataset", "model", "chosen lr", "metric", "ours: mean [95% interval]", "paper (Cooijmans et al. 2016)"]
    write_tables(root / "table.csv", (columns, table))
    plot_bands(panels, root / "test_curves.png", xlabel="epoch", ylabel="test error (bits/char for chars)")
    write_claims(root, NAME, claims(exp), {"exp": exp, "tuned": tuned}, title=TITLE, seeds=exp.seeds,
                 seconds=compute_seconds(tuned), quick=quick)
    paragraphs = [
        f"Protocol: {exp.hidden} hidden units, {exp.optimizer} with the learning rate chosen from {list(exp.lrs)} "
        f"on {100 * exp.val_fraction:g}% of the training set held out (highest mean validation accuracy over seeds, "
        f"grid extended by up to {exp.max_extensions} step(s) at an edge), batch {exp.batch_size}, {exp.epochs} "
        f"epochs, gradient norm clipped at {exp.max_grad_norm}; models {', '.join(exp.models)}; datasets "
        f"{', '.join(dict.fromkeys(d for d, _ in tuned))}; seeds {list(exp.seeds)}. BN-LSTM: separate BN of "
        "W_h h and W_x x (gamma 0.1, no shift), BN of c_t, statistics per time step; BN-RNN: ReLU RNN with the "
        "same recurrent BN. The paper used RMSProp 1e-3; the paper's numbers are for MNIST (784 steps) and "
        "Penn Treebank, not for the CPU-scale datasets.",
    ]
    warnings, caveat = run_warnings(rows, _describe_run, _unconverged_above)
    paragraphs += [caveat] if caveat else []
    section = Section(citations=list(CITATIONS), warnings=warnings, title=TITLE, paragraphs=paragraphs,
                      tables=[{"caption": "Final test numbers at the chosen learning rate beside the paper's",
                               "columns": columns, "rows": table}],
                      figures=[{"file": "test_curves.png", "caption": "Test error per epoch at the chosen learning "
                                "rate: mean over seeds with its 95% interval."}],
                      order=50)
    return write_section(root, section)


def _mean_train_loss(t: Tuned) -> list[float]:
    """Per seed, the training loss averaged over epochs 1..E (the area under the training curve: lower = faster);
    a diverged run: inf."""
    out = []
    for _, run_dir, s in t.at():
        losses = [r["train_loss"] for r in read_metrics(run_dir) if r["kind"] == "epoch" and r["epoch"] > 0]
        out.append(math.inf if s.get("diverged") or not losses else sum(losses) / len(losses))
    return out


def _generalizes(results: dict[str, Any]) -> Outcome:
    exp, tuned = results["exp"], results["tuned"]
    parts = {}
    for data in dict.fromkeys(d for d, _ in tuned):
        bn = [_final(data, s) for _, _, s in tuned[data, "bnlstm"].at()]
        lstm = [_final(data, s) for _, _, s in tuned[data, "lstm"].at()]
        compare = less if data == "chars" else greater
        parts[data] = compare(bn, lstm, label="BN-LSTM - LSTM " + ("bits/char" if data == "chars" else "acc %"))
    keys = [k for k in tuned if k[1] in ("lstm", "bnlstm")]
    return all_of(parts).with_caveats(*edge_caveats(tuned, keys, label=lambda k: f"{k[0]}/{k[1]}"))


def _faster(results: dict[str, Any]) -> Outcome:
    tuned = results["tuned"]
    parts = {data: less(_mean_train_loss(tuned[data, "bnlstm"]), _mean_train_loss(tuned[data, "lstm"]),
                        label="BN-LSTM - LSTM mean train loss")
             for data in dict.fromkeys(d for d, _ in tuned)}
    keys = [k for k in tuned if k[1] in ("lstm", "bnlstm")]
    return all_of(parts).with_caveats(*edge_caveats(tuned, keys, label=lambda k: f"{k[0]}/{k[1]}"))


def claims(exp: BNLSTMExperiment) -> list[Claim]:
    """BN-LSTM vs LSTM (both must be run)."""
    if "lstm" not in exp.models or "bnlstm" not in exp.models:
        return []
    return [Claim("generalizes-better", "BN-LSTM reaches a better test accuracy (bits/char) than the LSTM",
                  PAPER, "Tab. 1, 2", "MNIST 98.9 -> 99.0 %, pMNIST 90.2 -> 95.4 %, PTB 1.38 -> 1.32 bits/char",
                  _generalizes),
            Claim("converges-faster", "BN-LSTM trains faster than the LSTM (lower training loss averaged over "
                  "the epochs)", PAPER, "Fig. 1, 2", "faster convergence on every task (curves)", _faster)]


def _describe_run(r: dict[str, Any]) -> str:
    return f"{r['dataset']}, {r['model']} lr {r['lr']:g} seed {r['seed']}"


def _unconverged_above(r: dict[str, Any]) -> float:
    return math.inf if r["dataset"] == "chars" else math.log(10)  # chance level of 10 classes
