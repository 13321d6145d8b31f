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

Tiers: ``quick``: the adding problem at T = 20 (1,000 steps per run), 3 seeds, RNN-Path (kappa1 and kappa1 +
kappa2), IRNN + SGD and IRNN + Adam (minutes). ``mid``: the adding problem at T = 50 with 40,000 training
sequences, 9 epochs (about 20,000 steps of batch 16), RNN-Path (kappa1) against IRNN + SGD, both from the
learning rates {3e-4, 1e-3, 3e-3} (up to three extension steps at an edge: in the ledger's ladder over T, at T
= 10 and 20 both methods' selections sat at the edge after one, and at T = 10 both were best at 0.027;
in timed runs at T = 50 RNN-Path with 3e-3 and above stopped moving, its output stuck at
0), 3 seeds. Its cost: about 4.7 ms of one core per step at T = 50 on an idle core (evaluation included), so
about 2 minutes per run and 18 runs (plus any extension or IRNN restart) in about 45 minutes with ``--jobs
1``; the ledger's run, beside another job on 2 cores, took 99 minutes (runs of 3.5-8 minutes). Why T = 50: it
is the largest length whose trivial plateau the budget can hope to get past (in 5,400 steps at lr 1e-3 both
methods were still at test MSE 0.15-0.16 at T = 50; at T = 100 RNN-Path sat at the trivial 0.167 after 1,800
steps), and long enough that the IRNN's exploding/vanishing products matter (the paper: IRNN + SGD fails from
T = 100 on); a length where neither method leaves the plateau is reported untestable, not as a failure. kappa2
(its step costs ``O(T n^3)`` more) is not run in the mid tier (the quick tier tests it). ``full``: the paper's
lengths 100, 400 and 750 and sequential MNIST-1D (MNIST with ``data_dir``), every method, 5 seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.data.sequences import ADDING_BASELINE_MSE
from geomopt.experiments.records import Records
from geomopt.experiments.skeleton import (Context, Experiment, Protocol, Ran, Report, chance_loss, seed_band, selected,
                                          tuned_records)
from geomopt.experiments.tuning import Problem, compute_seconds, tune
from geomopt.report import plot_bands
from geomopt.sweep import Claim, Grid, Outcome, RunGate, all_of, equivalent, gated, less, seed_stats, untestable
from geomopt.train import TrainConfig

NAME = "path-sgd-rnn"
CITATIONS = (
    'Neyshabur, Wu, Salakhutdinov & Srebro, "Path-Normalized Optimization of Recurrent Neural Networks with ReLU Activations", NeurIPS 2016',
    'Arjovsky, Shah & Bengio, "Unitary Evolution Recurrent Neural Networks", ICML 2016',
)  # the papers, by title, for the report
TITLE = "Path-SGD for ReLU RNNs (Neyshabur, Wu, Salakhutdinov & Srebro 2016)"
PAPER = "Neyshabur, Wu, Salakhutdinov & Srebro 2016"
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
# published numbers we can put beside ours (approximate, read off the paper's figures and tables)
PAPER_ADDING = {"rnn-path": "~0 (solved)", "rnn-path-k12": "not in the paper", "irnn-sgd": "0.167 (long T)",
                "np-rnn-sgd": "0.167 (long T)", "lstm-sgd": "not tabulated", "irnn-adam": "not in the paper",
                "urnn-adam": "not tabulated"}
PAPER_SEQ_MNIST_ERR = {"rnn-path": "~3%", "rnn-path-k12": "not in the paper", "irnn-sgd": "3.0% (iRNN, 97.0% acc)",
                       "np-rnn-sgd": "not tabulated", "lstm-sgd": "1.1% (98.9% acc, RMSProp, Cooijmans 2016)",
                       "irnn-adam": "not in the paper", "urnn-adam": "4.9% (uRNN, 95.1% acc, RMSProp, Arjovsky 2016)"}


