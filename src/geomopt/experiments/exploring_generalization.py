"""Reproduction: generalization measures on true vs random labels, and their rank correlation over a zoo.

Neyshabur, Bhojanapalli, McAllester & Srebro, "Exploring Generalization in Deep Learning"
(NeurIPS 2017), Figure 1 protocol: networks trained to (near) zero training loss on subsets of
growing size with true or with random labels; each capacity measure (norms and path norms over the
margin squared, the spectral complexity, sharpness, PAC-Bayes flatness) plotted against the
training-set size. Claim: the measures are larger with random labels and grow with the size of a
random-label training set, tracking the test error, while they stay small for true labels.

Part (b) follows Jiang et al. (2019): a small zoo over width, learning rate, batch size and weight
decay, each measure's Kendall tau and granulated Kendall coefficient with the generalization gap.

``--quick``: digits, a 512-unit 1-hidden-layer MLP, sizes 250/500/1000, a 12-model zoo (minutes on 2 cores).
Full: MNIST-1D, 2 hidden layers of 512, sizes up to 4000 and a 48-model zoo.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.experiments.config import experiment_dir, merge_overrides
from geomopt.sweep import run_all
from geomopt.experiments.zoo import ZOO_KEY, correlate, measure_zoo
from geomopt.measures.runs import MEASURES_FILE
from geomopt.report import Section, plot_curves, write_records, write_section
from geomopt.train import TrainConfig
from geomopt.train.checkpoint import write_json

NAME = "exploring-generalization"
# measures shown in part (a) (key in measures.json, label)
PANEL_MEASURES = [("log_frobenius_over_margin", "log l2 norm product / margin^2"),
                  ("log_l1_path_over_margin", "log l1-path / margin^2"),
                  ("log_l2_path_over_margin", "log l2-path / margin^2"),
                  ("log_spectral_complexity_over_margin", "log spectral complexity / margin^2"),
                  ("sharpness", "worst-case sharpness"),
                  ("pacbayes_mag_flatness", "PAC-Bayes flatness 1/sigma'^2 (magnitude-aware)"),
                  ("test_error", "test error")]
# Jiang et al. (2019), Kendall tau with the gap over their CIFAR-10+SVHN zoo (approximate, from papers.md)
PAPER_TAU = {"sharpness": 0.40, "pacbayes_mag_flatness": 0.38, "log_l1_path_over_margin": None,
             "l2_path": 0.37, "log_spectral_product": -0.5, "num_params": -0.2}
PAPER_CLAIM = ("Neyshabur et al. (2017) report that with random labels the norm- and margin-based measures and "
               "the sharpness-based PAC-Bayes measure are larger than with true labels and increase with the "
               "training-set size; Jiang et al. (2019) find over ~10,000 models that sharpness (tau ~0.40) and "
               "magnitude-aware PAC-Bayes flatness (~0.37-0.40) correlate best with the gap, path norms "
               "moderately (~0.37) and spectral-norm products negatively (~-0.5); values approximate.")


@dataclass
class ExploringGeneralizationExperiment:
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    data: str = "mnist1d"
    data_dir: str | None = None
    widths: tuple[int, ...] = (512, 512)
    sizes: tuple[int, ...] = (500, 1000, 2000, 4000)
    lr: float = 0.05
    momentum: float | None = 0.9
    batch_size: int = 64
    epochs: int = 400
    target_train_loss: float = 0.01
    seed: int = 0
    zoo_widths: tuple[int, ...] = (128, 512)
    zoo_depths: tuple[int, ...] = (1, 2)
    zoo_lrs: tuple[float, ...] = (0.02, 0.1)
    zoo_batch_sizes: tuple[int, ...] = (32, 128)
    zoo_weight_decays: tuple[float, ...] = (0.0, 5e-4)
    zoo_dropouts: tuple[float, ...] = (0.0,)
    zoo_train_size: int = 2000
    zoo_epochs: int = 200
    min_train_acc: float = 0.99
    measure: dict[str, Any] = field(default_factory=lambda: {"sharpness_steps": 10, "sharpness_restarts": 2,
                                                             "flatness_samples": 5})

    @classmethod
    def quick(cls) -> ExploringGeneralizationExperiment:
        return cls(data="digits", widths=(512,), sizes=(250, 500, 1000), lr=0.05, epochs=300,
                   target_train_loss=0.02, zoo_widths=(64, 256), zoo_depths=(1,), zoo_lrs=(0.03, 0.1),
                   zoo_batch_sizes=(32, 128), zoo_weight_decays=(0.0, 1e-3, 1e-2), zoo_train_size=500,
                   zoo_epochs=150, min_train_acc=0.98,
                   measure={"sharpness_steps": 5, "sharpness_restarts": 1, "flatness_samples": 3})

    def replace(self, overrides: dict[str, Any]) -> ExploringGeneralizationExperiment:
        d = merge_overrides(self, overrides, NAME)
        return ExploringGeneralizationExperiment(**d)


def _labels_runs(exp, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    runs = []
    for labels, noise in (("true", 0.0), ("random", 1.0)):
        for size in exp.sizes:
            cfg = TrainConfig(model="mlp", widths=exp.widths, data=exp.data, data_dir=exp.data_dir, train_size=size,
                              label_noise=noise, lr=exp.lr, momentum=exp.momentum, batch_size=exp.batch_size,
                              epochs=exp.epochs,
                              seed=exp.seed, target_train_loss=exp.target_train_loss)
            runs.append((cfg, root / "labels" / f"{labels}_n{size}", {"labels": labels, "size": size}))
    return runs


def _zoo_runs(exp, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    runs = []
    for width in exp.zoo_widths:
        for depth in exp.zoo_depths:
            for lr in exp.zoo_lrs:
                for batch in exp.zoo_batch_sizes:
                    for wd in exp.zoo_weight_decays:
                        for dropout in exp.zoo_dropouts:
                            hp = {"width": width, "depth": depth, "lr": lr, "batch_size": batch,
                                  "weight_decay": wd, "dropout": dropout}
                            cfg = TrainConfig(model="mlp", widths=(width,) * depth, data=exp.data,
                                              data_dir=exp.data_dir, train_size=exp.zoo_train_size, lr=lr,
                                              batch_size=batch, weight_decay=wd, dropout=dropout,
                                              epochs=exp.zoo_epochs, seed=exp.seed,
                                              target_train_loss=exp.target_train_loss)
                            name = "_".join(f"{k}{v:g}" for k, v in hp.items())
                            runs.append((cfg, root / "zoo" / name, hp))
    return runs


def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Train both parts (finished runs skipped), compute measures, write tables, figures and the section."""
    exp = (ExploringGeneralizationExperiment.quick() if quick else ExploringGeneralizationExperiment()).replace(
        overrides or {})
    root = experiment_dir(out, NAME, exp)
    labels, zoo = _labels_runs(exp, root), _zoo_runs(exp, root)
    for _, run_dir, hp in labels + zoo:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / ZOO_KEY, hp)
    run_all([(c, d) for c, d, _ in labels + zoo], jobs, desc=NAME, overwrite=overwrite)
    measure_zoo(root / "labels", workers=jobs, options=exp.measure)
    measure_zoo(root / "zoo", workers=jobs, options=exp.measure)

    # (a) true vs random labels
    rows = []
    for cfg, run_dir, hp in labels:
        path = run_dir / MEASURES_FILE
        res = json.loads(path.read_text()) if path.is_file() else {}
        rows.append({**hp, "train_error": res.get("train_error", math.nan),
                     "test_error": res.get("test_error", math.nan),
                     **{k: res.get(k, math.nan) for k, _ in PANEL_MEASURES if k != "test_error"}})
    write_records(root / "labels.csv", rows)
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for key, label in PANEL_MEASURES:
        for kind in ("true", "random"):
            pts = [(r["size"], r[key]) for r in rows if r["labels"] == kind]
            panels.setdefault(label, {})[f"{kind} labels"] = ([p[0] for p in pts], [p[1] for p in pts])
    plot_curves(panels, root / "labels.png", xlabel="training-set size", ylabel="measure", ncols=4)

    # (b) zoo rank correlations
    corr = correlate(root / "zoo", root, min_train_acc=exp.min_train_acc)
    kept = len([1 for _, d, _ in zoo if (d / MEASURES_FILE).is_file()
                and 1 - json.loads((d / MEASURES_FILE).read_text())["train_error"] >= exp.min_train_acc])
    table = [[r["measure"], r["models"], r["kendall_tau"], r["granulated"],
              PAPER_TAU.get(r["measure"]) if PAPER_TAU.get(r["measure"]) is not None else "-"] for r in corr]
    figures = [{"file": "labels.png", "caption": "Each measure against the training-set size, true vs random "
                                                  "labels (Neyshabur et al. 2017, Fig. 1 protocol)."}]
    if (root / "correlation.png").is_file():
        figures.append({"file": "correlation.png", "caption": "Kendall tau and granulated Kendall of each measure "
                                                              "with the generalization gap over the zoo."})
    paragraphs = [
        f"Protocol (a): MLP {'-'.join(map(str, exp.widths))} on {exp.data}, training sets of {list(exp.sizes)} "
        f"examples with true labels or all labels random (TrainConfig.label_noise = 1), SGD lr {exp.lr} momentum "
        f"{exp.momentum}, batch "
        f"{exp.batch_size}, trained until the training cross-entropy is <= {exp.target_train_loss} (at most "
        f"{exp.epochs} epochs). Margin = 5th percentile of the signed training margins. (b): {len(zoo)} MLPs on "
        f"{exp.zoo_train_size} {exp.data} examples over width {list(exp.zoo_widths)}, depth {list(exp.zoo_depths)}, "
        f"lr {list(exp.zoo_lrs)}, batch {list(exp.zoo_batch_sizes)}, weight decay {list(exp.zoo_weight_decays)}, "
        f"dropout {list(exp.zoo_dropouts)}; {kept} reached training accuracy >= {exp.min_train_acc} and are "
        "correlated with the gap (test error - train error). Measure settings: " + json.dumps(exp.measure) + ".",
        "Paper: " + PAPER_CLAIM,
        "Our result: " + _verdict(rows, corr, exp),
    ]
    section = Section(title="Exploring generalization: measures on true vs random labels, and over a zoo "
                            "(Neyshabur et al. 2017; Jiang et al. 2019)", paragraphs=paragraphs,
                      tables=[{"caption": "Part (a): measures per training-set size and label kind",
                               "columns": list(rows[0]), "rows": [list(r.values()) for r in rows]},
                              {"caption": "Part (b): rank correlation with the generalization gap (ours; tau-a and "
                                          "granulated psi over all groups, Jiang et al. eq. 3-4) beside "
                                          "Jiang et al.'s Kendall tau (approx.)",
                               "columns": ["measure", "models", "Kendall tau-a", "granulated Kendall (tau-a)",
                                           "Jiang et al. tau"], "rows": table}],
                      figures=figures, order=50)
    return write_section(root, section)


