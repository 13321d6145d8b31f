"""Reproduction: EKFAC vs K-FAC, SGD with momentum and Adam (training loss per epoch and per second).

George, Laurent, Bouthillier, Ballas & Vincent, "Fast Approximate Natural Gradient Descent in a
Kronecker-factored Eigenbasis", NeurIPS 2018. Protocol of their deep autoencoder benchmark at CPU
scale: a deep tanh autoencoder trained with binary cross-entropy reconstruction loss (inputs in
[0, 1]), and a small CNN classifier; every optimizer with a small learning-rate (and, for K-FAC /
EKFAC, damping) grid; the best setting of each (lowest final training loss) is compared by its
training-loss curve per epoch and per wall-clock second and by the time to reach a target loss
(the worst of the optimizers' best final losses, so every optimizer reaches it).

The paper's claim: EKFAC optimizes faster than K-FAC per epoch and in wall-clock, and both faster
than SGD with momentum and Adam on the autoencoder.

``--quick``: digits (8 x 8) autoencoder 64-48-24-8-24-48-64 and a 2-layer CNN on digits, 15 epochs,
a few minutes on 2 cores. Full protocol: MNIST from ``data_dir`` with 784-1000-500-250-30-250-500-1000-784.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from tqdm.auto import tqdm

from geomopt.data import load_dataset, make_loader
from geomopt.experiments.config import experiment_dir, merge_overrides
from geomopt.sweep import default_jobs, run_all
from geomopt.optim import EKFAC, KFAC, build_optimizer
from geomopt.report import Section, plot_curves, write_records, write_section, write_tables
from geomopt.train import NonFiniteLossError, TrainConfig, fit, read_metrics
from geomopt.train.checkpoint import write_json

NAME = "ekfac"
CITATIONS = (
    'George, Laurent, Bouthillier, Ballas & Vincent, "Fast Approximate Natural Gradient Descent in a Kronecker-factored Eigenbasis", NeurIPS 2018',
)  # the papers, by title, for the report
PAPER_CLAIM = ("George et al. (2018) report, on the MNIST deep autoencoder (and VGG11/ResNet on CIFAR-10), that "
               "EKFAC reaches a given training loss in fewer epochs and less wall-clock time than K-FAC (with the "
               "same amortized inversion period), and that both outperform SGD with momentum and Adam on the "
               "autoencoder.")
KRONECKER = ("kfac", "ekfac")


@dataclass
class EKFACExperiment:
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    dataset: str = "mnist"
    data_dir: str | None = None
    widths: tuple[int, ...] = (1000, 500, 250, 30, 250, 500, 1000)
    optimizers: tuple[str, ...] = ("momentum", "adam", "kfac", "ekfac")
    lrs: dict[str, list[float]] = field(default_factory=lambda: {
        "momentum": [0.01, 0.03, 0.1], "adam": [3e-4, 1e-3, 3e-3], "kfac": [0.01, 0.03, 0.1],
        "ekfac": [0.01, 0.03, 0.1]})
    dampings: list[float] = field(default_factory=lambda: [0.01, 0.1])
    fisher: str = "true"
    update_freq: int = 10
    inv_freq: int = 100
    epochs: int = 50
    batch_size: int = 100
    train_size: int | None = None
    cnn: bool = True
    cnn_data: str = "digits"
    cnn_widths: tuple[int, ...] = (16, 32)
    cnn_epochs: int = 15
    seed: int = 0

    @classmethod
    def quick(cls) -> EKFACExperiment:
        return cls(dataset="digits", widths=(48, 24, 8, 24, 48), epochs=30, update_freq=5, inv_freq=20,
                   lrs={"momentum": [0.03, 0.1, 0.3], "adam": [1e-3, 3e-3, 1e-2], "kfac": [0.03, 0.1, 0.3],
                        "ekfac": [0.03, 0.1, 0.3]}, dampings=[0.3, 1.0], cnn_widths=(8, 16), cnn_epochs=8)

    def replace(self, overrides: dict[str, Any]) -> EKFACExperiment:
        d = merge_overrides(self, overrides, NAME)
        missing = [o for o in d["optimizers"] if o not in d["lrs"]]
        if missing:
            raise ValueError(f"{NAME}: no learning-rate grid in `lrs` for optimizer(s) {missing}")
        return EKFACExperiment(**d)


def autoencoder(d: int, widths: tuple[int, ...], seed: int) -> nn.Sequential:
    """``d -> widths... -> d`` with tanh between layers (none at the code layer), logits out."""
    torch.manual_seed(seed)
    sizes = (d,) + tuple(widths) + (d,)
    code = len(widths) // 2
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 and i != code:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over pixels, mean over the batch."""
    return F.binary_cross_entropy_with_logits(logits, target.flatten(1), reduction="sum") / logits.shape[0]


