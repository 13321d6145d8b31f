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
import multiprocessing as mp
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from geomopt.experiments.sweep import default_jobs, run_all, run_one
from geomopt.measures.rank import granulated_kendall, kendall_tau
from geomopt.measures.runs import MEASURES_FILE, measure_run
from geomopt.report import write_records
from geomopt.train.checkpoint import write_json
from geomopt.train.config import TrainConfig, check_value

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
    """Expand a zoo TOML file into ``[(config, run_dir, hyperparameters)]`` and the measure options."""
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
        name = "_".join(f"{k}{v}" for k, v in hp.items()) or "run"
        runs.append((config, Path(out) / name, hp))
    return runs, spec.get("measure", {})


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("--backend ray needs Ray: pip install 'geomopt[ray]' (or use the default local pool)") \
            from exc
    return ray


def _ray_run_all(jobs: list[tuple[TrainConfig, Path]]) -> list[dict[str, Any]]:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init()
    remote = ray.remote(run_one)
    return ray.get([remote.remote(c, o) for c, o in jobs])


def train_zoo(grid: str | Path, out: str | Path, *, workers: int | None = None, backend: str = "local"
              ) -> list[dict[str, Any]]:
    """Train every run of the grid (finished runs skipped), each into ``out/NAME`` with its ``zoo.json``."""
    runs, measure_options = load_grid(grid, out)
    if backend == "ray":
        _import_ray()  # before any run folder is written
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / MEASURE_OPTIONS, measure_options)
    for config, run_dir, hp in runs:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / ZOO_KEY, hp)
    jobs = [(c, d) for c, d, _ in runs]
    if backend == "local":
        return run_all(jobs, workers, desc="zoo")
    if backend == "ray":
        return _ray_run_all(jobs)
    raise ValueError(f"unknown backend {backend!r}; choose 'local' or 'ray'")


def _measure_one(run_dir: str, options: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    return measure_run(run_dir, progress=False, **options)


def measure_zoo(zoo: str | Path, *, workers: int | None = None, options: dict[str, Any] | None = None
                ) -> list[Path]:
    """Compute measures.json in every finished run of a zoo directory (in a process pool)."""
    dirs = sorted(p.parent for p in Path(zoo).glob(f"*/{ZOO_KEY}") if (p.parent / "summary.json").is_file())
    dirs = [d for d in dirs if not json.loads((d / "summary.json").read_text()).get("diverged")]
    if not dirs:
        raise FileNotFoundError(f"{zoo}: no finished zoo run (a directory with {ZOO_KEY} and summary.json)")
    if options is None:
        stored = Path(zoo) / MEASURE_OPTIONS
        options = json.loads(stored.read_text()) if stored.is_file() else {}
    workers = workers or default_jobs()
    with tqdm(total=len(dirs), desc="measures", dynamic_ncols=True) as bar:
        if workers == 1:
            for d in dirs:
                _measure_one(str(d), options)
                bar.update(1)
        else:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for fut in as_completed([pool.submit(_measure_one, str(d), options) for d in dirs]):
                    fut.result()
                    bar.update(1)
    return dirs


def correlate(zoo: str | Path, out: str | Path | None = None, *, min_train_acc: float = 0.99,
              measures: tuple[str, ...] = CORRELATED, variant: str = "a") -> list[dict[str, Any]]:
    """Kendall tau and granulated Kendall of every measure vs the generalization gap over a zoo.

    Reads ``*/zoo.json`` and ``*/measures.json``; keeps runs with training accuracy
    ``>= min_train_acc`` (Jiang et al. keep 0.99). ``variant``: ``"a"`` (Jiang et al.'s tau-a over all
    groups, the default) or ``"b"`` (tau-b); each row names it in ``kendall_variant``. Writes
    ``correlation.csv`` and ``correlation.png`` into ``out`` (default: the zoo directory). Returns the rows.
    """
    zoo = Path(zoo)
    out = Path(out) if out is not None else zoo
    models = []
    for key in sorted(zoo.glob(f"*/{ZOO_KEY}")):
        mpath = key.parent / MEASURES_FILE
        if not mpath.is_file():
            continue
        res = json.loads(mpath.read_text())
        if 1 - res["train_error"] >= min_train_acc:
            models.append((json.loads(key.read_text()), res))
    if len(models) < 2:
        raise ValueError(f"{zoo}: {len(models)} measured run(s) with training accuracy >= {min_train_acc}; need >= 2 "
                         "(run `geomopt zoo`, then measures are computed by `geomopt correlate`; or lower "
                         "--min-train-acc)")
    rows = []
    for name in measures:
        pts = [(hp, r[name], r["gap"]) for hp, r in models
               if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
        if len(pts) < 2:
            continue
        tau = kendall_tau([p[1] for p in pts], [p[2] for p in pts], variant)
        gran = granulated_kendall([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], variant)
        rows.append({"measure": name, "models": len(pts), "kendall_variant": f"tau-{variant}", "kendall_tau": tau,
                     "granulated": gran["psi"],
                     **{f"granulated_{k}": v for k, v in gran.items() if k != "psi"}})
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("measure", "models", "kendall_variant",
                                                                               "kendall_tau", "granulated"), k))
        write_records(out / "correlation.csv", rows, fields=fields)
        plot_correlation(rows, out / "correlation.png")
    return rows


def plot_correlation(rows: list[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars: Kendall tau and granulated Kendall per measure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["measure"] for r in rows]
    y = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    ax.barh([i - 0.2 for i in y], [r["kendall_tau"] for r in rows], height=0.4, label=f"Kendall {rows[0]['kendall_variant']}")
    ax.barh([i + 0.2 for i in y], [r["granulated"] for r in rows], height=0.4, label=f"granulated Kendall ({rows[0]['kendall_variant']})")
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_xlabel("rank correlation with the generalization gap")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
