"""Reproduction: network size does not control generalization (the width sweep) and the 2019 capacity bound.

Neyshabur, Tomioka & Srebro, "In Search of the Real Inductive Bias: On the Role of Implicit
Regularization in Deep Learning" (ICLR 2015 workshop): two-layer ReLU nets of growing width H trained
with plain SGD, no weight decay or dropout; training error reaches zero at moderate H, yet test error
keeps falling as H grows far beyond that, also with label noise. Neyshabur, Li, Bhojanapalli, LeCun &
Srebro, "Towards Understanding the Role of Over-Parametrization in Generalization of Neural Networks"
(ICLR 2019): a capacity bound built on unit-wise distances to initialization and the output norms
(:mod:`geomopt.measures.two_layer`) falls with H like the test error, while the norm, spectral and VC
capacities grow.

Protocol (the 2019 code): ``x -> V relu(U x + b) + c``, SGD with momentum 0.9, batch 64, no weight
decay, each run stopped at the end of the first epoch with training cross-entropy <= 0.01 (or the epoch
budget; a run that did not reach it is marked and left out of the bound's claims), several seeds per
width. The learning rate is a protocol constant, not tuned: the claims compare widths, not methods.

Tiers: ``quick``: H = 2^2 .. 2^11 on digits and MNIST-1D (CI-sized). ``mid``: H = 2^2 .. 2^11 on a seeded
subset of 1,000 Fashion-MNIST training images (Debian's ``dataset-fashion-mnist``), tested on all 10,000
test images, with and without 20% label noise, lr 0.05, at most 150 epochs, 3 seeds. Why it tests the
headline: real images, and a training set small enough that widths from a few dozen units up interpolate
it within the budget while H reaches 2^11, 1.6 million parameters for 1,000 examples, so test error has
room to keep falling (or not) far beyond the interpolation threshold; runs stop at the same training
loss, so the bounds compare networks trained equally far. Cost, measured with OMP_NUM_THREADS=1 on a
heavily shared 2-core machine: one run at H = 2048 reached cross-entropy 0.0088 (training error 0, test
accuracy 82%) in 51 epochs and 38 s of CPU time (0.74 s per epoch), with 20% label noise in 67 epochs and
48 s; H = 256 in 73 epochs (11 s), H = 16 in 147 epochs (8 s, training error 0.3%: not yet interpolating).
About 140 s per seed without noise and 180 s with it: about 16 minutes of CPU for the 60 runs, some 20-30
minutes on 2 cores with ``--jobs 1``. ``full``: H = 2^2 ..
2^13 on MNIST and CIFAR-10 read from ``data_dir``, with and without label noise, lr 0.001, up to 1,000
epochs, 5 seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomopt.experiments.records import Records
from geomopt.experiments.skeleton import (Context, Experiment, Protocol, Ran, Report, epoch_records, plan_grid,
                                          planned_records)
from geomopt.measures.two_layer import BOUNDS
from geomopt.report import plot_bands
from geomopt.runs import MEASURES_FILE
from geomopt.sweep import Claim, Outcome, all_of, gated, greater, less, run_all, untestable
from geomopt.sweep.stats import band, seed_stats
from geomopt.sweep.trial import TrainJob
from geomopt.train import TrainConfig

NAME = "overparametrization"
CITATIONS = (
    'Neyshabur, Tomioka & Srebro, "In Search of the Real Inductive Bias: On the Role of Implicit Regularization in Deep Learning", ICLR 2015 workshop',
    'Neyshabur, Li, Bhojanapalli, LeCun & Srebro, "Towards Understanding the Role of Over-Parametrization in Generalization of Neural Networks", ICLR 2019',
)  # the papers, by title, for the report
TITLE = "Network size and generalization (Neyshabur, Tomioka & Srebro 2015; Neyshabur et al. 2019)"
# the worker computes these with geomopt.measures.compute (delta as in the 2019 code) into measures.json
MEASURE_OPTIONS = {"measures": ["two_layer"], "delta": 0.01}
MEASURED = BOUNDS + ("margin", "dist_U", "dist_U_21", "max_unit_dist", "dist_V", "fro_U", "fro_V",
                     "max_out_norm", "spec_U", "spec_V", "spec_U0", "l1max_U", "l1max_V", "num_params")
BOUND_LABELS = {"vc_bound": "VC dimension", "l1max_bound": "l1,inf (Bartlett & Mendelson 2002)",
                "frobenius_bound": "Frobenius (Neyshabur et al. 2015)",
                "spectral_l1_bound": "spectral-l2,1 (Bartlett et al. 2017)",
                "spectral_fro_bound": "spectral-Frobenius (Neyshabur et al. 2018)",
                "overparam_bound": "ours (Neyshabur et al. 2019)"}


@dataclass
class OverparamExperiment(Protocol, name=NAME):
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    datasets: tuple[str, ...] = ("mnist", "cifar10")
    data_dir: str | None = None
    widths: tuple[int, ...] = tuple(2 ** k for k in range(2, 14))
    label_noises: tuple[float, ...] = (0.0, 0.2)
    lr: float = 0.001
    momentum: float = 0.9
    batch_size: int = 64
    target_train_loss: float | None = 0.01  # None: a fixed budget of `epochs` for every run (as in 2015)
    epochs: int = 1000
    train_size: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)

    @classmethod
    def quick(cls) -> OverparamExperiment:
        return cls(datasets=("digits", "mnist1d"), widths=tuple(2 ** k for k in range(2, 12)), label_noises=(0.0, 0.1),
                   lr=0.05, epochs=150, seeds=(0, 1, 2))

    @classmethod
    def mid(cls) -> OverparamExperiment:
        """Fashion-MNIST, 1,000 training images (the full 10,000 test images), H = 2^2 .. 2^11, with and without
        20% label noise, lr 0.05, at most 150 epochs, 3 seeds (see the module docstring for why and the cost)."""
        return cls(datasets=("fashion-mnist",), widths=tuple(2 ** k for k in range(2, 12)), label_noises=(0.0, 0.2),
                   lr=0.05, epochs=150, train_size=1000, seeds=(0, 1, 2))

    def check(self) -> None:
        if len(self.widths) < 2 or sorted(self.widths) != list(self.widths) or self.widths[0] < 1:
            raise ValueError(f"{NAME}: widths must be at least two increasing positive ints, got {list(self.widths)}")
        if any(not 0 <= p < 1 for p in self.label_noises):
            raise ValueError(f"{NAME}: label_noises must lie in [0, 1), got {list(self.label_noises)}")
        if self.target_train_loss is not None and self.target_train_loss <= 0:
            raise ValueError(f"{NAME}: target_train_loss must be positive, got {self.target_train_loss}")


CONFIG = OverparamExperiment  # the config class (geomopt results check rebuilds it from experiment.json)


def _configs(exp: OverparamExperiment, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    def make(dataset: str, label_noise: float, width: int, seed: int) -> tuple[TrainConfig, Path]:
        return (TrainConfig(model="mlp", widths=(width,), data=dataset, data_dir=exp.data_dir,
                            train_size=exp.train_size, label_noise=label_noise, optimizer="momentum", lr=exp.lr,
                            momentum=exp.momentum, epochs=exp.epochs, batch_size=exp.batch_size, seed=seed,
                            target_train_loss=exp.target_train_loss),
                root / "runs" / dataset / f"noise{label_noise:g}" / f"h{width}" / f"seed{seed}")
    return plan_grid({"dataset": exp.datasets, "label_noise": exp.label_noises, "width": exp.widths,
                      "seed": exp.seeds}, make)


def _stopping(exp: OverparamExperiment) -> str:
    if exp.target_train_loss is None:
        return f"trained for a fixed budget of {exp.epochs} epochs"
    return f"trained to cross-entropy {exp.target_train_loss:g} (at most {exp.epochs} epochs)"


def _job(config: TrainConfig) -> TrainJob:
    """Train, then compute the two-layer measures on the worker (``measures.json`` comes back with the run)."""
    return TrainJob(config, measures=MEASURE_OPTIONS)


def _run(ctx: Context) -> Ran:
    """Every (dataset, noise, width, seed) trained and measured on its worker (finished runs skipped); one row per
    run (setting, seed, final numbers, measures) with its per-epoch numbers."""
    planned = _configs(ctx.exp, ctx.root)
    summaries = run_all([(_job(c), o) for c, o, _ in planned], ctx.jobs, desc=NAME, overwrite=ctx.overwrite)

    def row(s, run_dir):
        diverged = bool(s.get("diverged", False))
        out = {"train_err": 1 - s["train_acc"], "test_err": 1 - s["test_acc"], "train_loss": s["train_loss"],
               "epochs": s.get("epochs"),
               "reached_target": ctx.exp.target_train_loss is None or bool(s.get("reached_target")),
               "diverged": diverged, "seconds": s.get("seconds", 0.0)}
        if not diverged:
            stored = json.loads((run_dir / MEASURES_FILE).read_text())
            out.update({k: stored[k] for k in MEASURED})
        return out

    def curve(run_dir):
        return epoch_records(run_dir, lambda r: {"epoch": r["epoch"], "train_loss": r["train_loss"],
                                                 "train_err": 1 - r["train_acc"], "test_err": 1 - r["test_acc"]})
    records = planned_records(ctx.exp, planned, summaries, ctx.root, row, curve)
    return Ran(records, sum(float(r["seconds"]) for r in records.rows))


def _converged(r: dict[str, Any]) -> bool:
    return bool(r["reached_target"]) and not r["diverged"]


def _group(records: Records, data: str, noise: float) -> dict[int, list[dict[str, Any]]]:
    """Rows of one (dataset, noise) setting by width, each list in seed order."""
    by_width: dict[int, list[dict[str, Any]]] = {}
    for r in sorted(records.where(dataset=data, label_noise=noise), key=lambda r: r["seed"]):
        by_width.setdefault(r["width"], []).append(r)
    return dict(sorted(by_width.items()))


def _groups(records: Records) -> dict[tuple[str, float], dict[int, list[dict[str, Any]]]]:
    exp = records.exp
    return {(d, n): _group(records, d, n) for d in exp.datasets for n in exp.label_noises}


def _interpolating_width(group: dict[int, list[dict[str, Any]]]) -> int | None:
    """The smallest width whose training error is 0 in every seed."""
    return next((w for w, rs in group.items() if all(r["train_err"] == 0 and not r["diverged"] for r in rs)), None)


def _converged_width(group: dict[int, list[dict[str, Any]]]) -> int | None:
    """The smallest width that reached the target training loss in every seed (and every larger width too)."""
    widths = list(group)
    for i, w in enumerate(widths):
        if all(_converged(r) for v in widths[i:] for r in group[v]):
            return w
    return None


def _describe(r: dict[str, Any]) -> str:
    return f"{r['dataset']}, noise {r['label_noise']:g}, H={r['width']}, seed {r['seed']}"


def interpolation_failures(rows: list[dict[str, Any]]) -> list[str]:
    """The gate of the test-error claims among ``rows`` (runs at or beyond the interpolating width): diverged,
    or training error above 0 at the end."""
    out = []
    for r in rows:
        if r["diverged"]:
            out.append(f"{_describe(r)}: diverged")
        elif r["train_err"] > 0:
            out.append(f"{_describe(r)}: not interpolating (training error {100 * r['train_err']:.3g} % > 0)")
    return out


def _test_keeps_falling(records: Records, noisy: bool) -> Outcome:
    parts = {}
    for (data, noise), group in _groups(records).items():
        if (noise > 0) != noisy:
            continue
        w0, wmax = _interpolating_width(group), max(group)
        label = f"{data}, noise {noise:g}"
        if w0 is None or w0 == wmax:
            parts[label] = untestable(f"{label}: training error reached 0 in every seed at no width below the largest "
                                      f"(H={wmax}): wider nets, more epochs or fewer training examples would test it",
                                      numbers={"interpolating_width": w0})
            continue
        out = less([r["test_err"] for r in group[wmax]], [r["test_err"] for r in group[w0]],
                   label=f"test error at H={wmax} - at H={w0} (train error 0 from H={w0}), %", scale=100)
        parts[label] = gated(out, interpolation_failures(group[w0] + group[wmax]))
    if not parts:
        return untestable("not run: no label noise above 0 in label_noises" if noisy else
                          "not run: no setting without label noise")
    return all_of(parts)


def _bound_trend(records: Records, keys: tuple[str, ...], falls: bool) -> Outcome:
    parts = {}
    target = records.exp.target_train_loss
    for (data, noise), group in _groups(records).items():
        if noise > 0:
            continue
        wc, wmax = _converged_width(group), max(group)
        if wc is None or wc == wmax:
            parts[data] = untestable(f"{data}: fewer than two widths reached training loss {target} in every seed (the "
                                     "bounds are compared among networks trained to the same loss); more epochs "
                                     "would test it", numbers={"converged_width": wc})
            continue
        for key in keys:
            hi, lo = [r[key] for r in group[wmax]], [r[key] for r in group[wc]]
            test = less if falls else greater
            parts[f"{data}: {BOUND_LABELS[key]}"] = test(hi, lo, label=f"{key} at H={wmax} - at H={wc}", digits=3)
    if not parts:
        return untestable("not run: no setting without label noise")
    return all_of(parts)


def claims(exp: OverparamExperiment) -> list[Claim]:
    """The paper's claims (each decides ``untestable here`` itself where the sweep lacks what it needs)."""
    return list(CLAIMS)


