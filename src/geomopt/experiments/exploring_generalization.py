"""Reproduction: generalization measures on true vs random labels, and their rank correlation over a zoo.

Neyshabur, Bhojanapalli, McAllester & Srebro, "Exploring Generalization in Deep Learning"
(NeurIPS 2017), Figure 1 protocol: networks trained to (near) zero training loss on subsets of
growing size with true or with random labels; each capacity measure (norms and path norms over the
margin squared, the spectral complexity, sharpness, PAC-Bayes flatness) plotted against the
training-set size. Claim: the measures are larger with random labels and grow with the size of a
random-label training set, tracking the test error, while they stay small for true labels.

Part (b) follows Jiang et al. (2019): a small zoo over width, learning rate, batch size and weight
decay, each measure's Kendall tau and granulated Kendall coefficient with the generalization gap.

Both parts run for several seeds (``--seeds N``: 3 with ``--quick``, 5 in full): part (a) once per seed,
part (b) one zoo per seed, correlated on its own; each claim is tested across seeds
(``geomopt.sweep.claims``) and written to ``claims.json``. No hyperparameter is selected here: part (a)
trains every network to the same training-loss target with a fixed step size (the claims compare label
kinds and sizes, not methods) and part (b) varies the hyperparameters by design.

``--quick``: digits, a 512-unit 1-hidden-layer MLP, sizes 250/500/1000, a 12-model zoo per seed (minutes on
2 cores). Full: MNIST-1D, 2 hidden layers of 512, sizes up to 4000 and a 48-model zoo per seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.experiments.config import experiment_dir, merge_overrides, seed_list
from geomopt.experiments.zoo import ZOO_KEY, correlate, measure_zoo
from geomopt.measures.runs import MEASURES_FILE
from geomopt.report import Section, plot_bands, write_records, write_section
from geomopt.sweep import FAILS, Claim, Outcome, all_of, band, greater, less, run_all, seed_stats, write_claims
from geomopt.train import TrainConfig
from geomopt.train.checkpoint import write_json

NAME = "exploring-generalization"
CITATIONS = (
    'Neyshabur, Bhojanapalli, McAllester & Srebro, "Exploring Generalization in Deep Learning", NeurIPS 2017',
    'Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic Generalization Measures and Where to Find Them", ICLR 2020',
)  # the papers, by title, for the report
TITLE = ("Exploring generalization: measures on true vs random labels, and over a zoo "
         "(Neyshabur et al. 2017; Jiang et al. 2019)")
FITTED = 0.02  # a run is fitted when its training error is at most this
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
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
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
                   target_train_loss=0.02, seeds=(0, 1, 2), zoo_widths=(64, 256), zoo_depths=(1,),
                   zoo_lrs=(0.03, 0.1), zoo_batch_sizes=(64,), zoo_weight_decays=(0.0, 1e-3, 1e-2),
                   zoo_train_size=500, zoo_epochs=150, min_train_acc=0.98,
                   measure={"sharpness_steps": 5, "sharpness_restarts": 1, "flatness_samples": 3})

    def replace(self, overrides: dict[str, Any]) -> ExploringGeneralizationExperiment:
        d = merge_overrides(self, overrides, NAME)
        return ExploringGeneralizationExperiment(**d)


def _labels_runs(exp, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    runs = []
    for seed in exp.seeds:
        for labels, noise in (("true", 0.0), ("random", 1.0)):
            for size in exp.sizes:
                cfg = TrainConfig(model="mlp", widths=exp.widths, data=exp.data, data_dir=exp.data_dir,
                                  train_size=size, label_noise=noise, lr=exp.lr, momentum=exp.momentum,
                                  batch_size=exp.batch_size, epochs=exp.epochs, seed=seed,
                                  target_train_loss=exp.target_train_loss)
                runs.append((cfg, root / "labels" / f"{labels}_n{size}_seed{seed}",
                             {"labels": labels, "size": size, "seed": seed}))
    return runs


def _zoo_runs(exp, root: Path) -> list[tuple[TrainConfig, Path, dict[str, Any]]]:
    """One zoo per seed, in ``zoo/seed{seed}`` (each correlated on its own)."""
    runs = []
    for seed in exp.seeds:
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
                                                  epochs=exp.zoo_epochs, seed=seed,
                                                  target_train_loss=exp.target_train_loss)
                                name = "_".join(f"{k}{v:g}" for k, v in hp.items())
                                runs.append((cfg, root / "zoo" / f"seed{seed}" / name, hp))
    return runs


def reproduce(out: Path, *, quick: bool = False, jobs: int | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False, seeds: int | None = None) -> Path:
    """Train both parts for every seed (finished runs skipped), compute measures, write tables, figures,
    claims and the section."""
    overrides = dict(overrides or {})
    chosen = seed_list(seeds, quick, overrides)
    if chosen is not None:
        overrides["seeds"] = chosen
    exp = (ExploringGeneralizationExperiment.quick() if quick else ExploringGeneralizationExperiment()).replace(
        overrides)
    root = experiment_dir(out, NAME, exp)
    labels, zoo = _labels_runs(exp, root), _zoo_runs(exp, root)
    for _, run_dir, hp in labels + zoo:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / ZOO_KEY, hp)
    summaries = run_all([(c, d) for c, d, _ in labels + zoo], jobs, desc=NAME, overwrite=overwrite)
    seconds = sum(float(s.get("seconds", 0.0)) for s in summaries)
    measure_zoo(root / "labels", workers=jobs, options=exp.measure)
    for seed in exp.seeds:
        measure_zoo(root / "zoo" / f"seed{seed}", workers=jobs, options=exp.measure)

    # (a) true vs random labels, per seed
    rows = []
    for cfg, run_dir, hp in labels:
        path = run_dir / MEASURES_FILE
        res = json.loads(path.read_text()) if path.is_file() else {}
        rows.append({**hp, "train_error": res.get("train_error", math.nan),
                     "test_error": res.get("test_error", math.nan),
                     **{k: res.get(k, math.nan) for k, _ in PANEL_MEASURES if k != "test_error"}})
    write_records(root / "labels.csv", rows, key=("labels", "size", "seed"))
    panels: dict[str, dict[str, tuple[list[float], ...]]] = {}
    table = []
    for key, label in PANEL_MEASURES:
        for kind in ("true", "random"):
            xs, curves = list(exp.sizes), [[_value(rows, kind, n, s, key) for n in exp.sizes] for s in exp.seeds]
            defined = [c for c in curves if all(math.isfinite(v) for v in c)]
            if defined:
                panels.setdefault(label, {})[f"{kind} labels ({len(defined)} seeds)"] = (xs, *band(defined))
            table += [[label, kind, n, _fmt([c[i] for c in curves])] for i, n in enumerate(xs)]
    plot_bands(panels, root / "labels.png", xlabel="training-set size", ylabel="measure", ncols=4)

    # (b) zoo rank correlations, one zoo per seed
    corr, too_few = {}, []
    for seed in exp.seeds:
        try:
            corr[seed] = correlate(root / "zoo" / f"seed{seed}", root / "zoo" / f"seed{seed}",
                                   min_train_acc=exp.min_train_acc)
        except ValueError as exc:  # fewer than 2 models fitted: no correlation for this seed's zoo
            corr[seed], too_few = [], too_few + [f"seed {seed}: {exc}"]
    taus: dict[str, list[float]] = {}
    for seed in exp.seeds:
        for r in corr[seed]:
            taus.setdefault(r["measure"], []).append(r["kendall_tau"])
    full = {m: v for m, v in taus.items() if len(v) == len(exp.seeds)}
    zoo_table = [[m, _fmt(v), PAPER_TAU.get(m) if PAPER_TAU.get(m) is not None else "-"] for m, v in full.items()]
    write_records(root / "correlation.csv", [{"seed": seed, **r} for seed in exp.seeds for r in corr[seed]])
    figures = [{"file": "labels.png", "caption": "Each measure against the training-set size, true vs random "
                                                  "labels (Neyshabur et al. 2017, Fig. 1 protocol): mean over the "
                                                  "seeds where it is defined, with its 95% interval."}]

    results = {"exp": exp, "rows": rows, "taus": full}
    write_claims(root, NAME, claims(exp), results, title=TITLE, seeds=exp.seeds, seconds=seconds, quick=quick)
    kept = {seed: (corr[seed][0]["models"] if corr[seed] else 0) for seed in exp.seeds}
    paragraphs = [
        f"Protocol (a): MLP {'-'.join(map(str, exp.widths))} on {exp.data}, training sets of {list(exp.sizes)} "
        f"examples with true labels or all labels random (TrainConfig.label_noise = 1), SGD lr {exp.lr} momentum "
        f"{exp.momentum}, batch {exp.batch_size}, trained until the training cross-entropy is <= "
        f"{exp.target_train_loss} (at most {exp.epochs} epochs), seeds {list(exp.seeds)}. Margin = 5th percentile of "
        f"the signed training margins. (b): per seed, {len(zoo) // len(exp.seeds)} MLPs on {exp.zoo_train_size} "
        f"{exp.data} examples over width {list(exp.zoo_widths)}, depth {list(exp.zoo_depths)}, lr "
        f"{list(exp.zoo_lrs)}, batch {list(exp.zoo_batch_sizes)}, weight decay {list(exp.zoo_weight_decays)}, "
        f"dropout {list(exp.zoo_dropouts)}; models with training accuracy >= {exp.min_train_acc} (per seed: "
        f"{kept}) are correlated with the gap (test error - train error). Measure settings: "
        + json.dumps(exp.measure) + "." + (f" No correlation for {'; '.join(too_few)}." if too_few else ""),
    ]
    section = Section(citations=list(CITATIONS), title=TITLE, paragraphs=paragraphs,
                      tables=[{"caption": "Part (a): each measure per label kind and training-set size, mean [95% "
                                          "interval] over seeds (undefined where the margin is not positive)",
                               "columns": ["measure", "labels", "size", "value"], "rows": table},
                              {"caption": "Part (b): Kendall tau-a with the generalization gap, mean [95% interval] "
                                          "over the seeds' zoos, beside Jiang et al.'s (approx.)",
                               "columns": ["measure", "Kendall tau-a", "Jiang et al. tau"], "rows": zoo_table}],
                      figures=figures, order=50)
    return write_section(root, section)


def _value(rows: list[dict[str, Any]], labels: str, size: int, seed: int, key: str) -> float:
    (row,) = [r for r in rows if (r["labels"], r["size"], r["seed"]) == (labels, size, seed)]
    return float(row[key])


def _fmt(values: list[float]) -> str:
    defined = [v for v in values if math.isfinite(v)]
    if not defined:
        return "undefined"
    text = seed_stats(defined).fmt()
    return text if len(defined) == len(values) else f"{text} ({len(defined)}/{len(values)} seeds)"


def _defined(outcome_of, a: list[float], b: list[float], label: str) -> Outcome:
    """``outcome_of(a, b)`` over the seeds where both are finite (a measure is NaN where the margin is not
    positive, a Kendall tau where it cannot be computed); a seed left out is a caveat."""
    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if not pairs:
        return Outcome(FAILS, f"{label}: undefined in every seed")
    out = outcome_of([p[0] for p in pairs], [p[1] for p in pairs], label=label)
    missing = len(a) - len(pairs)
    return out.with_caveats(f"{label}: undefined in {missing}/{len(a)} seeds" if missing else "")


def _random_larger(key: str):
    def test(results: dict[str, Any]) -> Outcome:
        exp, rows = results["exp"], results["rows"]
        rand = {n: [_value(rows, "random", n, s, key) for s in exp.seeds] for n in exp.sizes}
        true = {n: [_value(rows, "true", n, s, key) for s in exp.seeds] for n in exp.sizes}
        parts = {f"n={n}": _defined(greater, rand[n], true[n], "random - true") for n in exp.sizes}
        if len(exp.sizes) > 1:
            lo, hi = min(exp.sizes), max(exp.sizes)
            parts[f"grows n={lo}->{hi}"] = _defined(greater, rand[hi], rand[lo], "random: large - small n")
        unfitted = [f"{r['labels']} n={r['size']} seed {r['seed']}" for r in rows
                    if not r["train_error"] <= FITTED]
        out = all_of(parts)
        return out.with_caveats(f"not fitted to <= {100 * FITTED:g}% training error: {', '.join(unfitted)}"
                                if unfitted else "")
    return test


def _tau(measure: str, sign: int):
    def test(results: dict[str, Any]) -> Outcome:
        taus = results["taus"].get(measure)
        if taus is None:
            return Outcome(FAILS, f"{measure} not measured in every seed's zoo")
        return _defined(greater if sign > 0 else less, taus, [0.0] * len(taus), f"tau({measure})")
    return test


def claims(exp: ExploringGeneralizationExperiment) -> list[Claim]:
    """Part (a): one claim per measure; part (b): the signs Jiang et al. found for three measures."""
    neyshabur, jiang = "Neyshabur, Bhojanapalli, McAllester & Srebro 2017", "Jiang et al. 2019"
    out = [Claim(f"random-larger-{key}", f"{label} is larger with random than with true labels at every "
                 "training-set size and grows with the random-label set size", neyshabur, "Fig. 1",
                 "larger and increasing (curves, no table)", _random_larger(key))
           for key, label in PANEL_MEASURES if key != "test_error"]
    out += [Claim("tau-sharpness", "Sharpness correlates positively with the generalization gap", jiang, "tau table",
                  "Kendall tau ~0.40 (approx.)", _tau("sharpness", 1)),
            Claim("tau-pacbayes-mag", "Magnitude-aware PAC-Bayes flatness correlates positively with the gap", jiang,
                  "tau table", "Kendall tau ~0.37-0.40 (approx.)", _tau("pacbayes_mag_flatness", 1)),
            Claim("tau-spectral", "The product of spectral norms correlates negatively with the gap", jiang,
                  "tau table", "Kendall tau ~-0.5 (approx.)", _tau("log_spectral_product", -1))]
    return out