def run_autoencoder(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train one autoencoder run with :func:`geomopt.train.fit` (skips a finished run; one thread)."""
    out = Path(out)
    if (out / "summary.json").is_file() and (out / "spec.json").is_file() \
            and json.loads((out / "spec.json").read_text()) == spec:
        return json.loads((out / "summary.json").read_text())
    torch.set_num_threads(1)
    bundle = load_dataset(spec["dataset"], data_dir=spec["data_dir"], seed=spec["seed"], train_size=spec["train_size"])
    x_train, x_test = bundle.train.tensors[0].float(), bundle.test.tensors[0].float()
    if x_train.min() < 0 or x_train.max() > 1:  # scale to [0, 1] for the Bernoulli likelihood
        lo, hi = x_train.min(), x_train.max()
        x_train, x_test = (x_train - lo) / (hi - lo), ((x_test - lo) / (hi - lo)).clamp(0, 1)
    train_set, test_set = TensorDataset(x_train, x_train), TensorDataset(x_test, x_test)
    d = x_train[0].numel()
    model = autoencoder(d, tuple(spec["widths"]), spec["seed"])
    if spec["optimizer"] in KRONECKER:  # Bernoulli predictive distribution for the 'true' Fisher
        cls = KFAC if spec["optimizer"] == "kfac" else EKFAC
        opt = cls(model, lr=spec["lr"], momentum=0.9, damping=spec["damping"], update_freq=spec["update_freq"],
                  inv_freq=spec["inv_freq"], fisher=spec["fisher"], likelihood="bernoulli")
    else:
        opt = build_optimizer(spec["optimizer"], model, lr=spec["lr"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "spec.json", spec)
    try:
        summary = fit(model, opt, make_loader(train_set, spec["batch_size"], shuffle=True, seed=spec["seed"]),
                      make_loader(test_set, 1000, shuffle=False), epochs=spec["epochs"], out_dir=out,
                      loss_fn=reconstruction_loss, metric=None, progress=False,
                      eval_train_loader=make_loader(train_set, 1000, shuffle=False), extra_state={"spec": spec})
    except NonFiniteLossError as exc:
        summary = {"diverged": True, "error": str(exc), "train_loss": math.inf, "test_loss": math.inf}
    write_json(out / "summary.json", summary)
    return summary


def _grid(exp: EKFACExperiment, root: Path) -> list[tuple[dict[str, Any], Path]]:
    runs = []
    for opt in exp.optimizers:
        for lr in exp.lrs[opt]:
            for damping in (exp.dampings if opt in KRONECKER else [None]):
                spec = {"dataset": exp.dataset, "data_dir": exp.data_dir, "train_size": exp.train_size,
                        "widths": list(exp.widths), "optimizer": opt, "lr": lr, "damping": damping,
                        "update_freq": exp.update_freq, "inv_freq": exp.inv_freq, "epochs": exp.epochs,
                        "fisher": exp.fisher,
                        "batch_size": exp.batch_size, "seed": exp.seed}
                tag = f"lr{lr:g}" + (f"_damp{damping:g}" if damping is not None else "")
                runs.append((spec, root / "autoencoder" / opt / tag))
    return runs


def _cnn_grid(exp: EKFACExperiment, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    runs = []
    for opt in exp.optimizers:
        for lr in exp.lrs[opt]:
            for damping in (exp.dampings if opt in KRONECKER else [None]):
                extra = {"damping": damping, "update_freq": exp.update_freq, "inv_freq": exp.inv_freq,
                         "fisher": exp.fisher} \
                    if damping is not None else {}
                cfg = TrainConfig(model="cnn", widths=exp.cnn_widths, data=exp.cnn_data, data_dir=exp.data_dir,
                                  optimizer=opt, lr=lr, epochs=exp.cnn_epochs, batch_size=exp.batch_size,
                                  seed=exp.seed, **extra)
                tag = f"lr{lr:g}" + (f"_damp{damping:g}" if damping is not None else "")
                runs.append((cfg, root / "cnn" / opt / tag, {"optimizer": opt, "lr": lr, "damping": damping}))
    return runs


def _epochs(out: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(out) if r["kind"] == "epoch"]


def _time_to(recs: list[dict[str, Any]], target: float) -> tuple[float, float]:
    """(epoch, seconds) of the first epoch record with train_loss <= target (inf if never)."""
    for r in recs:
        if r["train_loss"] <= target:
            return float(r["epoch"]), float(r["time"])
    return math.inf, math.inf


def _study(name: str, rows: list[dict[str, Any]], exp: EKFACExperiment, root: Path, logy: bool):
    """Best run per optimizer, curves, time-to-target table."""
    best = {}
    for opt in exp.optimizers:
        cands = [r for r in rows if r["optimizer"] == opt]
        best[opt] = min(cands, key=lambda r: r["train_loss"] if math.isfinite(r["train_loss"]) else math.inf)
    finals = [b["train_loss"] for b in best.values() if math.isfinite(b["train_loss"])]
    target = max(finals) if finals else math.inf
    table = []
    curves_ep: dict[str, tuple[list[float], list[float]]] = {}
    curves_t: dict[str, tuple[list[float], list[float]]] = {}
    for opt, b in best.items():
        recs = _epochs(Path(b["dir"])) if math.isfinite(b["train_loss"]) else []
        ep, sec = _time_to(recs, target) if recs else (math.inf, math.inf)
        per_epoch = (recs[-1]["time"] - recs[0]["time"]) / max(recs[-1]["epoch"], 1) if recs else math.nan
        b.update(epochs_to_target=ep, seconds_to_target=sec, seconds_per_epoch=per_epoch)
        label = f"{opt} (lr {b['lr']:g}" + (f", damping {b['damping']:g})" if b["damping"] is not None else ")")
        if recs:
            curves_ep[label] = ([r["epoch"] for r in recs], [r["train_loss"] for r in recs])
            curves_t[label] = ([r["time"] for r in recs], [r["train_loss"] for r in recs])
        table.append([opt, b["lr"], b["damping"] if b["damping"] is not None else "-", b["train_loss"], b["test_loss"],
                      ep, sec, per_epoch])
    fig = f"{name}_train_loss.png"
    plot_curves({f"{name}: per epoch": curves_ep, f"{name}: per second": curves_t}, root / fig,
                xlabel="epoch | seconds", ylabel="training loss", logy=logy, ncols=2)
    return best, target, table, fig


def _verdict(name: str, best: dict[str, dict[str, Any]], target: float) -> str:
    parts = []
    if "ekfac" in best and "kfac" in best:
        e, k = best["ekfac"], best["kfac"]
        parts.append(f"{name}: EKFAC final training loss {e['train_loss']:.4g} vs K-FAC {k['train_loss']:.4g} "
                     f"({'lower' if e['train_loss'] < k['train_loss'] else 'NOT lower'}); to reach {target:.4g}: "
                     f"EKFAC {e['epochs_to_target']:g} epochs / {e['seconds_to_target']:.3g} s, K-FAC "
                     f"{k['epochs_to_target']:g} epochs / {k['seconds_to_target']:.3g} s, so the per-epoch claim "
                     f"{'holds' if e['epochs_to_target'] <= k['epochs_to_target'] else 'does NOT hold'} and the "
                     f"wall-clock claim {'holds' if e['seconds_to_target'] <= k['seconds_to_target'] else 'does NOT hold'}"
                     f" here.")
    firsts = [o for o in best if o not in KRONECKER]
    for opt in [o for o in ("ekfac", "kfac") if o in best]:
        beaten = [o for o in firsts if best[opt]["seconds_to_target"] < best[o]["seconds_to_target"]]
        lower = [o for o in firsts if best[opt]["train_loss"] < best[o]["train_loss"]]
        parts.append(f"{opt.upper()} reaches the target faster in wall-clock than {len(beaten)}/{len(firsts)} of "
                     f"{', '.join(firsts)} ({', '.join(beaten) or 'none'}) and ends lower than {len(lower)}/"
                     f"{len(firsts)} ({', '.join(lower) or 'none'}).")
    return " ".join(parts)


def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Run both grids (skipping finished runs), then write results.csv, table.csv, figures, section.json."""
    exp = (EKFACExperiment.quick() if quick else EKFACExperiment()).replace(overrides or {})
    root = experiment_dir(out, NAME, exp)
    grid = _grid(exp, root)
    workers = jobs or default_jobs()
    bar = dict(total=len(grid), desc=f"{NAME} autoencoder", dynamic_ncols=True)
    if workers == 1:
        summaries = [run_autoencoder(s, o) for s, o in tqdm(grid, **bar)]
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            summaries = list(tqdm(pool.map(run_autoencoder, [s for s, _ in grid], [o for _, o in grid]), **bar))
    rows = [{"study": "autoencoder", "optimizer": s["optimizer"], "lr": s["lr"], "damping": s["damping"],
             "train_loss": r["train_loss"], "test_loss": r["test_loss"], "diverged": bool(r.get("diverged", False)),
             "dir": str(o)} for (s, o), r in zip(grid, summaries)]
    studies = [("autoencoder", rows)]
    if exp.cnn:
        cnn = _cnn_grid(exp, root)
        results = run_all([(c, o) for c, o, _ in cnn], workers, desc=f"{NAME} cnn", overwrite=overwrite)
        cnn_rows = [{"study": "cnn", **key, "train_loss": r["train_loss"], "test_loss": r["test_loss"],
                     "diverged": bool(r.get("diverged", False)), "dir": str(o)} for (c, o, key), r in zip(cnn, results)]
        rows = rows + cnn_rows
        studies.append(("cnn", cnn_rows))
    write_records(root / "results.csv", rows)

    columns = ["study", "optimizer", "chosen lr", "damping", "final train loss", "final test loss",
               "epochs to target", "seconds to target", "seconds per epoch"]
    table_rows, figures, verdicts = [], [], []
    for name, rs in studies:
        best, target, table, fig = _study(name, rs, exp, root, logy=True)
        table_rows += [[name] + row for row in table]
        figures.append({"file": fig, "caption": f"{name}: training loss per epoch (left) and per wall-clock second "
                                                f"(right, including the per-epoch evaluation), best setting of each "
                                                f"optimizer; target loss {target:.4g}."})
        verdicts.append(_verdict(name, best, target))
    write_tables(root / "table.csv", (columns, table_rows))
    paragraphs = [
        f"Protocol: autoencoder {exp.dataset} {'-'.join(map(str, exp.widths))} (tanh, binary cross-entropy summed "
        f"over pixels), batch {exp.batch_size}, {exp.epochs} epochs; CNN {'-'.join(map(str, exp.cnn_widths))} on "
        f"{exp.cnn_data}, {exp.cnn_epochs} epochs; learning rates {json.dumps({o: exp.lrs[o] for o in exp.optimizers})}, "
        f"K-FAC/EKFAC dampings {exp.dampings}, momentum 0.9 for SGD/K-FAC/EKFAC, {exp.fisher} Fisher (Bernoulli "
        f"predictive for the autoencoder, categorical for the CNN), update_freq "
        f"{exp.update_freq}, inv_freq {exp.inv_freq}, seed {exp.seed}; best setting per optimizer by final training "
        "loss; target = the worst of the best final training losses. Wall-clock on one thread per run "
        f"({workers} runs side by side).",
        "Paper: " + PAPER_CLAIM,
        "Our result: " + " ".join(verdicts),
    ]
    section = Section(citations=list(CITATIONS), title="EKFAC (George, Laurent, Bouthillier, Ballas & Vincent 2018)", paragraphs=paragraphs,
                      tables=[{"caption": "Best setting of each optimizer and time to the target training loss",
                               "columns": columns, "rows": table_rows}], figures=figures, order=70)
    return write_section(root, section)