@dataclass
class PathSGDRNNExperiment(Protocol, name=NAME):
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
                   adding_train_size=3_200, adding_epochs=5, seeds=(0, 1, 2))

    @classmethod
    def mid(cls) -> PathSGDRNNExperiment:
        grid = [3e-4, 1e-3, 3e-3]
        return cls(lengths=(50,), sequential=(), methods=("rnn-path", "irnn-sgd"),
                   lrs={"rnn-path": list(grid), "irnn-sgd": list(grid)}, adding_train_size=40_000, adding_epochs=9,
                   max_extensions=3, seeds=(0, 1, 2))

    def check(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"{NAME}: unknown method(s) {bad}; choose from {sorted(METHODS)}")
        missing = [m for m in self.methods if m not in self.lrs]
        if missing:
            raise ValueError(f"{NAME}: no learning-rate grid in `lrs` for method(s) {missing}")
        if any(t < 2 for t in self.lengths):
            raise ValueError(f"{NAME}: adding-problem lengths must be >= 2, got {self.lengths}")


CONFIG = PathSGDRNNExperiment  # the config class (geomopt results check rebuilds it from experiment.json)


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


def _final(task: str, summary: dict[str, Any]) -> float:
    """Test MSE for the adding problem, test error for classification; a diverged run: inf / 1."""
    if summary.get("diverged"):
        return math.inf if task.startswith("adding") else 1.0
    return float(summary["test_loss"]) if task.startswith("adding") else 1.0 - float(summary["test_acc"])


# ----------------------------------------------------------------------------- gates and claims

SOLVED_MSE = SOLVED_FRACTION * ADDING_BASELINE_MSE
# a run that has not solved its task converged when its training loss plateaued: at most 10% lower over the
# last 3 epochs, finite, below its start and at most 1.5x its best at the end
PLATEAU = RunGate(drop=1.0, rebound=0.5, plateau=0.1, window=3)
LEARNED = RunGate(drop=0.5, rebound=0.5)  # classification: the cross-entropy at most half its start, stable
GATE_TEXT = (
    f"RNN-Path's runs (kappa1 and kappa1 + kappa2) must be finite, converged (final training MSE below the "
    f"'solved' {SOLVED_MSE:.4f}, or else plateaued: at most {100 * PLATEAU.plateau:g}% lower over the last "
    f"{PLATEAU.window} epochs, below its start and at most {1 + PLATEAU.rebound:g}x its best) and their learning "
    "rate not at a grid edge after extension; IRNN + SGD's runs must be finite after the restarts, and its learning "
    f"rate not at a grid edge if it learned (mean test MSE below {LEARNED_FRACTION:g} x the trivial "
    f"{ADDING_BASELINE_MSE:.3f}): its failing to learn at every learning rate is the paper's outcome, not a gate "
    "failure; a length where neither method left the trivial plateau (mean test MSE at or above that level) is "
    "untestable (the adding problem's loss sits at the trivial level for many steps before it falls). On the "
    "pixel-by-pixel tasks both methods must be finite, learned (training cross-entropy at most half "
    "its start, at most 1.5x its best at the end) and not at a grid edge")


def _chosen(records: Records, task: str, method: str) -> list[dict[str, Any]]:
    return sorted(records.where(task=task, method=method, chosen=True), key=lambda r: r["seed"])


def _converged(records: Records, r: dict[str, Any]) -> str:
    """The gate failure of a compared run (the method the claim is about); empty when it passes."""
    name = _describe_run(r)
    if r["diverged"]:
        return f"{name}: diverged"
    if r.get("edge"):
        return f"{name}: chosen lr at the {r['edge']} edge of its grid after extension"
    curve = records.curve(r["run"], "train_loss")
    if r["task"].startswith("adding"):
        if all(math.isfinite(v) for v in curve) and len(curve) > 1 and curve[-1] <= SOLVED_MSE:
            return ""
        if len(curve) <= PLATEAU.window + 1:
            return f"{name}: too few epochs ({len(curve) - 1}) to judge a plateau over {PLATEAU.window}"
        return PLATEAU.check(curve, name)
    return LEARNED.check(curve, name)


def _baseline_gate(records: Records, r: dict[str, Any]) -> str:
    """IRNN + SGD on the adding problem: finite after its restarts; its lr at an edge only matters if it learned."""
    if r["diverged"]:
        return f"{_describe_run(r)}: diverged after {r['restarts']} restart(s)"
    learned = statistics.fmean(x["final"] for x in _chosen(records, r["task"], r["method"])) \
        < LEARNED_FRACTION * ADDING_BASELINE_MSE
    if r.get("edge") and learned:
        return f"{_describe_run(r)}: chosen lr at the {r['edge']} edge of its grid after extension (and it learned)"
    return ""


