"""Claim fixtures of the pruning reproduction: synthetic dense runs and prunings (no training) take both
claims to each of the four verdicts."""

from __future__ import annotations

import math

import pytest

from geomopt.experiments.pruning import PruningExperiment, claims
from geomopt.experiments.records import Records
from geomopt.sweep.claims import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

SEEDS = (0, 1, 2)
CRITERIA = ("mp", "lm", "qm", "obd")


def build(loss, acc, *, dense_curve=(2.3, 0.5, 0.2, 0.1), diverged=(), edge=None) -> Records:
    """``loss(criterion, k, seed)`` right after pruning and ``acc(criterion, k, seed)`` after fine-tuning."""
    exp = PruningExperiment.quick().replace({"seeds": list(SEEDS), "criteria": list(CRITERIA)})
    rows, curves = [], {}
    for seed in SEEDS:
        run = f"dense/digits/lr0.1/seed{seed}"
        rows.append({"run": run, "part": "dense", "dataset": "digits", "lr": 0.1, "seed": seed,
                     "train_loss": dense_curve[-1], "val_err": 0.05, "test_err": 0.05, "diverged": seed in diverged,
                     "chosen": True, "edge": edge, "seconds": 1.0})
        curves[run] = [{"epoch": e, "train_loss": v} for e, v in enumerate(dense_curve)]
        for c in CRITERIA:
            for k in exp.steps:
                run = f"pruned/digits/lr0.1/seed{seed}/{c}-k{k}"
                rows.append({"run": run, "part": "pruned", "dataset": "digits", "seed": seed, "dense_lr": 0.1,
                             "criterion": c, "steps": k, "dense_test_acc": 0.95,
                             "pruned_train_loss": loss(c, k, seed), "pruned_test_acc": 0.5,
                             "finetuned_test_acc": acc(c, k, seed)})
                curves[run] = [{"step": 1, "predicted_change": 0.1, "actual_change": 0.2}]
    return Records(exp, rows, curves)


def verdict(records: Records, cid: str):
    return next(c for c in claims(records.exp) if c.id == cid).test(records)


def paper_loss(c, k, seed):
    return (0.3 if k > 1 else 2.0) + 0.05 * seed


def paper_acc(c, k, seed):
    return 0.90 + 0.001 * seed + (0.002 if c == "qm" else 0.0)


def test_locality_reaches_every_verdict():
    assert verdict(build(paper_loss, paper_acc), "locality").verdict == HOLDS
    assert verdict(build(lambda c, k, s: paper_loss(c, 15 - k, s), paper_acc), "locality").verdict == FAILS
    mixed = (-0.5, 0.4, -0.3)  # k=14 minus k=1 per seed: the seeds disagree
    out = verdict(build(lambda c, k, s: 1.0 + (k > 1) * mixed[s], paper_acc), "locality")
    assert out.verdict == INCONCLUSIVE and out.why


def test_first_vs_second_order_reaches_every_verdict():
    assert verdict(build(paper_loss, paper_acc), "first-vs-second-order").verdict == HOLDS
    far = verdict(build(paper_loss, lambda c, k, s: 0.90 - (0.05 + 0.01 * s) * (c == "lm")), "first-vs-second-order")
    assert far.verdict == FAILS  # LM 5-7 points below every second-order criterion in every seed
    spread = (0.0, 0.015, -0.012)  # differences of 0, 1.5 and -1.2 points: neither inside nor outside the margin
    out = verdict(build(paper_loss, lambda c, k, s: 0.90 + spread[s] * (c == "lm")), "first-vs-second-order")
    assert out.verdict == INCONCLUSIVE and out.why


@pytest.mark.parametrize("cid", ["locality", "first-vs-second-order"])
def test_unconverged_or_diverged_dense_networks_are_untestable(cid):
    out = verdict(build(paper_loss, paper_acc, dense_curve=(2.3, 2.0, 1.9)), cid)
    assert out.verdict == UNTESTABLE and "not converged" in out.why
    out = verdict(build(paper_loss, paper_acc, diverged=(2,)), cid)
    assert out.verdict == UNTESTABLE and "seed 2: diverged" in out.why
    out = verdict(build(paper_loss, paper_acc, edge="upper"), cid)
    assert out.verdict == UNTESTABLE and "upper edge" in out.why
    out = verdict(build(lambda c, k, s: math.nan, lambda c, k, s: math.nan), cid)
    assert out.verdict == UNTESTABLE and "non-finite" in out.why
