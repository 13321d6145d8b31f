"""Reproduction: RNN-Path (Path-SGD for ReLU RNNs) vs SGD with IRNN / np-RNN inits, LSTM and Adam.

Neyshabur, Wu, Salakhutdinov & Srebro, "Path-Normalized Optimization of Recurrent Neural Networks
with ReLU Activations", NeurIPS 2016. Protocol: a one-layer ReLU RNN with 100 hidden units trained
with Path-SGD using kappa1 ("RNN-Path", identity init) against the same network trained with SGD
from the identity init (IRNN, Le et al. 2015) and the np-RNN init (Talathi & Vattikuti 2015), an
LSTM, and (a modern baseline) Adam on the IRNN; batch 16; each method's learning rate chosen from a
small grid by the lowest final training loss; gradient clipping for the SGD baselines. Tasks: the
adding problem at T = 100, 400, 750 (test MSE against the trivial 0.167) and pixel-by-pixel
sequential digits / MNIST-1D (and sequential MNIST from local IDX files with ``--set data_dir=...``).
The paper's claim: RNN-Path solves the adding problem at lengths where SGD-trained ReLU RNNs stay at
the trivial baseline.

``--quick``: T = 30 and 60, 1,200 steps per run (3,200 sequences x 6 epochs), sequential MNIST-1D
(1,000 steps), two learning rates per method; about 5-10 minutes on 2 loaded cores.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.data.sequences import ADDING_BASELINE_MSE
from geomopt.experiments.config import experiment_dir, merge_overrides
from geomopt.sweep import run_all
from geomopt.report import Section, plot_curves, write_records, write_section, write_tables
from geomopt.train import TrainConfig, read_metrics

NAME = "path-sgd-rnn"
# "solved": test MSE below a tenth of the trivial predictor's
SOLVED_FRACTION = 0.1
PAPER_CLAIM = ("Neyshabur et al. (2016) report that a 100-unit ReLU RNN trained with Path-SGD (kappa1 only) reaches "
               "near-zero test MSE on the adding problem at T = 100, 400 and 750, where ReLU RNNs trained with SGD "
               "(identity or np-RNN init) stay at the trivial baseline for the long lengths, and ~3% test error on "
               "sequential MNIST (approximate figures: /work/shared/papers.md, section 2).")
# (model, init, optimizer) of each method
METHODS: dict[str, tuple[str, str, str]] = {
    "rnn-path": ("relu-rnn", "irnn", "path-sgd"),
    "irnn-sgd": ("relu-rnn", "irnn", "sgd"),
    "np-rnn-sgd": ("relu-rnn", "np-rnn", "sgd"),
    "lstm-sgd": ("lstm", "kaiming", "sgd"),
    "irnn-adam": ("relu-rnn", "irnn", "adam"),
}
# published numbers we can put beside ours (approximate, see papers.md section 2)
PAPER_ADDING = {"rnn-path": "~0 (solved)", "irnn-sgd": "0.167 (long T)", "np-rnn-sgd": "0.167 (long T)",
                "lstm-sgd": "not tabulated", "irnn-adam": "not in the paper"}
PAPER_SEQ_MNIST_ERR = {"rnn-path": "~3%", "irnn-sgd": "3.0% (iRNN, 97.0% acc)", "np-rnn-sgd": "not tabulated",
                       "lstm-sgd": "1.1% (98.9% acc, RMSProp, Cooijmans 2016)", "irnn-adam": "not in the paper"}


@dataclass
class PathSGDRNNExperiment:
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    lengths: tuple[int, ...] = (100, 400, 750)
    sequential: tuple[str, ...] = ("seq-mnist1d", "seq-digits")
    data_dir: str | None = None  # with data_dir, sequential MNIST ("seq-mnist") is added
    hidden: int = 100
    methods: tuple[str, ...] = tuple(METHODS)
    lrs: dict[str, list[float]] = field(default_factory=lambda: {
        "rnn-path": [1e-5, 1e-4, 1e-3],
        "irnn-sgd": [1e-3, 1e-2, 1e-1],
        "np-rnn-sgd": [1e-3, 1e-2, 1e-1],
        "lstm-sgd": [1e-2, 1e-1, 1.0],
        "irnn-adam": [1e-4, 3e-4, 1e-3],
    })
    clip: dict[str, float | None] = field(default_factory=lambda: {
        "rnn-path": 1.0, "irnn-sgd": 1.0, "np-rnn-sgd": 1.0, "lstm-sgd": 1.0, "irnn-adam": 1.0})
    batch_size: int = 16
    adding_train_size: int = 20_000
    adding_epochs: int = 20
    sequential_epochs: int = 30
    seeds: tuple[int, ...] = (0,)

    @classmethod
    def quick(cls) -> PathSGDRNNExperiment:
        return cls(lengths=(30, 60), sequential=("seq-mnist1d",), adding_train_size=3_200, adding_epochs=6,
                   sequential_epochs=4, lrs={
                       "rnn-path": [1e-4, 1e-3],
                       "irnn-sgd": [1e-2, 1e-1],
                       "np-rnn-sgd": [1e-2, 1e-1],
                       "lstm-sgd": [1e-1, 1.0],
                       "irnn-adam": [3e-4, 1e-3],
                   })

    def replace(self, overrides: dict[str, Any]) -> PathSGDRNNExperiment:
        d = merge_overrides(self, overrides, NAME)
        bad = [m for m in d["methods"] if m not in METHODS]
        if bad:
            raise ValueError(f"{NAME}: unknown method(s) {bad}; choose from {sorted(METHODS)}")
        missing = [m for m in d["methods"] if m not in d["lrs"]]
        if missing:
            raise ValueError(f"{NAME}: no learning-rate grid in `lrs` for method(s) {missing}")
        if any(t < 2 for t in d["lengths"]):
            raise ValueError(f"{NAME}: adding-problem lengths must be >= 2, got {d['lengths']}")
        return PathSGDRNNExperiment(**d)


def _tasks(exp: PathSGDRNNExperiment) -> list[tuple[str, str, int | None]]:
    """(task label, dataset, seq_len)."""
    tasks = [(f"adding T={t}", "adding", t) for t in exp.lengths]
    seq = list(exp.sequential) + (["seq-mnist"] if exp.data_dir and "seq-mnist" not in exp.sequential else [])
    return tasks + [(name, name, None) for name in seq]


def _configs(exp: PathSGDRNNExperiment, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    jobs = []
    for label, data, seq_len in _tasks(exp):
        adding = data == "adding"
        for method in exp.methods:
            model, init, opt = METHODS[method]
            for lr in exp.lrs[method]:
                for seed in exp.seeds:
                    cfg = TrainConfig(model=model, widths=(exp.hidden,), init=init, data=data, seq_len=seq_len,
                                      data_dir=exp.data_dir if data == "seq-mnist" else None,
                                      train_size=exp.adding_train_size if adding else None, optimizer=opt, lr=lr,
                                      epochs=exp.adding_epochs if adding else exp.sequential_epochs,
                                      batch_size=exp.batch_size, seed=seed, max_grad_norm=exp.clip.get(method))
                    key = {"task": label, "method": method, "lr": lr, "seed": seed}
                    jobs.append((cfg, root / "runs" / label.replace(" ", "_").replace("=", "") / method /
                                 f"lr{lr:g}" / f"seed{seed}", key))
    return jobs


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _curve(out: Path, field_name: str) -> tuple[list[float], list[float]]:
    recs = [r for r in read_metrics(out) if r["kind"] == "epoch"]
    return [r["step"] for r in recs], [r[field_name] for r in recs]


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.inf


def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Run the grid (skipping finished runs), then write tables, figures and the report section."""
    exp = (PathSGDRNNExperiment.quick() if quick else PathSGDRNNExperiment()).replace(overrides or {})
    root = experiment_dir(out, NAME, exp)
    planned = _configs(exp, root)
    summaries = run_all([(c, o) for c, o, _ in planned], jobs, desc=NAME, overwrite=overwrite)

    rows = []
    for (cfg, run_dir, key), s in zip(planned, summaries):
        rows.append({**key, "train_loss": s["train_loss"], "test_loss": s["test_loss"],
                     "test_err": 1 - s["test_acc"] if not key["task"].startswith("adding") else math.nan,
                     "diverged": bool(s.get("diverged", False)), "dir": str(run_dir)})
    write_records(root / "results.csv", rows)

    best: dict[tuple[str, str], dict[str, Any]] = {}
    for label, _, _ in _tasks(exp):
        for method in exp.methods:
            cands = []
            for lr in exp.lrs[method]:
                rs = [r for r in rows if (r["task"], r["method"], r["lr"]) == (label, method, lr)]
                cands.append((_finite(_mean([_finite(r["train_loss"]) for r in rs])), lr, rs))
            loss, lr, rs = min(cands, key=lambda c: c[0])
            best[label, method] = {"lr": lr, "train_loss": loss, "test_loss": _mean([r["test_loss"] for r in rs]),
                                   "test_err": _mean([r["test_err"] for r in rs]),
                                   "diverged": all(r["diverged"] for r in rs), "runs": rs}

    solved_at = SOLVED_FRACTION * ADDING_BASELINE_MSE
    adding_rows, seq_rows = [], []
    for (label, method), b in best.items():
        if label.startswith("adding"):
            mse = b["test_loss"]
            adding_rows.append([label, method, b["lr"], mse, mse / ADDING_BASELINE_MSE,
                                "yes" if mse <= solved_at else ("diverged" if b["diverged"] else "no"),
                                PAPER_ADDING[method]])
        else:
            seq_rows.append([label, method, b["lr"], b["train_loss"], 100 * b["test_err"],
                             PAPER_SEQ_MNIST_ERR[method] if "mnist" in label else "n/a"])
    add_cols = ["task", "method", "chosen lr", "test MSE", "test MSE / 0.167", f"solved (MSE <= {solved_at:.4f})",
                "paper (approx)"]
    seq_cols = ["task", "method", "chosen lr", "final train loss", "test error %", "paper test error (seq. MNIST)"]
    write_tables(root / "table.csv", (add_cols, adding_rows), (seq_cols, seq_rows))

    figures = []
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for (label, method), b in best.items():
        if b["diverged"]:
            continue
        field_name = "test_loss" if label.startswith("adding") else "test_acc"
        xs, ys = _curve(Path(b["runs"][0]["dir"]), field_name)
        if field_name == "test_acc":
            ys = [1 - y for y in ys]
        panels.setdefault(label, {})[f"{method} (lr {b['lr']:g})"] = (xs, ys)
    for label in panels:
        if label.startswith("adding"):
            xs = next(iter(panels[label].values()))[0]
            panels[label]["trivial predictor (0.167)"] = (xs, [ADDING_BASELINE_MSE] * len(xs))
    if panels:
        plot_curves({k: v for k, v in panels.items() if k.startswith("adding")} or panels, root / "adding_mse.png",
                    xlabel="step", ylabel="test MSE", logy=True)
        figures.append({"file": "adding_mse.png", "caption": "Adding problem: test MSE per step, each method at its "
                                                             "chosen learning rate, against the trivial 0.167."})
        seq_panels = {k: v for k, v in panels.items() if not k.startswith("adding")}
        if seq_panels:
            plot_curves(seq_panels, root / "sequential_error.png", xlabel="step", ylabel="test error")
            figures.append({"file": "sequential_error.png", "caption": "Pixel-by-pixel classification: test error "
                                                                       "per step at the chosen learning rates."})

    paragraphs = [
        f"Protocol: one-layer ReLU RNN with {exp.hidden} hidden units (LSTM: {exp.hidden} cells), batch "
        f"{exp.batch_size}; adding problem at T = {list(exp.lengths)} with {exp.adding_train_size} training "
        f"sequences generated from the seed and 1,000 fixed test sequences, {exp.adding_epochs} epochs; "
        f"{', '.join(exp.sequential) or 'no'} pixel-by-pixel tasks for {exp.sequential_epochs} epochs; seeds "
        f"{list(exp.seeds)}. Methods (model, init, optimizer): "
        + "; ".join(f"{m} = {METHODS[m]}" for m in exp.methods)
        + f". Learning rate per method chosen from {json.dumps({m: exp.lrs[m] for m in exp.methods})} by the lowest "
        f"mean final training loss; gradient-norm clipping {json.dumps({m: exp.clip.get(m) for m in exp.methods})}. "
        "RNN-Path uses kappa1 over the training length T, recomputed every step. Input and output weights start "
        "at N(0, 1/fan_in), biases at 0.",
        "Paper: " + PAPER_CLAIM,
        "Our result: " + _verdict(exp, best),
    ]
    section = Section(title="Path-SGD for ReLU RNNs (Neyshabur, Wu, Salakhutdinov & Srebro 2016)",
                      paragraphs=paragraphs,
                      tables=[{"caption": "Adding problem, each method at its chosen learning rate",
                               "columns": add_cols, "rows": adding_rows},
                              {"caption": "Pixel-by-pixel classification", "columns": seq_cols, "rows": seq_rows}],
                      figures=figures, order=20)
    return write_section(root, section)