def _finals(rows: list[dict[str, Any]]) -> list[float]:
    return [float(r["final"]) for r in rows]


def _solves(records: Records) -> Outcome:
    """Per length: RNN-Path (kappa1) below IRNN + SGD and below the 'solved' threshold, over seeds."""
    parts, failures = {}, []
    for task in dict.fromkeys(r["task"] for r in records.rows if r["task"].startswith("adding")):
        path, sgd = _chosen(records, task, "rnn-path"), _chosen(records, task, "irnn-sgd")
        if not path or not sgd:
            continue
        t = task.split("=")[1]
        parts[f"T={t} vs IRNN+SGD"] = less(_finals(path), _finals(sgd), label="RNN-Path - IRNN+SGD test MSE")
        parts[f"T={t} solved"] = less(_finals(path), SOLVED_MSE, label=f"RNN-Path test MSE - {SOLVED_MSE:.4f}")
        failures += [_converged(records, r) for r in path] + [_baseline_gate(records, r) for r in sgd]
        if min(statistics.fmean(_finals(rows)) for rows in (path, sgd)) >= LEARNED_FRACTION * ADDING_BASELINE_MSE:
            failures.append(f"{task}: neither RNN-Path nor IRNN + SGD left the trivial plateau (mean test MSE >= "
                            f"{LEARNED_FRACTION:g} x {ADDING_BASELINE_MSE:.3f}); more steps would decide it")
    if not parts:
        return untestable("rnn-path or irnn-sgd was not run on the adding problem")
    return gated(all_of(parts), failures)


def _kappa2_negligible(records: Records) -> Outcome:
    """kappa1 alone and kappa1 + kappa2 reach the same test number within the margin (two one-sided tests)."""
    parts, failures = {}, []
    for task in dict.fromkeys(r["task"] for r in records.rows if r["method"] == "rnn-path-k12"):
        k1, k12 = _chosen(records, task, "rnn-path"), _chosen(records, task, "rnn-path-k12")
        if not k1:
            continue
        adding = task.startswith("adding")
        margin = KAPPA2_MARGIN_MSE if adding else KAPPA2_MARGIN_ERR
        parts[task] = equivalent(_finals(k12), _finals(k1), margin=margin, scale=1 if adding else 100,
                                 label="kappa1+kappa2 - kappa1 " + ("test MSE" if adding else "test error %"))
        failures += [_converged(records, r) for r in k1 + k12]
    if not parts:
        return untestable("rnn-path-k12 was not run (kappa2 only where T <= k12_max_len)")
    return gated(all_of(parts), failures)


def _sequential(records: Records) -> Outcome:
    parts, failures = {}, []
    for task in dict.fromkeys(r["task"] for r in records.rows if not r["task"].startswith("adding")):
        path, sgd = _chosen(records, task, "rnn-path"), _chosen(records, task, "irnn-sgd")
        if not path or not sgd:
            continue
        parts[task] = less(_finals(path), _finals(sgd), label="RNN-Path - IRNN+SGD test error %", scale=100)
        failures += [_converged(records, r) for r in path + sgd]
    if not parts:
        return untestable("no pixel-by-pixel task with both rnn-path and irnn-sgd in this protocol")
    return gated(all_of(parts), failures)


KAPPA2_MARGIN_MSE = 0.01  # test MSE, 6% of the trivial predictor's 0.167
KAPPA2_MARGIN_ERR = 0.01  # test error, 1 percentage point
CLAIMS = [
    Claim("adding-solved", f"RNN-Path (kappa1) solves the adding problem (test MSE below {SOLVED_MSE:.4f}, a tenth of "
          "the trivial 0.167) and beats IRNN + SGD at every length.", PAPER, "Sec. 5, Fig. 2 (adding problem)",
          "RNN-Path near zero (about 0.0015 test MSE) at T = 100, 400 and 750; IRNN + SGD stays at the trivial "
          "0.167 at the long lengths", _solves),
    Claim("kappa2-negligible", f"kappa1 alone trains as well as kappa1 + kappa2: their test MSE within "
          f"+-{KAPPA2_MARGIN_MSE:g} (adding) and their test error within +-{100 * KAPPA2_MARGIN_ERR:g} point "
          "(classification).", PAPER, "Sec. 4.2", "kappa2's contribution is negligible in practice; the experiments "
          "use kappa1 only", _kappa2_negligible),
    Claim("sequential", "RNN-Path reaches a lower test error than IRNN + SGD on pixel-by-pixel classification.",
          PAPER, "Sec. 5, Table 1", "about 3% test error on sequential MNIST, against 3.0% for the IRNN of Le et al.",
          _sequential),
]