def _verdict(rows: list[dict[str, Any]], corr: list[dict[str, Any]], exp) -> str:
    parts = []
    sizes = sorted({r["size"] for r in rows})
    for key, label in PANEL_MEASURES:
        if key == "test_error":
            continue
        true = {r["size"]: r[key] for r in rows if r["labels"] == "true"}
        rand = {r["size"]: r[key] for r in rows if r["labels"] == "random"}
        valid = [s for s in sizes if math.isfinite(true.get(s, math.nan)) and math.isfinite(rand.get(s, math.nan))]
        if not valid:
            parts.append(f"{label}: not available (margin <= 0 or run not fitted).")
            continue
        larger = sum(rand[s] > true[s] for s in valid)
        grows = rand[valid[-1]] > rand[valid[0]] if len(valid) > 1 else False
        held = larger == len(valid) and grows
        parts.append(f"{label}: larger with random labels at {larger}/{len(valid)} sizes, "
                     f"{'grows' if grows else 'does not grow'} with the random-label training-set size"
                     f" -> claim {'holds' if held else 'does NOT hold'} for this measure.")
    not_fit = [f"{r['labels']} n={r['size']}" for r in rows if not r["train_error"] <= 0.02]
    if not_fit:
        parts.append(f"Runs not fitted to <= 2% training error (their measures are less meaningful): "
                     f"{', '.join(not_fit)}.")
    taus = {r["measure"]: r["kendall_tau"] for r in corr}
    if taus:
        best = max(taus, key=lambda k: taus[k] if math.isfinite(taus[k]) else -2)
        parts.append(f"Zoo: best Kendall tau {taus[best]:.2f} ({best}).")
        if "sharpness" in taus and "log_spectral_product" in taus:
            ok = taus["sharpness"] > taus["log_spectral_product"]
            parts.append(f"Sharpness ({taus['sharpness']:.2f}) ranks {'above' if ok else 'BELOW'} the spectral "
                         f"product ({taus['log_spectral_product']:.2f}), "
                         f"{'as' if ok else 'unlike'} in Jiang et al.; with {corr[0]['models']} models"
                         " at CPU scale these correlations are noisy.")
    return " ".join(parts)
