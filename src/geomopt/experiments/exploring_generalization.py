"""Reproduction: generalization measures on true vs random labels, and their rank correlation over a zoo.

Neyshabur, Bhojanapalli, McAllester & Srebro, "Exploring Generalization in Deep Learning"
(NeurIPS 2017), Figure 1 protocol: networks trained to (near) zero training loss on subsets of
growing size with true or with random labels; each capacity measure (norms and path norms over the
margin squared, the spectral complexity, sharpness, PAC-Bayes flatness) plotted against the
training-set size. Claim: the measures are larger with random labels and grow with the size of a
random-label training set, tracking the test error, while they stay small for true labels.

Part (b) follows Jiang et al. (2019): a small zoo over width, learning rate, batch size and weight
decay, each measure's Kendall tau and granulated Kendall coefficient with the generalization gap.

Both parts run for several seeds (``--seeds N``: 3 with the quick and mid tiers, 5 in full; the seed
reaches every trained network: part (a) once per seed, part (b) one zoo per seed, correlated on its own).
Every run's final numbers and measures are stored in ``results.csv`` (``part`` = ``labels`` or ``zoo``),
its training curve in ``curves.csv``, and the claims are decided on them (``geomopt.sweep.claims``):

- part (a): per training-set size, the measure with random labels minus with true labels over seeds (and
  the random-label value at the largest size minus the smallest); a seed where the measure is undefined
  (margin not positive) is left out of that comparison and the claim records the seeds it used; undefined
  in every seed is ``untestable here``;
- part (b): per seed's zoo, the Kendall tau-a of the measure with the generalization gap over its fitted
  models, with 1000 bootstrap resamples of the models; the 95% interval of the mean tau over seeds is
  hierarchical (seeds and, within each, its bootstrap taus: ``within=``), so a zoo too small to pin its
  own tau down cannot make the claim hold.

Run-quality gates: part (a): every run finite and fitted (training error <= 2%, the paper's "zero training
error"); part (b): every seed's zoo keeps at least ``MIN_MODELS`` fitted models (training accuracy >=
``min_train_acc``; Jiang et al. use 0.99). A failed gate makes the claims that rest on it ``untestable here``.
No hyperparameter is selected here: part (a) trains every network to the same training-loss target with a
fixed step size (the claims compare label kinds and sizes, not methods) and part (b) varies the
hyperparameters by design.

Tiers: ``quick``: digits, a 512-unit 1-hidden-layer MLP, sizes 250/500/1000, a 12-model zoo per seed
(minutes on 2 cores). ``mid``: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), a 512-unit MLP on 250, 500
and 1000 images with true and with random labels, and an 8-model zoo per seed on 500 images (width 64/256,
lr 0.1/0.3, up to 300 epochs, stopped at the training-loss target), 3 seeds, measuring the groups the claims use (``MID_MEASURES``). It can
test both headlines: on real images random labels must be memorized (a random-label network on 2,000 images
reached 0.013 training loss and 99.95% training accuracy with a 91% gap), every network is trained to
near-zero training loss, and the zoo's models fit (a first mid run with lr 0.05/0.2 and 100 epochs left 13 of
24 zoo models below 98% training accuracy, training loss 0.11-0.23 at lr 0.05, so too few per seed to rank); whether a zoo's gaps spread enough to rank is what its bootstrap draws measure, and the hierarchical
interval carries it into the verdict. Cost, from 1-run timings with OMP_NUM_THREADS=1 on the shared 2-core
machine: the random-label network on 2,000 images took 513 s for 199 epochs (so about 200 s at 1,000), a
256-unit zoo model 75 s, the measures 10-13 s per network: about 40 minutes. ``full``: MNIST-1D, 2 hidden
layers of 512, sizes up to 4000 and a 48-model zoo per seed, 5 seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.experiments.records import Records
from geomopt.experiments.records import gate_failures as shared_gate
from geomopt.experiments.skeleton import Context, Experiment, Protocol, Ran, Report, epoch_records, planned_records
from geomopt.experiments.zoo import CORRELATED, ZOO_KEY, correlate, measure_zoo
from geomopt.measures.rank import bootstrap_kendall_draws, kendall_tau
from geomopt.report import plot_bands
from geomopt.runs import MEASURES_FILE
from geomopt.sweep import Claim, Outcome, RunGate, all_of, band, gated, greater, less, run_all, seed_stats, untestable
from geomopt.train import TrainConfig
from geomopt.train.checkpoint import write_json

NAME = "exploring-generalization"
CITATIONS = (
    'Neyshabur, Bhojanapalli, McAllester & Srebro, "Exploring Generalization in Deep Learning", NeurIPS 2017',
    'Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic Generalization Measures and Where to Find Them", ICLR 2020',
)  # the papers, by title, for the report
TITLE = ("Exploring generalization: measures on true vs random labels, and over a zoo "
         "(Neyshabur et al. 2017; Jiang et al. 2019)")
NEYSHABUR = "Neyshabur, Bhojanapalli, McAllester & Srebro 2017"
JIANG = "Jiang et al. 2020"  # Jiang, Neyshabur, Mobahi, Krishnan & Bengio
FITTED = 0.02  # a part-(a) run is fitted when its training error is at most this
MIN_MODELS = 6  # a seed's zoo needs this many fitted models (15 pairs) for its Kendall tau
BOOTSTRAP = 1000  # bootstrap resamples of a zoo's models per tau (seeded by the zoo's seed)
# measures shown in part (a) (key in measures.json, label)
PANEL_MEASURES = [("log_frobenius_over_margin", "log l2 norm product / margin^2"),
                  ("log_l1_path_over_margin", "log l1-path / margin^2"),
                  ("log_l2_path_over_margin", "log l2-path / margin^2"),
                  ("log_spectral_complexity_over_margin", "log spectral complexity / margin^2"),
                  ("sharpness", "worst-case sharpness"),
                  ("pacbayes_mag_flatness", "PAC-Bayes flatness 1/sigma'^2 (magnitude-aware)"),
                  ("test_error", "test error")]
# Jiang et al. (2020), Kendall tau with the gap over their CIFAR-10 + SVHN model zoos (main table, approximate)
PAPER_TAU = {"sharpness": 0.40, "pacbayes_mag_flatness": 0.38, "l2_path": 0.37, "log_spectral_product": -0.5,
             "num_params": -0.2}
# the measure groups the mid tier computes (every claimed measure; the Hessian and two-layer groups cost
# about 3x the rest together)
MID_MEASURES = ("margin", "norms", "path", "bounds", "sharpness", "flatness")


@dataclass
class ExploringGeneralizationExperiment(Protocol, name=NAME):
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

    @classmethod
    def mid(cls) -> ExploringGeneralizationExperiment:
        return cls(data="fashion-mnist", widths=(512,), sizes=(250, 500, 1000), lr=0.05, epochs=300,
                   target_train_loss=0.02, seeds=(0, 1, 2), zoo_widths=(64, 256), zoo_depths=(1,),
                   zoo_lrs=(0.1, 0.3), zoo_batch_sizes=(64,), zoo_weight_decays=(0.0, 1e-3),
                   zoo_train_size=500, zoo_epochs=300, min_train_acc=0.98,
                   measure={"sharpness_steps": 5, "sharpness_restarts": 1, "flatness_samples": 3,
                            "measures": list(MID_MEASURES)})


CONFIG = ExploringGeneralizationExperiment  # the config class (geomopt results check rebuilds it from experiment.json)


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


def _run(ctx: Context) -> Ran:
    """Both parts trained for every seed (finished runs skipped), every network measured, each seed's zoo
    correlated; one row per run (part, setting, seed, final numbers, every measure of measures.json) with its
    per-epoch training loss and error."""
    exp, root = ctx.exp, ctx.root
    labels, zoo = _labels_runs(exp, root), _zoo_runs(exp, root)
    for _, run_dir, hp in labels + zoo:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / ZOO_KEY, hp)
    summaries = run_all([(c, d) for c, d, _ in labels + zoo], ctx.jobs, desc=NAME, overwrite=ctx.overwrite)
    measure_zoo(root / "labels", workers=ctx.jobs, options=exp.measure)
    for seed in exp.seeds:
        measure_zoo(root / "zoo" / f"seed{seed}", workers=ctx.jobs, options=exp.measure)
    too_few = []  # (b) zoo rank correlations, one zoo per seed (correlation.csv per zoo with the granulated Kendall)
    for seed in exp.seeds:
        try:
            correlate(root / "zoo" / f"seed{seed}", root / "zoo" / f"seed{seed}", min_train_acc=exp.min_train_acc)
        except ValueError as exc:  # fewer than 2 models fitted: no correlation for this seed's zoo
            too_few.append(f"seed {seed}: {exc}")
    keyed = [(c, d, {"part": "labels", **hp}) for c, d, hp in labels] + [
        (c, d, {"part": "zoo", **hp, "seed": int(Path(d).parent.name.removeprefix("seed"))}) for c, d, hp in zoo]

    def row(summary, run_dir):
        path = run_dir / MEASURES_FILE
        res = json.loads(path.read_text()) if path.is_file() else {}
        keys = [k for k, _ in PANEL_MEASURES if k != "test_error"] if run_dir.parent.name == "labels" else \
            list(CORRELATED)
        return {"diverged": bool(summary.get("diverged")), "train_loss": summary.get("train_loss"),
                "train_error": res.get("train_error", math.nan), "test_error": res.get("test_error", math.nan),
                "gap": res.get("gap", math.nan), **{k: res.get(k, math.nan) for k in keys}}

    def curve(run_dir):
        return epoch_records(run_dir, lambda r: {"epoch": r["epoch"], "train_loss": r["train_loss"],
                                                 "train_err": 1 - r["train_acc"]})
    return Ran(planned_records(exp, keyed, summaries, root, row, curve),
               sum(float(s.get("seconds", 0.0)) for s in summaries), {"zoo_models": len(zoo), "too_few": too_few})


def _report(ctx: Context, records: Records, ran: Ran) -> Report:
    """Part (a)'s measures per label kind and size (table and figure), part (b)'s rank correlations, the protocol."""
    exp, root, too_few = ctx.exp, ctx.root, ran.state["too_few"]
    # (a) true vs random labels, per seed
    panels: dict[str, dict[str, tuple[list[float], ...]]] = {}
    table = []
    for key, label in PANEL_MEASURES:
        scale = 100 if key == "test_error" else 1
        for kind in ("true", "random"):
            xs = list(exp.sizes)
            curves = [[scale * _value(records, kind, n, s, key) for n in exp.sizes] for s in exp.seeds]
            defined = [c for c in curves if all(math.isfinite(v) for v in c)]
            if defined:
                panels.setdefault(label + (" (%)" if scale == 100 else ""), {})[
                    f"{kind} labels ({len(defined)} seeds)"] = (xs, *band(defined))
            table += [[label + (" (%)" if scale == 100 else ""), kind, n, _fmt([c[i] for c in curves], scale)]
                      for i, n in enumerate(xs)]
    plot_bands(panels, root / "labels.png", xlabel="training-set size", ylabel="measure", ncols=4)

    zoo_table = []
    for m in CORRELATED:
        taus = [zoo_tau(records, seed, m)[0] for seed in exp.seeds]
        if any(math.isfinite(t) for t in taus):
            zoo_table.append([m, _fmt(taus), PAPER_TAU.get(m, "-")])
    figures = [{"file": "labels.png", "caption": "Each measure against the training-set size, true vs random "
                                                  "labels (Neyshabur et al. 2017, Fig. 1 protocol): mean over the "
                                                  "seeds where it is defined, with its 95% interval."}]

    kept = {seed: len(_fitted_zoo(records, seed)) for seed in exp.seeds}
    paragraphs = [
        f"Protocol ({ctx.tier} tier) (a): MLP {'-'.join(map(str, exp.widths))} on {exp.data}, training sets of "
        f"{list(exp.sizes)} examples with true labels or all labels random (TrainConfig.label_noise = 1), SGD lr "
        f"{exp.lr} momentum {exp.momentum}, batch {exp.batch_size}, trained until the training cross-entropy is <= "
        f"{exp.target_train_loss} (at most {exp.epochs} epochs), seeds {list(exp.seeds)}. Margin = 5th percentile of "
        f"the signed training margins. (b): per seed, {ran.state['zoo_models'] // len(exp.seeds)} MLPs on "
        f"{exp.zoo_train_size} "
        f"{exp.data} examples over width {list(exp.zoo_widths)}, depth {list(exp.zoo_depths)}, lr "
        f"{list(exp.zoo_lrs)}, batch {list(exp.zoo_batch_sizes)}, weight decay {list(exp.zoo_weight_decays)}, "
        f"dropout {list(exp.zoo_dropouts)}; models with training accuracy >= {exp.min_train_acc} (per seed: "
        f"{kept}) are correlated with the gap (test error - train error). Measure settings: "
        + json.dumps(exp.measure) + "." + (f" No correlation for {'; '.join(too_few)}." if too_few else ""),
        f"Run-quality gates: (a) every run finite and fitted to <= {100 * FITTED:g}% training error; (b) every "
        f"seed's zoo keeps at least {MIN_MODELS} fitted models. The zoo claims' intervals are hierarchical: "
        f"seeds and, within each, {BOOTSTRAP} bootstrap resamples of its models.",
    ]
    return Report(paragraphs, tables=[
        {"caption": "Part (a): each measure per label kind and training-set size, mean [95% interval] over seeds "
                    "(undefined where the margin is not positive)",
         "columns": ["measure", "labels", "size", "value"], "rows": table}] + ([
        {"caption": "Part (b): Kendall tau-a with the generalization gap over each seed's fitted zoo models, mean [95% "
                    "interval] over the seeds' zoos, beside Jiang et al.'s (approx.)",
         "columns": ["measure", "Kendall tau-a", "Jiang et al. tau"], "rows": zoo_table}] if zoo_table else []),
        figures=figures)


def _value(records: Records, labels: str, size: int, seed: int, key: str) -> float:
    rows = records.where(part="labels", labels=labels, size=size, seed=seed)
    if len(rows) != 1 or rows[0].get(key) is None:
        return math.nan
    return float(rows[0][key])


def _fmt(values: list[float], scale: float = 1.0) -> str:
    defined = [v for v in values if math.isfinite(v)]
    if not defined:
        return "undefined"
    text = seed_stats(defined).fmt(bounds=(0.0, 100.0) if scale == 100 else None)
    return text if len(defined) == len(values) else f"{text} ({len(defined)}/{len(values)} seeds)"


def _with_seeds(outcome: Outcome, seeds: list[int]) -> Outcome:
    return dataclasses.replace(outcome, seeds=tuple(seeds))


def _defined(test, a: dict[int, float], b: dict[int, float], label: str) -> Outcome:
    """``test(a, b)`` over the seeds where both are finite (a measure is NaN where the margin is not positive),
    recording those seeds; ``untestable here`` when no seed has both."""
    seeds = [s for s in a if math.isfinite(a[s]) and math.isfinite(b[s])]
    if not seeds:
        return untestable(f"{label}: undefined in every seed (margin not positive)", f"{label}: undefined")
    out = test([a[s] for s in seeds], [b[s] for s in seeds], label=label)
    if len(seeds) < len(a):
        out = dataclasses.replace(out, ours=f"{out.ours} (defined in {len(seeds)}/{len(a)} seeds)")
    return _with_seeds(out, seeds)


LABELS_GATE = RunGate(drop=1.0, rebound=1.0)  # finite curve; fitted is checked on the training error


def labels_gate(records: Records) -> list[str]:
    """Part (a)'s run-quality gate: every run finite (a finite, not diverged training curve) and fitted
    (training error <= ``FITTED``)."""
    rows = records.where(part="labels")
    unfitted = [f"{_describe_run(r)}: not fitted (training error {100 * float(r['train_error']):.3g}% > "
                f"{100 * FITTED:g}%)" for r in rows
                if not r["diverged"] and not (r["train_error"] is not None and r["train_error"] <= FITTED)]
    return shared_gate(records, rows, LABELS_GATE, _describe_run) + unfitted


def _describe_run(r: dict[str, Any]) -> str:
    return f"{r['labels']} labels n={r['size']} seed {r['seed']}"


def _random_larger(key: str):
    def test(records: Records) -> Outcome:
        exp = records.exp
        rand = {n: {s: _value(records, "random", n, s, key) for s in exp.seeds} for n in exp.sizes}
        true = {n: {s: _value(records, "true", n, s, key) for s in exp.seeds} for n in exp.sizes}
        parts = {f"n={n}": _defined(greater, rand[n], true[n], "random - true") for n in exp.sizes}
        if len(exp.sizes) > 1:
            lo, hi = min(exp.sizes), max(exp.sizes)
            parts[f"grows n={lo}->{hi}"] = _defined(greater, rand[hi], rand[lo], "random: large - small n")
        return gated(all_of(parts), labels_gate(records))
    return test


def _fitted_zoo(records: Records, seed: int) -> list[dict[str, Any]]:
    """Seed ``seed``'s zoo models that did not diverge and reached ``min_train_acc`` (Jiang et al.'s filter)."""
    return [r for r in records.where(part="zoo", seed=seed) if not r["diverged"] and r["train_error"] is not None
            and math.isfinite(r["train_error"]) and 1 - r["train_error"] >= records.exp.min_train_acc]


def zoo_tau(records: Records, seed: int, measure: str) -> tuple[float, list[float]]:
    """Kendall tau-a of ``measure`` with the gap over seed ``seed``'s fitted zoo models, and its ``BOOTSTRAP``
    bootstrap draws (seeded by ``seed``); NaN and no draws when fewer than 2 models have it finite."""
    pts = [(float(r[measure]), float(r["gap"])) for r in _fitted_zoo(records, seed)
           if r.get(measure) is not None and math.isfinite(r[measure]) and math.isfinite(r["gap"])]
    if len(pts) < 2:
        return math.nan, []
    x, y = [p[0] for p in pts], [p[1] for p in pts]
    return kendall_tau(x, y, "a"), bootstrap_kendall_draws(x, y, "a", samples=BOOTSTRAP, seed=seed)


def zoo_gate(records: Records) -> list[str]:
    """Part (b)'s run-quality gate: every seed's zoo keeps at least ``MIN_MODELS`` fitted models."""
    exp = records.exp
    return [f"seed {s}'s zoo: {len(_fitted_zoo(records, s))} of {len(records.where(part='zoo', seed=s))} models "
            f"fitted (training accuracy >= {exp.min_train_acc:g}), fewer than {MIN_MODELS}"
            for s in exp.seeds if len(_fitted_zoo(records, s)) < MIN_MODELS]


def _tau(measure: str, sign: int):
    def test(records: Records) -> Outcome:
        failures = zoo_gate(records)
        if failures:
            return gated(untestable("gated"), failures)
        per_seed = {s: zoo_tau(records, s, measure) for s in records.exp.seeds}
        seeds = [s for s, (tau, draws) in per_seed.items() if math.isfinite(tau) and draws]
        if not seeds:
            return untestable(f"tau({measure}) undefined in every seed's zoo (the measure is not finite on 2 "
                              "fitted models, or it or the gap is constant)", f"tau({measure}): undefined")
        compare = greater if sign > 0 else less
        out = compare([per_seed[s][0] for s in seeds], 0.0, label=f"tau({measure})",
                      within=[per_seed[s][1] for s in seeds])
        if len(seeds) < len(per_seed):
            out = dataclasses.replace(out, ours=f"{out.ours} (defined in {len(seeds)}/{len(per_seed)} zoos)")
        return _with_seeds(out, seeds)
    return test


def claims(exp: ExploringGeneralizationExperiment) -> list[Claim]:
    """Part (a): one claim per measure; part (b): the signs Jiang et al. found for three measures."""
    out = [Claim(f"random-larger-{key}", f"{label} is larger with random than with true labels at every "
                 "training-set size and grows with the random-label set size", NEYSHABUR, "Sec. 2, Fig. 1",
                 "larger with random labels and increasing with the random-label set size (curves, no table)",
                 _random_larger(key))
           for key, label in PANEL_MEASURES if key != "test_error"]
    out += [Claim("tau-sharpness", "Sharpness correlates positively with the generalization gap over a model zoo",
                  JIANG, "main Kendall-tau table", "Kendall tau about 0.40 (approx.)", _tau("sharpness", 1)),
            Claim("tau-pacbayes-mag", "Magnitude-aware PAC-Bayes flatness correlates positively with the gap over a "
                  "model zoo", JIANG, "main Kendall-tau table", "Kendall tau about 0.37-0.40 (approx.)",
                  _tau("pacbayes_mag_flatness", 1)),
            Claim("tau-spectral", "The product of spectral norms correlates negatively with the gap over a model zoo",
                  JIANG, "main Kendall-tau table", "Kendall tau about -0.5 (approx.)",
                  _tau("log_spectral_product", -1))]
    return out


EXPERIMENT = Experiment(NAME, ExploringGeneralizationExperiment, TITLE, CITATIONS, order=50, run=_run, claims=claims,
                        report=_report)
reproduce = EXPERIMENT.reproduce