def claims(exp: PathSGDRNNExperiment) -> list[Claim]:
    """The paper's claims (each is ``untestable here`` when this configuration did not run its part)."""
    return list(CLAIMS)


# ----------------------------------------------------------------------------- run

def _run(ctx: Context) -> Ran:
    """Every (task, method)'s learning rate tuned over the seeds (the adding problem on the validation MSE, the
    classification tasks on the validation accuracy: cross-entropy favours underfitting); a diverged IRNN + SGD
    run restarts from a new initialization. One row per run (final number, selection, restarts) and its
    per-epoch training loss and test MSE (or error)."""
    exp, root = ctx.exp, ctx.root
    problems = _problems(exp, root)
    restarts = {k: exp.restarts for k in problems if k[1] == "irnn-sgd"}
    adding = {k: p for k, p in problems.items() if k[0].startswith("adding")}
    classify = {k: p for k, p in problems.items() if k not in adding}
    tuned = tune(adding, exp.seeds, jobs=ctx.jobs, desc=NAME, overwrite=ctx.overwrite,
                 restarts=restarts) if adding else {}
    if classify:
        tuned.update(tune(classify, exp.seeds, jobs=ctx.jobs, desc=NAME, overwrite=ctx.overwrite, restarts=restarts,
                          score="val_acc", minimize=False))

    def row(key, lr, seed, s, t):
        task, method = key
        return {"task": task, "method": method, "lr": lr, "seed": seed, "final": _final(task, s),
                "val_loss": s.get("val_loss"), "train_loss": s["train_loss"], "test_loss": s["test_loss"],
                "diverged": bool(s.get("diverged", False)), "restarts": s.get("restarts", 0), **selected(t, lr, s)}

    def epoch(key, r):
        return {"epoch": r["epoch"], "step": r["step"], "train_loss": r["train_loss"],
                "test": r["test_loss"] if key[0].startswith("adding") else 1 - r["test_acc"]}
    return Ran(tuned_records(exp, tuned, root, row, epoch), compute_seconds(tuned), tuned)


def _report(ctx: Context, records: Records, ran: Ran) -> Report:
    """The adding and pixel-by-pixel tables and curves, the protocol beside the paper's claim."""
    exp = ctx.exp
    paragraphs = [
        f"Protocol ({ctx.tier} tier; Neyshabur et al. 2016 after Le et al. 2015): one-layer ReLU RNN with {exp.hidden} "
        "hidden units (LSTM: the same number of cells; uRNN: the same number of complex units); IRNN and RNN-Path "
        "start from the identity recurrence with input and output "
        f"weights U[-0.01, 0.01] and zero biases; batch {exp.batch_size}; adding problem at T = {list(exp.lengths)} "
        f"with {exp.adding_train_size} training sequences ({100 * exp.val_fraction:g}% held out for validation) and "
        f"1,000 test sequences, {exp.adding_epochs} epochs; {', '.join(exp.sequential) or 'no'} pixel-by-pixel tasks "
        f"for {exp.sequential_epochs} epochs; seeds {list(exp.seeds)}. Methods (model, init, optimizer): "
        + "; ".join(f"{m} = {METHODS[m]}" for m in exp.methods)
        + f". RNN-Path: PathSGD with kappa1 (rnn-path) or kappa1 + kappa2 (rnn-path-k12, only where T <= "
        f"{exp.k12_max_len}) over the training length, its step multiplied by the first-step ratio "
        "(sum ||g|| / sum ||g/kappa||^2)^(1/2) of the first author's code. Learning rate per method from "
        f"{json.dumps({m: exp.lrs[m] for m in exp.methods})} by the mean over seeds of each run's validation MSE "
        "(adding) or accuracy (classification) averaged over its last epochs (extended "
        f"by up to {exp.max_extensions} step(s) at an edge); gradient clipping "
        f"{json.dumps({m: exp.clip.get(m) for m in exp.methods})}; an IRNN+SGD run that diverges is restarted from "
        f"a new initialization up to {exp.restarts} times.",
        "Paper: " + PAPER_CLAIM,
        f"Run-quality gate: {GATE_TEXT}.",
    ]
    return Report(paragraphs, tables=_tables(records), figures=_figures(records, ctx.root))


