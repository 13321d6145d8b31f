"""Reproduction: recurrent batch normalization (BN-LSTM) against the LSTM.

Cooijmans, Ballas, Laurent, Gulcehre & Courville, "Recurrent Batch Normalization", 2016.
Protocol: LSTM vs BN-LSTM (and BN-RNN) with 100 hidden units on sequential and permuted pixel
classification (and character-level language modelling on a local text file); the paper reports
faster convergence and better generalization for BN-LSTM: test accuracy MNIST 98.9 -> 99.0, pMNIST
90.2 -> 95.4 (RMSProp 1e-3), Penn Treebank characters 1.38 -> 1.32 bits per character.

``--quick``: sequential and permuted digits (64 steps) and sequential MNIST-1D (40 steps), 100
units, Adam 1e-3, a few epochs. Full protocol: sequential and permuted MNIST (784 steps) from
``data_dir`` and, with ``text`` set to a local text file, character-level modelling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomopt.experiments.config import experiment_dir, merge_overrides
from geomopt.sweep import run_all
from geomopt.report import Section, plot_curves, write_records, write_section, write_tables
from geomopt.train import TrainConfig, read_metrics

NAME = "bn-lstm"
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
    lr: float = 1e-3
    epochs: int = 20
    batch_size: int = 64
    max_grad_norm: float | None = 1.0
    train_size: int | None = None
    seeds: tuple[int, ...] = (0,)

    @classmethod
    def quick(cls) -> BNLSTMExperiment:
        return cls(datasets=("seq-digits", "seq-digits-perm", "seq-mnist1d"), epochs=8)

    def replace(self, overrides: dict[str, Any]) -> BNLSTMExperiment:
        d = merge_overrides(self, overrides, NAME)
        return BNLSTMExperiment(**d)


def _jobs(exp: BNLSTMExperiment, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    datasets = list(exp.datasets) + (["chars"] if exp.text else [])
    jobs = []
    for data in datasets:
        for model in exp.models:
            for seed in exp.seeds:
                cfg = TrainConfig(model=model, widths=(exp.hidden,), data=data,
                                  data_dir=exp.text if data == "chars" else exp.data_dir,
                                  seq_len=exp.text_seq_len if data == "chars" else None, optimizer=exp.optimizer,
                                  lr=exp.lr, epochs=exp.epochs, batch_size=exp.batch_size,
                                  max_grad_norm=exp.max_grad_norm, train_size=exp.train_size, seed=seed)
                jobs.append((cfg, root / "runs" / data / model / f"seed{seed}",
                             {"dataset": data, "model": model, "seed": seed}))
    return jobs


def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Train every (dataset, model, seed) (skipping finished runs) and write the report section."""
    exp = (BNLSTMExperiment.quick() if quick else BNLSTMExperiment()).replace(overrides or {})
    root = experiment_dir(out, NAME, exp)
    planned = _jobs(exp, root)
    summaries = run_all([(c, o) for c, o, _ in planned], jobs, desc=NAME, overwrite=overwrite)

    rows = []
    for (cfg, run_dir, key), s in zip(planned, summaries):
        epochs = [r for r in read_metrics(run_dir) if r["kind"] == "epoch"] if not s.get("diverged") else []
        chars = key["dataset"] == "chars"
        final = s["test_loss"] / math.log(2) if chars else 100 * s["test_acc"]
        rows.append({**key, "final": final, "metric": "test bits/char" if chars else "test accuracy %",
                     "epochs_to_90pct": _epochs_to(epochs, 0.9) if not chars else None,
                     "diverged": bool(s.get("diverged", False)), "dir": str(run_dir)})
    write_records(root / "results.csv", rows, exclude=["dir"])

    table, panels = [], {}
    for data in dict.fromkeys(r["dataset"] for r in rows):
        for model in exp.models:
            rs = [r for r in rows if r["dataset"] == data and r["model"] == model]
            paper = PUBLISHED.get((data, model))
            reached = [r["epochs_to_90pct"] for r in rs if r["epochs_to_90pct"] is not None]
            table.append([data, model, rs[0]["metric"], sum(r["final"] for r in rs) / len(rs),
                          min(reached) if reached else "-", paper if paper is not None else "-"])
            recs = [r for r in read_metrics(rs[0]["dir"]) if r["kind"] == "epoch"] if not rs[0]["diverged"] else []
            if recs:
                ys = [r["test_loss"] / math.log(2) if data == "chars" else 1 - r["test_acc"] for r in recs]
                panels.setdefault(data, {})[model] = ([r["epoch"] for r in recs], ys)
    columns = ["dataset", "model", "metric", "ours (final)", "first epoch with train acc >= 90% of best",
               "paper (Cooijmans et al. 2016)"]
    write_tables(root / "table.csv", (columns, table))
    plot_curves(panels, root / "test_curves.png", xlabel="epoch", ylabel="test error (bits/char for chars)")
    paragraphs = [
        f"Protocol: {exp.hidden} hidden units, {exp.optimizer} lr {exp.lr}, batch {exp.batch_size}, {exp.epochs} "
        f"epochs, gradient norm clipped at {exp.max_grad_norm}; models {', '.join(exp.models)}; datasets "
        f"{', '.join(dict.fromkeys(r['dataset'] for r in rows))}; seeds {list(exp.seeds)}. BN-LSTM: separate BN of "
        "W_h h and W_x x (gamma 0.1, no shift), BN of c_t, statistics per time step; BN-RNN: ReLU RNN with the "
        "same recurrent BN. The paper used RMSProp 1e-3; the paper's numbers are for MNIST (784 steps) and "
        "Penn Treebank, not for the CPU-scale datasets.",
        "Paper: BN-LSTM converges faster and generalizes better than LSTM: MNIST 98.9 -> 99.0%, pMNIST 90.2 -> "
        "95.4%, PTB 1.38 -> 1.32 bits/char.",
        "Our result: " + _verdict(rows, exp),
    ]
    section = Section(title="Recurrent batch normalization (Cooijmans et al. 2016)", paragraphs=paragraphs,
                      tables=[{"caption": "Final test numbers (mean over seeds) beside the paper's",
                               "columns": columns, "rows": table}],
                      figures=[{"file": "test_curves.png", "caption": "Test error per epoch (first seed)."}],
                      order=50)
    return write_section(root, section)


def _epochs_to(epochs: list[dict[str, Any]], fraction: float) -> int | None:
    """First epoch whose training accuracy reaches ``fraction`` of the run's best."""
    if not epochs:
        return None
    best = max(r["train_acc"] for r in epochs)
    return next(r["epoch"] for r in epochs if r["train_acc"] >= fraction * best)


def _verdict(rows: list[dict[str, Any]], exp: BNLSTMExperiment) -> str:
    if "lstm" not in exp.models or "bnlstm" not in exp.models:
        return "LSTM and BN-LSTM were not both run."
    parts, wins, total = [], 0, 0
    for data in dict.fromkeys(r["dataset"] for r in rows):
        def mean(model: str) -> float:
            vs = [r["final"] for r in rows if r["dataset"] == data and r["model"] == model]
            return sum(vs) / len(vs)
        lstm, bn = mean("lstm"), mean("bnlstm")
        better = bn < lstm if data == "chars" else bn > lstm
        wins += better
        total += 1
        parts.append(f"{data}: BN-LSTM {bn:.3g} vs LSTM {lstm:.3g}")
    return (f"BN-LSTM beat LSTM on {wins}/{total} datasets at the end of training (" + "; ".join(parts) + ").")