CLAIMS = [
    Claim("test-falls-beyond-interpolation",
          "Test error keeps falling as the width grows beyond the width at which training error reaches zero "
          "(largest width vs the smallest interpolating one, per dataset, paired by seed).",
          "Neyshabur, Tomioka & Srebro 2015", "Fig. 1 (MNIST, CIFAR-10)",
          "MNIST: test error keeps falling up to H = 8192 although training error is 0 from moderate H (curves)",
          lambda records: _test_keeps_falling(records, noisy=False)),
    Claim("test-falls-with-label-noise",
          "With some label noise, test error still falls with width beyond zero training error.",
          "Neyshabur, Tomioka & Srebro 2015", "Fig. 1 (right)", "the same trend with noisy labels (curves)",
          lambda records: _test_keeps_falling(records, noisy=True)),
    Claim("overparam-bound-falls",
          "The 2019 capacity bound decreases with the width among networks trained to the same training loss.",
          "Neyshabur et al. 2019", "Fig. 6, Table 1",
          "decreases over H = 2^6 .. 2^15 (CIFAR-10, SVHN, MNIST, trained to cross-entropy 0.01)",
          lambda records: _bound_trend(records, ("overparam_bound",), falls=True)),
    Claim("other-bounds-grow",
          "The VC, Frobenius, spectral-l2,1 and spectral-Frobenius capacities increase with the width.",
          "Neyshabur et al. 2019", "Fig. 6", "each increases with H (curves)",
          lambda records: _bound_trend(records, ("vc_bound", "frobenius_bound", "spectral_l1_bound",
                                                 "spectral_fro_bound"), falls=False)),
]