def _tables(records: Records) -> list[dict[str, Any]]:
    """The adding table (test MSE) and the pixel-by-pixel table (test error %), each when it has rows."""
    add_rows, seq_rows = [], []
    for task, method in dict.fromkeys((r["task"], r["method"]) for r in records.rows):
        chosen = _chosen(records, task, method)
        finals = _finals(chosen)
        edge = f" ({chosen[0]['edge']} edge)" if chosen[0]["edge"] else ""
        lr, restarts = f"{chosen[0]['lr']:g}{edge}", sum(int(r["restarts"]) for r in chosen)
        if task.startswith("adding"):
            add_rows.append([task, method, lr, seed_stats(finals).fmt(),
                             f"{sum(f <= SOLVED_MSE for f in finals)}/{len(finals)}", restarts, PAPER_ADDING[method]])
        else:
            seq_rows.append([task, method, lr, seed_stats(finals).fmt(scale=100, bounds=(0, 1)), restarts,
                             PAPER_SEQ_MNIST_ERR[method] if "mnist" in task else "n/a"])
    add_cols = ["task", "method", "chosen lr (validation)", "test MSE, mean [95%]",
                f"seeds solved (MSE <= {SOLVED_MSE:.4f})", "IRNN restarts", "paper (approx)"]
    seq_cols = ["task", "method", "chosen lr (validation)", "test error %, mean [95%]", "IRNN restarts",
                "paper test error (seq. MNIST)"]
    tables = [(cap, cols, rows) for cap, cols, rows in [
        ("Adding problem, each method at its chosen learning rate (over seeds)", add_cols, add_rows),
        ("Pixel-by-pixel classification, each method at its chosen learning rate (over seeds)", seq_cols, seq_rows)]
        if rows]
    return [{"caption": cap, "columns": cols, "rows": rows} for cap, cols, rows in tables]


def _figures(records: Records, root: Path) -> list[dict[str, str]]:
    """Test MSE (adding) and test error % (classification) per step, mean over seeds with its 95% band."""
    panels: dict[str, dict[str, tuple[list[float], ...]]] = {}
    for task, method in dict.fromkeys((r["task"], r["method"]) for r in records.rows):
        chosen = [r for r in _chosen(records, task, method) if not r["diverged"]]
        if not chosen:
            continue
        panels.setdefault(task, {})[f"{method} (lr {chosen[0]['lr']:g})"] = seed_band(
            [records.curve(r["run"], "test") for r in chosen], xs=records.curve(chosen[0]["run"], "step"),
            scale=1 if task.startswith("adding") else 100)
    figures = []
    adding = {k: v for k, v in panels.items() if k.startswith("adding")}
    for lines in adding.values():
        xs = next(iter(lines.values()))[0]
        lines[f"trivial predictor ({ADDING_BASELINE_MSE:.3f})"] = (xs, *[[ADDING_BASELINE_MSE] * len(xs)] * 3)
    for part, fname, ylabel, caption in [
            (adding, "adding_mse.png", "test MSE", "Adding problem: test MSE per epoch"),
            ({k: v for k, v in panels.items() if k not in adding}, "sequential_error.png", "test error (%)",
             "Pixel-by-pixel classification: test error (%) per epoch")]:
        if part:
            plot_bands(part, root / fname, xlabel="step", ylabel=ylabel, logy=fname == "adding_mse.png")
            figures.append({"file": fname, "caption": f"{caption}, each method at its chosen learning rate: mean "
                                                      "over seeds with its 95% interval."})
    return figures


def _describe_run(r: dict[str, Any]) -> str:
    return f"{r['task']}, {r['method']} lr {r['lr']:g} seed {r['seed']}"


def _unconverged_above(r: dict[str, Any]) -> float:
    return ADDING_BASELINE_MSE if r["task"].startswith("adding") else chance_loss(r)  # trivial / chance level


EXPERIMENT = Experiment(NAME, PathSGDRNNExperiment, TITLE, CITATIONS, order=20, run=_run, claims=claims,
                        report=_report, describe=_describe_run, unconverged_above=_unconverged_above)
reproduce = EXPERIMENT.reproduce
