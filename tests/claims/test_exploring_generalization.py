"""Claim fixtures of the exploring-generalization reproduction: synthetic part-(a) runs and model zoos (no
training) take every claim to each of the four verdicts; the zoo claims' intervals count each zoo's own
bootstrap uncertainty."""

from __future__ import annotations

import math
import random

import pytest

from geomopt.experiments.exploring_generalization import (PANEL_MEASURES, ExploringGeneralizationExperiment, claims,
                                                          zoo_tau)
from geomopt.experiments.records import Records
from geomopt.sweep.claims import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE, greater

SIZES = (250, 500, 1000)
MEASURES = [k for k, _ in PANEL_MEASURES if k != "test_error"]
TAUS = {"tau-sharpness": ("sharpness", 1), "tau-pacbayes-mag": ("pacbayes_mag_flatness", 1),
        "tau-spectral": ("log_spectral_product", -1)}


def _exp(seeds):
    return ExploringGeneralizationExperiment.quick().replace({"sizes": list(SIZES), "seeds": list(seeds)})


def label_rows(value, seeds=(0, 1, 2), train_error=0.0, diverged=()):
    """Part-(a) rows: every measure = ``value(kind, size, seed)``."""
    rows, curves = [], {}
    for seed in seeds:
        for kind in ("true", "random"):
            for n in SIZES:
                run = f"labels/{kind}_n{n}_seed{seed}"
                bad = (kind, n, seed) in diverged
                rows.append({"run": run, "part": "labels", "labels": kind, "size": n, "seed": seed, "diverged": bad,
                             "train_loss": 0.01, "train_error": train_error, "test_error": 0.5, "gap": 0.5,
                             **{k: value(kind, n, seed) for k in MEASURES}})
                curves[run] = [{"epoch": 0, "train_loss": 2.3}, {"epoch": 1, "train_loss": 0.01}]
    return rows, curves


def zoo_rows(sign, models=12, seeds=(0, 1, 2), noise=0.05, fitted=None):
    """Each seed's zoo: gaps spread over [0.05, 0.3]; every measure = ``sign`` x gap + noise; the first ``fitted``
    models of each zoo are fitted (all by default)."""
    rows = []
    for seed in seeds:
        rng = random.Random(seed)
        for i in range(models):
            gap = 0.05 + 0.25 * i / (models - 1)
            m = sign * gap + rng.gauss(0, noise)
            ok = fitted is None or i < fitted
            rows.append({"run": f"zoo/seed{seed}/m{i}", "part": "zoo", "seed": seed, "width": 64, "depth": 1,
                         "lr": 0.1, "batch_size": 64, "weight_decay": 0.0, "dropout": 0.0, "diverged": False,
                         "train_loss": 0.01, "train_error": 0.0 if ok else 0.2, "test_error": gap, "gap": gap,
                         "sharpness": m, "pacbayes_mag_flatness": m, "log_spectral_product": m})
    return rows


def build(label=None, zoo=None, seeds=(0, 1, 2)) -> Records:
    rows, curves = label if label is not None else label_rows(lambda k, n, s: 1.0 + (k == "random") * n / 100, seeds)
    return Records(_exp(seeds), rows + (zoo if zoo is not None else zoo_rows(1, seeds=seeds)), curves)


def verdict(records: Records, claim_id: str):
    return next(c for c in claims(records.exp) if c.id == claim_id).test(records)


PAPER_LABELS = lambda kind, n, seed: 1.0 + 0.1 * seed + (kind == "random") * n / 100  # noqa: E731


@pytest.mark.parametrize("key", MEASURES)
def test_random_labels_claims_reach_every_verdict(key):
    cid = f"random-larger-{key}"
    assert verdict(build(label_rows(PAPER_LABELS)), cid).verdict == HOLDS
    opposite = lambda kind, n, seed: 5.0 + 0.1 * seed - (kind == "random") * n / 100  # noqa: E731
    assert verdict(build(label_rows(opposite)), cid).verdict == FAILS
    mixed = (1.0, -1.0, 0.5)  # the seeds disagree in sign
    out = verdict(build(label_rows(lambda k, n, s: 1.0 + (k == "random") * mixed[s] * n / 1000)), cid)
    assert out.verdict == INCONCLUSIVE and out.why
    out = verdict(build(label_rows(PAPER_LABELS, train_error=0.1)), cid)
    assert out.verdict == UNTESTABLE and "not fitted" in out.why
    out = verdict(build(label_rows(PAPER_LABELS, diverged=(("random", 500, 1),))), cid)
    assert out.verdict == UNTESTABLE and "random labels n=500 seed 1: diverged" in out.why


def test_undefined_measure_is_untestable_and_partial_seeds_are_recorded():
    undefined = label_rows(lambda k, n, s: math.nan)
    out = verdict(build(undefined), "random-larger-sharpness")
    assert out.verdict == UNTESTABLE and "undefined in every seed" in out.why
    partial = label_rows(lambda k, n, s: math.nan if s == 2 else PAPER_LABELS(k, n, s))
    out = verdict(build(partial), "random-larger-sharpness")
    assert out.verdict == HOLDS and out.seeds == (0, 1)


@pytest.mark.parametrize("cid", list(TAUS))
def test_zoo_claims_reach_every_verdict(cid):
    _, sign = TAUS[cid]
    assert verdict(build(zoo=zoo_rows(sign)), cid).verdict == HOLDS
    assert verdict(build(zoo=zoo_rows(-sign)), cid).verdict == FAILS
    out = verdict(build(zoo=zoo_rows(sign, noise=1.0)), cid)
    assert out.verdict == INCONCLUSIVE and out.why
    out = verdict(build(zoo=zoo_rows(sign, fitted=4)), cid)
    assert out.verdict == UNTESTABLE and "4 of 12 models fitted" in out.why


def test_zoo_tau_is_uncertain_within_each_zoo():
    """The issue's case: small zoos (6 models each) with positive taus 0.2, 0.2, 0.33 whose own bootstrap intervals
    include 0. Across seeds alone (Student t) the claim would hold; the hierarchical interval counts each zoo's
    uncertainty, includes 0, and the claim is inconclusive."""
    ranks = {0: (0, 1, 5, 4, 3, 2), 1: (0, 1, 5, 4, 3, 2), 2: (0, 1, 4, 5, 3, 2)}  # tau-a 0.2, 0.2, 1/3
    zoo = [{**r, "sharpness": float(ranks[r["seed"]][i % 6])} for i, r in enumerate(zoo_rows(1, models=6))]
    records = build(zoo=zoo)
    taus = [zoo_tau(records, s, "sharpness") for s in (0, 1, 2)]
    assert [t for t, _ in taus] == pytest.approx([0.2, 0.2, 1 / 3])
    assert all(sorted(d)[int(0.025 * len(d))] < 0 for _, d in taus)  # each zoo's own 95% interval includes 0
    assert greater([t for t, _ in taus], 0.0).verdict == HOLDS  # what seeds alone would say
    out = verdict(records, "tau-sharpness")
    assert out.verdict == INCONCLUSIVE and out.numbers["hierarchical"] and out.numbers["low"] < 0


def test_measure_undefined_in_every_zoo_is_untestable():
    zoo = [{**r, "sharpness": math.nan} for r in zoo_rows(1)]
    out = verdict(build(zoo=zoo), "tau-sharpness")
    assert out.verdict == UNTESTABLE and "undefined in every seed's zoo" in out.why