def _trend_table(records: Records) -> tuple[list[str], list[list[Any]]]:
    """Per dataset: each measure at the smallest converged width and at the largest, and its direction."""
    columns = ["dataset", "measure", "H from", "at H from", "H to", "at H to", "ratio", "direction (seeds agreeing)"]
    rows = []
    for (data, noise), group in _groups(records).items():
        if noise > 0:
            continue
        wc, wmax = _converged_width(group), max(group)
        if wc is None or wc == wmax:
            continue
        for key in ("num_params",) + BOUNDS + ("dist_U", "fro_V", "spec_U0", "margin"):
            a, b = [float(r[key]) for r in group[wc]], [float(r[key]) for r in group[wmax]]
            up = sum(y > x for x, y in zip(a, b))
            sa, sb = seed_stats(a), seed_stats(b)
            direction = "grows" if up == len(a) else "falls" if up == 0 else "mixed"
            rows.append([data, BOUND_LABELS.get(key, key), wc, sa.fmt(), wmax, sb.fmt(), sb.mean / sa.mean,
                         f"{direction} ({max(up, len(a) - up)}/{len(a)})"])
    return columns, rows


def _seed_curves(group: dict[int, list[dict[str, Any]]], widths: list[int], value) -> list[list[float]]:
    """One curve over ``widths`` per seed (the rows of each width are in seed order)."""
    return [[value(group[w][i]) for w in widths] for i in range(len(group[widths[0]]))]


