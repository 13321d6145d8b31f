"""Reproduction: RNN-Path (Path-SGD for ReLU RNNs) vs SGD with IRNN / np-RNN inits, LSTM and Adam.

Neyshabur, Wu, Salakhutdinov & Srebro, "Path-Normalized Optimization of Recurrent Neural Networks
with ReLU Activations", NeurIPS 2016. The paper's protocol (following Le et al. 2015) is the default:
a one-layer ReLU RNN with 100 hidden units, non-recurrent weights U[-0.01, 0.01], identity
recurrence, biases 0 (init ``irnn-le``), no gradient clipping, learning rates {1e-2, 1e-3, 1e-4},
batch 16. RNN-Path multiplies the path-normalized step by the ratio fixed at the first step,
``(sum ||g|| / sum ||g/kappa||^2)^(1/2)`` (``PathSGD(normalize="first-step")``, as in the first author's
public Path-SGD code), so that the grid serves SGD and RNN-Path alike; it runs with kappa1 (the
paper's choice) and with kappa1 + kappa2 (``rnn-path-k12``, up to ``k12_max_len``: kappa2 costs
``O(T n^3 + T^2 n^2)`` per step). IRNN+SGD runs that diverge are restarted from new initializations
(up to ``restarts`` times), as in the paper. Baselines: np-RNN + SGD (Talathi & Vattikuti 2015), an
LSTM, the unitary RNN (uRNN, Arjovsky, Shah & Bengio 2016; Adam in place of their RMSProp), and (modern)
Adam on the IRNN. Each method's learning rate is chosen on a validation split of the
training set (mean validation MSE, or accuracy for classification, over seeds; grid extended at an edge);
test numbers over seeds.
Tasks: the adding problem at T = 100, 400, 750 (test MSE against the trivial 0.167) and
pixel-by-pixel sequential MNIST-1D (and sequential MNIST from local IDX files with
``--set data_dir=...``), all through the sweep engine.

``--quick``: the adding problem at T = 20 (1,000 steps per run), 2 seeds, RNN-Path (kappa1 and
kappa1 + kappa2), IRNN + SGD and IRNN + Adam.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.data.sequences import ADDING_BASELINE_MSE
from geomopt.experiments.config import experiment_dir, merge_overrides
from geomopt.experiments.tuning import Problem, compute_seconds, edge_caveats, tune
from geomopt.report import Section, plot_curves, run_warnings, write_records, write_section, write_tables
from geomopt.sweep import HOLDS, FAILS, PARTLY, Claim, Grid, Outcome, all_of, less, seed_stats, write_claims
from geomopt.train import TrainConfig, read_metrics

NAME = "path-sgd-rnn"
CITATIONS = (
    'Neyshabur, Wu, Salakhutdinov & Srebro, "Path-Normalized Optimization of Recurrent Neural Networks with ReLU Activations", NeurIPS 2016',
    'Arjovsky, Shah & Bengio, "Unitary Evolution Recurrent Neural Networks", ICML 2016',
)  # the papers, by title, for the report
TITLE = "Path-SGD for ReLU RNNs (Neyshabur, Wu, Salakhutdinov & Srebro 2016)"
# "solved": test MSE below a tenth of the trivial predictor's
SOLVED_FRACTION = 0.1
# "learned": test MSE below half the trivial predictor's
LEARNED_FRACTION = 0.5
PAPER_CLAIM = ("Neyshabur et al. (2016) report that a 100-unit ReLU RNN trained with Path-SGD (kappa1 only) reaches "
               "near-zero test MSE on the adding problem at T = 100, 400 and 750, where ReLU RNNs trained with SGD "
               "(identity or np-RNN init) stay at the trivial baseline for the long lengths, and ~3% test error on "
               "sequential MNIST (approximate figures read off the paper's plots).")
# (model, init, optimizer) of each method
METHODS: dict[str, tuple[str, str, str]] = {
    "rnn-path": ("relu-rnn", "irnn-le", "path-sgd-first-step"),
    "rnn-path-k12": ("relu-rnn", "irnn-le", "path-sgd-k12-first-step"),
    "irnn-sgd": ("relu-rnn", "irnn-le", "sgd"),
    "np-rnn-sgd": ("relu-rnn", "np-rnn", "sgd"),
    "lstm-sgd": ("lstm", "kaiming", "sgd"),
    "irnn-adam": ("relu-rnn", "irnn-le", "adam"),
    "urnn-adam": ("urnn", "kaiming", "adam"),  # the uRNN baseline (Arjovsky et al. 2016; Adam for their RMSProp)
}
PAPER_LRS = [1e-2, 1e-3, 1e-4]
# published numbers we can put beside ours (approximate, see papers.md section 2)
PAPER_ADDING = {"rnn-path": "~0 (solved)", "rnn-path-k12": "not in the paper", "irnn-sgd": "0.167 (long T)",
                "np-rnn-sgd": "0.167 (long T)", "lstm-sgd": "not tabulated", "irnn-adam": "not in the paper",
                "urnn-adam": "not tabulated"}
PAPER_SEQ_MNIST_ERR = {"rnn-path": "~3%", "rnn-path-k12": "not in the paper", "irnn-sgd": "3.0% (iRNN, 97.0% acc)",
                       "np-rnn-sgd": "not tabulated", "lstm-sgd": "1.1% (98.9% acc, RMSProp, Cooijmans 2016)",
                       "irnn-adam": "not in the paper", "urnn-adam": "4.9% (uRNN, 95.1% acc, RMSProp, Arjovsky 2016)"}


@dataclass
class PathSGDRNNExperiment:
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    lengths: tuple[int, ...] = (100, 400, 750)
    sequential: tuple[str, ...] = ("seq-mnist1d",)
    data_dir: str | None = None  # with data_dir, sequential MNIST ("seq-mnist") is added
    hidden: int = 100
    methods: tuple[str, ...] = tuple(METHODS)
    lrs: dict[str, list[float]] = field(default_factory=lambda: {
        "rnn-path": list(PAPER_LRS), "rnn-path-k12": list(PAPER_LRS), "irnn-sgd": list(PAPER_LRS),
        "np-rnn-sgd": list(PAPER_LRS), "lstm-sgd": [1e-2, 1e-1, 1.0], "irnn-adam": [1e-4, 1e-3, 1e-2],
        "urnn-adam": [1e-4, 1e-3, 1e-2]})
    clip: dict[str, float | None] = field(default_factory=lambda: {m: None for m in METHODS})
    k12_max_len: int = 100
    restarts: int = 3
    max_extensions: int = 1
    val_fraction: float = 0.1
    batch_size: int = 16
    adding_train_size: int = 20_000
    adding_epochs: int = 20
    sequential_epochs: int = 30
    seeds: tuple[int, ...] = (0, 1, 2)

    @classmethod
    def quick(cls) -> PathSGDRNNExperiment:
        return cls(lengths=(20,), sequential=(), methods=("rnn-path", "rnn-path-k12", "irnn-sgd", "irnn-adam"),
                   adding_train_size=3_200, adding_epochs=5, seeds=(0, 1))

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


def _runs_method(exp: PathSGDRNNExperiment, method: str, seq_len: int | None) -> bool:
    """kappa2 only up to k12_max_len (a sequential task's length is its image size: 40 for MNIST-1D, 64 for
    digits, 784 for MNIST)."""
    if method != "rnn-path-k12":
        return True
    return seq_len is not None and seq_len <= exp.k12_max_len


def _problems(exp: PathSGDRNNExperiment, root: Path) -> dict[tuple[str, str], Problem]:
    problems = {}
    for label, data, seq_len in _tasks(exp):
        adding = data == "adding"
        for method in exp.methods:
            if not _runs_method(exp, method, seq_len if adding else 40 if data == "seq-mnist1d" else None):
                continue
            model, init, opt = METHODS[method]

            def make(lr: float, seed: int, model=model, init=init, opt=opt, data=data, seq_len=seq_len,
                     adding=adding, method=method) -> TrainConfig:
                return TrainConfig(model=model, widths=(exp.hidden,), init=init, data=data, seq_len=seq_len,
                                   data_dir=exp.data_dir if data == "seq-mnist" else None,
                                   train_size=exp.adding_train_size if adding else None, optimizer=opt, lr=lr,
                                   epochs=exp.adding_epochs if adding else exp.sequential_epochs,
                                   batch_size=exp.batch_size, seed=seed, max_grad_norm=exp.clip.get(method),
                                   val_fraction=exp.val_fraction)
            problems[label, method] = Problem(Grid(tuple(exp.lrs[method]), max_steps=exp.max_extensions), make,
                                              root / "runs" / label.replace(" ", "_").replace("=", "") / method)
    return problems


def _final(label: str, summary: dict[str, Any]) -> float:
    """Test MSE for the adding problem, test error for classification; a diverged run: inf / 1."""
    if summary.get("diverged"):
        return math.inf if label.startswith("adding") else 1.0
    return float(summary["test_loss"]) if label.startswith("adding") else 1.0 - float(summary["test_acc"])


def _finals(tuned, key) -> list[float]:
    return [_final(key[0], s) for _, _, s in tuned[key].at()]


def _not_learned(tuned, keys) -> list[str]:
    """Caveats for adding-problem methods whose mean test MSE is above half the trivial predictor's: a comparison
    between runs that learned nothing says nothing (the budget is too small)."""
    out = []
    for k in keys:
        if k[0].startswith("adding") and k in tuned:
            mse = _finals(tuned, k)
            if sum(mse) / len(mse) > LEARNED_FRACTION * ADDING_BASELINE_MSE:
                out.append(f"{k[0]}/{k[1]} did not learn (mean test MSE {sum(mse) / len(mse):.3g} > "
                           f"{LEARNED_FRACTION:g} x {ADDING_BASELINE_MSE:.3f}): more steps needed")
    return out


# ----------------------------------------------------------------------------- claims

def _solves(results: dict[str, Any]) -> Outcome:
    """Per length: RNN-Path (kappa1) below IRNN+SGD and below the 'solved' threshold, over seeds."""
    exp, tuned = results["exp"], results["tuned"]
    parts = {}
    solved_at = SOLVED_FRACTION * ADDING_BASELINE_MSE
    for t in exp.lengths:
        label = f"adding T={t}"
        if (label, "rnn-path") not in tuned or (label, "irnn-sgd") not in tuned:
            continue
        path = _finals(tuned, (label, "rnn-path"))
        parts[f"T={t} vs IRNN+SGD"] = less(path, _finals(tuned, (label, "irnn-sgd")),
                                          label="RNN-Path - IRNN+SGD test MSE")
        parts[f"T={t} solved"] = less(path, solved_at, label=f"RNN-Path test MSE - {solved_at:.4f}")
    if not parts:
        return Outcome(PARTLY, "untested: rnn-path or irnn-sgd not run", {}, ("not run",))
    keys = [k for k in tuned if k[1] in ("rnn-path", "irnn-sgd") and k[0].startswith("adding")]
    return all_of(parts).with_caveats(*edge_caveats(tuned, keys, label=lambda k: f"{k[0]}/{k[1]}"),
                                      *_not_learned(tuned, [k for k in keys if k[1] == "irnn-sgd"]))


def _kappa2_negligible(results: dict[str, Any]) -> Outcome:
    """kappa1 alone is not worse than kappa1 + kappa2: the claim fails where k12 is better in every seed."""
    tuned = results["tuned"]
    parts = {k[0]: less(_finals(tuned, (k[0], "rnn-path-k12")), _finals(tuned, k),
                        label="kappa1+kappa2 - kappa1 " + ("test MSE" if k[0].startswith("adding") else "test error"))
             for k in tuned if k[1] == "rnn-path" and (k[0], "rnn-path-k12") in tuned}
    if not parts:
        return Outcome(PARTLY, "untested: rnn-path-k12 not run", {}, ("not run",))
    better = all_of(parts)
    verdict = {HOLDS: FAILS, FAILS: HOLDS}.get(better.verdict, PARTLY)
    keys = [k for k in tuned if k[1] in ("rnn-path", "rnn-path-k12")]
    return Outcome(verdict, "kappa1+kappa2 better than kappa1? " + better.ours, better.numbers,
                   better.caveats).with_caveats(*edge_caveats(tuned, keys, label=lambda k: f"{k[0]}/{k[1]}"),
                                                *_not_learned(tuned, keys))


def _sequential(results: dict[str, Any]) -> Outcome:
    tuned = results["tuned"]
    parts = {k[0]: less(_finals(tuned, k), _finals(tuned, (k[0], "irnn-sgd")), label="RNN-Path - IRNN+SGD test error",
                        scale=100)
             for k in tuned if k[1] == "rnn-path" and not k[0].startswith("adding") and (k[0], "irnn-sgd") in tuned}
    if not parts:
        return Outcome(PARTLY, "untested: no sequential task in this protocol", {}, ("not run",))
    keys = [k for k in tuned if k[1] in ("rnn-path", "irnn-sgd") and not k[0].startswith("adding")]
    return all_of(parts).with_caveats(*edge_caveats(tuned, keys, label=lambda k: f"{k[0]}/{k[1]}"))


CLAIMS = [
    Claim("adding-solved", "RNN-Path (kappa1) solves the adding problem (test MSE below a tenth of the trivial 0.167) "
          "and beats IRNN + SGD at every length.", "Neyshabur et al. 2016", "Fig. 2",
          "near-zero MSE at T = 100, 400, 750; SGD at 0.167 for long T", _solves),
    Claim("kappa2-negligible", "kappa1 alone trains as well as kappa1 + kappa2.", "Neyshabur et al. 2016", "Sec. 4",
          "the paper drops kappa2", _kappa2_negligible),
    Claim("sequential", "RNN-Path reaches a lower test error than IRNN + SGD on pixel-by-pixel classification.",
          "Neyshabur et al. 2016", "Table 1", "~3% (sequential MNIST)", _sequential),
]


# ----------------------------------------------------------------------------- run

def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Tune and train every (task, method) over seeds (skipping finished runs); tables, figures, claims, section."""
    exp = (PathSGDRNNExperiment.quick() if quick else PathSGDRNNExperiment()).replace(overrides or {})
    root = experiment_dir(out, NAME, exp)
    problems = _problems(exp, root)
    restarts = {k: exp.restarts for k in problems if k[1] == "irnn-sgd"}
    adding = {k: p for k, p in problems.items() if k[0].startswith("adding")}
    classify = {k: p for k, p in problems.items() if k not in adding}
    # regression: the validation MSE; classification: the validation accuracy (cross-entropy favours underfitting)
    tuned = tune(adding, exp.seeds, jobs=jobs, desc=NAME, overwrite=overwrite, restarts=restarts) if adding else {}
    if classify:
        tuned.update(tune(classify, exp.seeds, jobs=jobs, desc=NAME, overwrite=overwrite, restarts=restarts,
                          score="val_acc", minimize=False))

    rows = []
    for (label, method), t in tuned.items():
        for (lr, seed), (_, run_dir, s) in sorted(t.runs.items()):
            rows.append({"task": label, "method": method, "lr": lr, "seed": seed, "chosen": lr == t.value,
                         "val_loss": s.get("val_loss"), "train_loss": s["train_loss"], "test_loss": s["test_loss"],
                         "test_err": 1 - s["test_acc"] if not label.startswith("adding") else math.nan,
                         "diverged": bool(s.get("diverged", False)), "restarts": s.get("restarts", 0),
                         "dir": str(run_dir)})
    write_records(root / "results.csv", rows, key=("dir",))

    solved_at = SOLVED_FRACTION * ADDING_BASELINE_MSE
    adding_rows, seq_rows = [], []
    for (label, method), t in tuned.items():
        finals = _finals(tuned, (label, method))
        edge = f" ({t.selection.edge} edge)" if t.selection.edge else ""
        rs = sum(s.get("restarts", 0) for _, _, s in t.at())
        if label.startswith("adding"):
            adding_rows.append([label, method, f"{t.value:g}{edge}", seed_stats(finals).fmt(),
                                f"{sum(f <= solved_at for f in finals)}/{len(finals)}", rs, PAPER_ADDING[method]])
        else:
            seq_rows.append([label, method, f"{t.value:g}{edge}", seed_stats(finals).fmt(scale=100), rs,
                             PAPER_SEQ_MNIST_ERR[method] if "mnist" in label else "n/a"])
    add_cols = ["task", "method", "chosen lr (validation)", "test MSE, mean [95%]",
                f"seeds solved (MSE <= {solved_at:.4f})", "IRNN restarts", "paper (approx)"]
    seq_cols = ["task", "method", "chosen lr (validation)", "test error %, mean [95%]", "IRNN restarts",
                "paper test error (seq. MNIST)"]
    write_tables(root / "table.csv", (add_cols, adding_rows), (seq_cols, seq_rows))

    figures = []
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for (label, method), t in tuned.items():
        field_name = "test_loss" if label.startswith("adding") else "test_acc"
        curves = []
        for _, run_dir, s in t.at():
            if s.get("diverged"):
                continue
            recs = [r for r in read_metrics(run_dir) if r["kind"] == "epoch"]
            curves.append(([r["step"] for r in recs], [r[field_name] if field_name == "test_loss" else
                                                       1 - r[field_name] for r in recs]))
        if curves:
            n = min(len(c[1]) for c in curves)
            panels.setdefault(label, {})[f"{method} (lr {t.value:g})"] = (
                curves[0][0][:n], [sum(c[1][i] for c in curves) / len(curves) for i in range(n)])
    for label in panels:
        if label.startswith("adding"):
            xs = next(iter(panels[label].values()))[0]
            panels[label]["trivial predictor (0.167)"] = (xs, [ADDING_BASELINE_MSE] * len(xs))
    adding_panels = {k: v for k, v in panels.items() if k.startswith("adding")}
    if adding_panels:
        plot_curves(adding_panels, root / "adding_mse.png", xlabel="step", ylabel="test MSE", logy=True)
        figures.append({"file": "adding_mse.png", "caption": "Adding problem: test MSE per epoch (mean over seeds), "
                                                             "each method at its chosen learning rate."})
    seq_panels = {k: v for k, v in panels.items() if not k.startswith("adding")}
    if seq_panels:
        plot_curves(seq_panels, root / "sequential_error.png", xlabel="step", ylabel="test error")
        figures.append({"file": "sequential_error.png", "caption": "Pixel-by-pixel classification: test error "
                                                                   "per epoch (mean over seeds)."})

    results = {"exp": exp, "tuned": tuned}
    write_claims(root, NAME, CLAIMS, results, title=TITLE, seeds=exp.seeds, seconds=compute_seconds(tuned),
                 quick=quick)
    records = json.loads((root / "claims.json").read_text())["claims"]
    verdicts = [f"{c['id']}: {c['verdict']} ({c['ours']})" + (f" [caveats: {'; '.join(c['caveats'])}]"
                                                             if c["caveats"] else "") for c in records]
    paragraphs = [
        f"Protocol (Neyshabur et al. 2016 after Le et al. 2015): one-layer ReLU RNN with {exp.hidden} hidden units "
        "(LSTM: the same number of cells; uRNN: the same number of complex units); IRNN and RNN-Path start from the "
        "identity recurrence with input and output "
        f"weights U[-0.01, 0.01] and zero biases; batch {exp.batch_size}; adding problem at T = {list(exp.lengths)} "
        f"with {exp.adding_train_size} training sequences ({100 * exp.val_fraction:g}% held out for validation) and "
        f"1,000 test sequences, {exp.adding_epochs} epochs; {', '.join(exp.sequential) or 'no'} pixel-by-pixel tasks "
        f"for {exp.sequential_epochs} epochs; seeds {list(exp.seeds)}. Methods (model, init, optimizer): "
        + "; ".join(f"{m} = {METHODS[m]}" for m in exp.methods)
        + f". RNN-Path: PathSGD with kappa1 (rnn-path) or kappa1 + kappa2 (rnn-path-k12, only where T <= "
        f"{exp.k12_max_len}) over the training length, its step multiplied by the first-step ratio "
        "(sum ||g|| / sum ||g/kappa||^2)^(1/2) of the first author's code. Learning rate per method from "
        f"{json.dumps({m: exp.lrs[m] for m in exp.methods})} by the mean validation MSE (adding) or accuracy "
        "(classification) over seeds (extended "
        f"by up to {exp.max_extensions} step(s) at an edge); gradient clipping "
        f"{json.dumps({m: exp.clip.get(m) for m in exp.methods})}; an IRNN+SGD run that diverges is restarted from "
        f"a new initialization up to {exp.restarts} times.",
        "Paper: " + PAPER_CLAIM,
        "Our result: " + " ".join(verdicts),
    ]
    warnings, caveat = run_warnings(rows, _describe_run, _unconverged_above)
    paragraphs += [caveat] if caveat else []
    section = Section(citations=list(CITATIONS), warnings=warnings, title=TITLE, paragraphs=paragraphs,
                      tables=[{"caption": "Adding problem, each method at its chosen learning rate (over seeds)",
                               "columns": add_cols, "rows": adding_rows},
                              {"caption": "Pixel-by-pixel classification", "columns": seq_cols, "rows": seq_rows}],
                      figures=figures, order=20)
    return write_section(root, section)


def _describe_run(r: dict[str, Any]) -> str:
    return f"{r['task']}, {r['method']} lr {r['lr']:g} seed {r['seed']}"


def _unconverged_above(r: dict[str, Any]) -> float:
    return ADDING_BASELINE_MSE if r["task"].startswith("adding") else math.log(10)  # trivial / chance level
