"""Model zoos: ``geomopt zoo --grid zoo.toml --out runs/zoo`` and ``geomopt correlate runs/zoo``.

Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic Generalization Measures and Where to Find
Them" (ICLR 2020): train many small networks over a hyperparameter grid to a target training
cross-entropy, compute every measure, and rank-correlate each with the generalization gap (Kendall
tau, and the granulated Kendall coefficient that varies one hyperparameter at a time).

Zoo grid (TOML, read with ``tomllib``)::

    [base]                 # TrainConfig fields shared by every run
    data = "digits"
    model = "mlp"
    epochs = 60
    target_train_loss = 0.01

    [grid]                 # every combination; lists of values
    width = [64, 256]      # hidden width (mlp) / channels (cnn), repeated `depth` times
    depth = [1, 2]
    lr = [0.03, 0.1]
    batch_size = [32, 128]
    weight_decay = [0.0, 5e-4]
    dropout = [0.0, 0.2]
    label_noise = [0.0]
    train_size = [1000]

    [measure]              # options of geomopt.measures.compute (optional)
    sharpness_steps = 10

Any other key of ``[grid]`` must be a TrainConfig field.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomopt.measures.rank import bootstrap_kendall, granulated_kendall, kendall_tau
from geomopt.runs import MEASURES_FILE, measure_run, stored_measures
from geomopt.nn.factory import check_trusted, trusted_models
from geomopt.report import write_records
from geomopt.sweep import Trial, TrainJob, TrialResult, make_backend, run_sweep
from geomopt.sweep.trial import SUMMARY
from geomopt.train.checkpoint import write_json
from geomopt.train.config import TrainConfig, check_value
from geomopt.train.engine import CHECKPOINT
from geomopt.train.run import CONFIG

ZOO_KEY = "zoo.json"
MEASURE_OPTIONS = "measure_options.json"
GRID_ONLY = ("width", "depth")

# measures correlated by `geomopt correlate` (when present); logs of products so that ranks are exact
CORRELATED = ("num_params", "log_frobenius_product", "log_spectral_product", "dist_init", "l1_path", "l2_path",
              "log_frobenius_over_margin", "log_spectral_over_margin", "log_l1_path_over_margin",
              "log_l2_path_over_margin", "log_spectral_complexity_over_margin", "log_bartlett_bound",
              "log_pac_bayes_spectral_bound", "margin", "sharpness", "pacbayes_flatness", "pacbayes_mag_flatness",
              "pacbayes_bound", "pacbayes_mag_bound", "hessian_top_eigenvalue", "hessian_trace",
              "hessian_top_eigenvalue_normalized", "hessian_trace_normalized")


def load_grid(path: str | Path, out: str | Path) -> tuple[list[tuple[TrainConfig, Path, dict[str, Any]]], dict]:
    """Expand a zoo TOML file into ``[(config, run_dir, hyperparameters)]`` and the measure options.

    A ``MODULE:FACTORY`` model must be trusted (``--trust-config``, :func:`geomopt.nn.trusted_models`)."""
    try:
        spec = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(spec) - {"base", "grid", "measure"})
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {unknown}; expected [base], [grid] and optionally [measure]")
    base = TrainConfig.from_dict(spec.get("base", {}), source=f"{path} [base]")
    grid = spec.get("grid", {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(k for k in grid if k not in names and k not in GRID_ONLY)
    if bad:
        raise ValueError(f"{path}: [grid] key(s) {bad} are neither TrainConfig fields nor width/depth")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"{path}: [grid] {k} must be a non-empty list of values, got {v!r}")
    keys = sorted(grid)
    runs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        hp = dict(zip(keys, values))
        fields = {k: v for k, v in hp.items() if k not in GRID_ONLY}
        if "width" in hp or "depth" in hp:
            width = check_value(hp.get("width", base.widths[0]), int, f"{path} [grid] width")
            depth = check_value(hp.get("depth", len(base.widths)), int, f"{path} [grid] depth")
            fields["widths"] = (width,) * depth
        config = TrainConfig.from_dict({**base.to_dict(), **fields}, source=f"{path} [grid]")
        check_trusted(config.model, path)  # a zoo file from someone else imports nothing by itself
        name = "_".join(f"{k}{v}" for k, v in hp.items()) or "run"
        runs.append((config, Path(out) / name, hp))
    return runs, spec.get("measure", {})


def train_zoo(grid: str | Path, out: str | Path, *, workers: int | None = None, backend: str = "local",
              measures: bool = True, checkpoints: bool = True, address: str | None = None,
              cpus_per_trial: float = 1, gpus_per_trial: float = 0, **sweep: Any) -> list[TrialResult]:
    """Train every run of the grid (finished runs skipped), each into ``out/NAME`` with its ``zoo.json``.

    With ``measures``, each trial also computes its ``measures.json`` (the grid's ``[measure]``
    options) on its worker; ``checkpoints=False`` does not send the final checkpoints back (less
    data; measures then cannot be recomputed). ``sweep``: options of :func:`geomopt.sweep.run_sweep`.
    """
    runs, measure_options = load_grid(grid, out)
    engine = make_backend(backend, workers=workers, address=address, cpus_per_trial=cpus_per_trial,
                          gpus_per_trial=gpus_per_trial)  # before anything is written: Ray may be missing
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / MEASURE_OPTIONS, measure_options)
    for config, run_dir, hp in runs:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / ZOO_KEY, hp)
    trials = [Trial(TrainJob(c, measure_options if measures else None), d, checkpoint=checkpoints)
              for c, d, _ in runs]
    return run_sweep(trials, backend=engine, desc="zoo", **sweep)


@dataclass(frozen=True)
class MeasureJob:
    """Compute ``measures.json`` of a run whose config.json and checkpoint.pt the sweep copied in."""

    options: dict[str, Any]
    overwrite: bool = False
    models: tuple[str, ...] = ()  # MODULE:FACTORY references the driver trusted
    result_file = MEASURES_FILE

    def __call__(self, workdir: Path) -> dict[str, Any]:
        with trusted_models(*self.models):
            return measure_run(workdir, progress=False, overwrite=True, **self.options)

    def done(self, out: Path) -> bool:
        return not self.overwrite and stored_measures(out, self.options) is not None


def measure_zoo(zoo: str | Path, *, workers: int | None = None, options: dict[str, Any] | None = None,
                overwrite: bool = False, **sweep: Any) -> list[Path]:
    """Compute measures.json in every finished run of a zoo directory that lacks it (or was measured
    with other options; every run with ``overwrite``), through the sweep engine."""
    dirs = sorted(p.parent for p in Path(zoo).glob(f"*/{ZOO_KEY}") if (p.parent / SUMMARY).is_file())
    dirs = [d for d in dirs if not json.loads((d / SUMMARY).read_text()).get("diverged")]
    if not dirs:
        raise FileNotFoundError(f"{zoo}: no finished zoo run (a directory with {ZOO_KEY} and {SUMMARY})")
    if options is None:
        stored = Path(zoo) / MEASURE_OPTIONS
        options = json.loads(stored.read_text()) if stored.is_file() else {}
    todo = [d for d in dirs if not MeasureJob(options, overwrite).done(d)]
    models = {d / CONFIG: TrainConfig.load(d / CONFIG).model for d in todo}
    for source, model in models.items():
        check_trusted(model, source)
    job = MeasureJob(options, overwrite, tuple(sorted(set(models.values()))))
    lacking = [d.name for d in todo if not (d / CHECKPOINT).is_file()]
    if lacking:
        raise FileNotFoundError(f"{zoo}: cannot compute measures without a checkpoint.pt in {lacking[:5]} "
                                f"({len(lacking)} run(s); trained without checkpoints?)")
    run_sweep([Trial(job, d, inputs=(CONFIG, CHECKPOINT), checkpoint=False) for d in todo], workers=workers,
              desc="measures", **sweep)
    return dirs


def correlate(zoo: str | Path, out: str | Path | None = None, *, min_train_acc: float = 0.99,
              measures: tuple[str, ...] = CORRELATED, variant: str = "a", bootstrap: int = 1000,
              seed: int = 0, echo: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Kendall tau (with a 95% bootstrap interval over the models) and granulated Kendall of every
    measure vs the generalization gap over a zoo.

    Reads the stored ``*/zoo.json`` and ``*/measures.json`` (nothing is recomputed: the same zoo
    gives the same table); keeps runs with training accuracy ``>= min_train_acc`` (Jiang et al.
    keep 0.99). ``variant``: ``"a"`` (Jiang et al.'s tau-a over all groups, the default) or ``"b"``
    (tau-b); each row names it in ``kendall_variant``. ``bootstrap`` resamples of the models (seeded
    by ``seed``; 0: no interval). Writes ``correlation.csv`` and ``correlation.png`` into ``out``
    (default: the zoo directory). Returns the table rows. ``echo`` (e.g. ``print``) receives one line:
    how many models were kept and why the others were dropped (:func:`select_models`).
    """
    zoo = Path(zoo)
    out = Path(out) if out is not None else zoo
    models, dropped = select_models(zoo, min_train_acc)
    message = _selection_message(len(models), dropped, min_train_acc)
    if len(models) < 2:
        raise ValueError(f"{zoo}: {message}; need >= 2 (run `geomopt zoo`, or lower --min-train-acc)")
    if echo is not None:
        echo(message)
    rows = []
    for name in measures:
        pts = [(hp, r[name], r["gap"]) for hp, r in models
               if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
        if len(pts) < 2:
            continue
        values, gaps = [p[1] for p in pts], [p[2] for p in pts]
        tau = kendall_tau(values, gaps, variant)
        lo, hi = bootstrap_kendall(values, gaps, variant, samples=bootstrap, seed=seed)
        gran = granulated_kendall([p[0] for p in pts], values, gaps, variant)
        rows.append({"measure": name, "models": len(pts), "kendall_variant": f"tau-{variant}", "kendall_tau": tau,
                     "kendall_tau_lo": lo, "kendall_tau_hi": hi, "bootstrap": bootstrap, "granulated": gran["psi"],
                     **{f"granulated_{k}": v for k, v in gran.items() if k != "psi"}})
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        first = ("measure", "models", "kendall_variant", "kendall_tau", "kendall_tau_lo", "kendall_tau_hi",
                 "bootstrap", "granulated")
        fields = sorted({k for r in rows for k in r},
                        key=lambda k: (k not in first, first.index(k) if k in first else 0, k))
        write_records(out / "correlation.csv", rows, fields=fields)
        plot_correlation(rows, out / "correlation.png")
    return rows


def select_models(zoo: Path, min_train_acc: float) -> tuple[list[tuple[dict, dict]], dict[str, list[tuple[str, float]]]]:
    """The zoo's models that :func:`correlate` ranks, as (hyperparameters, measures), and the others as
    (run name, training accuracy) by the reason they are left out: ``"unfinished"`` (no summary.json:
    failed or not yet run; accuracy NaN), ``"diverged"`` (NaN), ``"underfit"`` (training accuracy below
    ``min_train_acc``).

    Raises:
        ValueError: a finished run lacks its measures.json (they must be computed first).
    """
    models, missing = [], []
    dropped: dict[str, list[tuple[str, float]]] = {"unfinished": [], "diverged": [], "underfit": []}
    for key in sorted(zoo.glob(f"*/{ZOO_KEY}")):
        name, mpath, summary = key.parent.name, key.parent / MEASURES_FILE, key.parent / SUMMARY
        if not summary.is_file():
            dropped["unfinished"].append((name, math.nan))
        elif json.loads(summary.read_text()).get("diverged"):
            dropped["diverged"].append((name, math.nan))
        elif not mpath.is_file():
            missing.append(name)
        else:
            res = json.loads(mpath.read_text())
            if 1 - res["train_error"] >= min_train_acc:
                models.append((json.loads(key.read_text()), res))
            else:
                dropped["underfit"].append((name, 1 - res["train_error"]))
    if missing:
        raise ValueError(f"{zoo}: {len(missing)} finished run(s) without {MEASURES_FILE} (e.g. {missing[:3]}); "
                         "compute them with `geomopt correlate --recompute` (or `geomopt zoo` without --no-measures)")
    return models, dropped


def _selection_message(kept: int, dropped: dict[str, list[tuple[str, float]]], min_train_acc: float) -> str:
    total = kept + sum(map(len, dropped.values()))
    reasons = []
    if dropped["underfit"]:
        reasons.append(f"{len(dropped['underfit'])} with training accuracy below --min-train-acc {min_train_acc:g} "
                       f"(lowest {min(acc for _, acc in dropped['underfit']):.4f}; train them longer, or lower --min-train-acc)")
    if dropped["diverged"]:
        reasons.append(f"{len(dropped['diverged'])} diverged")
    if dropped["unfinished"]:
        reasons.append(f"{len(dropped['unfinished'])} unfinished (failed or not run: run `geomopt zoo` again)")
    return f"kept {kept} of {total} models" + (f"; dropped {', '.join(reasons)}" if reasons else "")


def plot_correlation(rows: list[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars: Kendall tau (with its bootstrap interval) and granulated Kendall per measure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["measure"] for r in rows]
    y = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    variant = rows[0]["kendall_variant"]
    err = [[max(0.0, r["kendall_tau"] - r["kendall_tau_lo"]) for r in rows],
           [max(0.0, r["kendall_tau_hi"] - r["kendall_tau"]) for r in rows]]
    ax.barh([i - 0.2 for i in y], [r["kendall_tau"] for r in rows], height=0.4,
            label=f"Kendall {variant} (95% bootstrap)",
            xerr=None if any(math.isnan(v) for v in err[0] + err[1]) else err, capsize=2)
    ax.barh([i + 0.2 for i in y], [r["granulated"] for r in rows], height=0.4, label=f"granulated Kendall ({variant})")
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_xlabel("rank correlation with the generalization gap")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