def _figures(records: Records, root: Path) -> list[dict[str, str]]:
    exp = records.exp
    errors: dict[str, dict[str, tuple]] = {}
    bounds: dict[str, dict[str, tuple]] = {}
    for (data, noise), group in _groups(records).items():
        widths = list(group)
        panel = f"{data}, label noise {noise:g}"
        for what in ("train_err", "test_err"):
            mean, low, high = band(_seed_curves(group, widths, lambda r, what=what: 100 * r[what]))
            errors.setdefault(panel, {})[what.replace("_err", " error")] = (widths, mean, low, high)
        wc = _converged_width(group)
        if noise > 0 or wc is None:
            continue
        kept = [w for w in widths if w >= wc]
        for key in BOUNDS:
            curves = _seed_curves(group, kept, lambda r, key=key: r[key])
            mean, low, high = band([[v / curve[0] for v in curve] for curve in curves])
            bounds.setdefault(f"{data} ({_stopping(exp)})", {})[BOUND_LABELS[key]] = \
                (kept, mean, low, high)
    figures = []
    plot_bands(errors, root / "errors.png", xlabel="hidden units H", ylabel="error %", logx=True, bounds=(0, 100))
    figures.append({"file": "errors.png", "caption": "Training and test error vs width (mean and 95% band over "
                                                     f"{len(exp.seeds)} seeds)."})
    if bounds:
        plot_bands(bounds, root / "capacity.png", xlabel="hidden units H", ylabel="relative capacity",
                   logx=True, logy=True)
        figures.append({"file": "capacity.png", "caption": "Each capacity term divided by its value at the smallest "
                        "width that reached the target loss in every seed (per seed, then mean and 95% band)."})
    return figures