def _verdict(exp: PathSGDRNNExperiment, best: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Sentences computed from the numbers: where RNN-Path and SGD (same init) solved the adding problem."""
    solved_at = SOLVED_FRACTION * ADDING_BASELINE_MSE
    parts = []
    if "rnn-path" in exp.methods and "irnn-sgd" in exp.methods:
        wins, ties = [], []
        for t in exp.lengths:
            label = f"adding T={t}"
            path, sgd = best[label, "rnn-path"]["test_loss"], best[label, "irnn-sgd"]["test_loss"]
            p_ok, s_ok = path <= solved_at, sgd <= solved_at
            parts.append(f"T={t}: RNN-Path test MSE {path:.4g} ({'solved' if p_ok else 'not solved'}), IRNN+SGD "
                         f"{sgd:.4g} ({'solved' if s_ok else 'not solved'}).")
            if p_ok and not s_ok:
                wins.append(t)
            elif p_ok == s_ok:
                ties.append(t)
        if wins:
            parts.append(f"The paper's qualitative claim HOLDS here: RNN-Path solves T = {wins} where SGD from the same "
                         "(identity) init does not.")
        else:
            parts.append("The paper's qualitative claim did NOT hold at this scale: there is no length at which "
                         "RNN-Path solved the adding problem and SGD from the same init did not "
                         f"(solved = test MSE <= {solved_at:.4f}). What was tried: the learning-rate grid "
                         f"{exp.lrs['rnn-path']} for RNN-Path with gradient clipping {exp.clip.get('rnn-path')}, "
                         f"{exp.adding_epochs} epochs of {exp.adding_train_size} sequences. A likely cause (observed at "
                         "initialization, not proven): the normalized step grad/kappa is heavy-tailed across "
                         "entries (hidden units whose paths carry little mass get very large steps on their "
                         "recurrent rows), so a learning rate small enough to keep the long unroll stable barely "
                         "moves the rest; the paper's initial scales and learning rates are not in papers.md.")
    for m in exp.methods:
        if m in ("rnn-path", "irnn-sgd"):
            continue
        solved = [t for t in exp.lengths if best[f"adding T={t}", m]["test_loss"] <= solved_at]
        parts.append(f"{m} solved T = {solved or 'none'}.")
    return " ".join(parts)