def _report(ctx: Context, records: Records, ran: Ran) -> Report:
    """The errors and capacity trends by width, their figures, the protocol."""
    exp = ctx.exp
    error_columns = ["dataset", "label noise", "H", "train error %", "test error %", "reached loss target (seeds)"]
    error_rows = []
    for (data, noise), group in _groups(records).items():
        for w, rs in group.items():
            error_rows.append([data, noise, w, seed_stats([r["train_err"] for r in rs]).fmt(100, bounds=(0, 1)),
                               seed_stats([r["test_err"] for r in rs]).fmt(100, bounds=(0, 1)),
                               f"{sum(_converged(r) for r in rs)}/{len(rs)}"])
    trend_columns, trend_rows = _trend_table(records)
    figures = _figures(records, ctx.root)
    paragraphs = [
        f"Protocol ({ctx.tier} tier): x -> V relu(U x + b) + c, SGD lr {exp.lr:g} momentum {exp.momentum:g}, batch "
        f"{exp.batch_size}, no weight decay or dropout; each run is {_stopping(exp)}. Widths {list(exp.widths)}, "
        f"datasets {list(exp.datasets)}" + (f" ({exp.train_size} training examples)" if exp.train_size else "")
        + f", label noise {list(exp.label_noises)}, seeds {list(exp.seeds)}. Bounds: geomopt.measures.two_layer, "
        "margin = 5th percentile of the signed training margins. The learning rate is fixed by the protocol (not "
        "tuned): the claims compare widths.",
        "Run-quality gates: the test-error claims compare the smallest width with training error 0 in every seed "
        "with the largest width, whose runs must not diverge and must also reach training error 0; the bound claims "
        "compare the smallest width from which every run reached the loss target with the largest. Where no such "
        "pair of widths exists the claim is 'untestable here'.",
    ]
    return Report(paragraphs, tables=[
        {"caption": "Errors by width (mean [95% interval] over seeds, clipped to [0, 100] %)", "columns": error_columns,
         "rows": error_rows},
        {"caption": "Which capacity terms grow and which fall with H (runs that reached the loss target)",
         "columns": trend_columns, "rows": trend_rows}], figures=figures)


EXPERIMENT = Experiment(NAME, OverparamExperiment, TITLE, CITATIONS, order=15, run=_run, claims=claims, report=_report)
reproduce = EXPERIMENT.reproduce
