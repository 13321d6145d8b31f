"""Claim fixtures of overparametrization: synthetic Records (no training) for every claim's four verdicts."""

from __future__ import annotations

import pytest

from geomopt.experiments.overparametrization import CLAIMS, OverparamExperiment
from geomopt.experiments.records import Records
from geomopt.sweep import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

EXP = OverparamExperiment.quick().replace({"datasets": ["d"], "widths": [4, 16, 64], "label_noises": [0.0, 0.2],
                                           "seeds": [0, 1, 2]})
BY_ID = {c.id: c for c in CLAIMS}
OTHER = ("vc_bound", "frobenius_bound", "spectral_l1_bound", "spectral_fro_bound")


def records(test_err, *, train_err=lambda w, n, s: 0.0 if w >= 16 else 0.1,
            reached=lambda w, n, s: w >= 16, bound=lambda w, s: 10.0 / w ** 0.5 * (1 + 0.01 * s),
            other=lambda w, s: w * (1 + 0.01 * s), diverged=(), exp=EXP) -> Records:
    """One row per (noise, width, seed) of dataset ``d``: ``test_err(width, noise, seed)`` etc."""
    rows = []
    for noise in exp.label_noises:
        for w in exp.widths:
            for s in exp.seeds:
                bad = (w, noise, s) in diverged
                rows.append({"run": f"{noise}/{w}/{s}", "dataset": "d", "label_noise": noise, "width": w, "seed": s,
                             "train_err": train_err(w, noise, s), "test_err": test_err(w, noise, s),
                             "train_loss": 0.005 if reached(w, noise, s) else 0.3, "epochs": 10,
                             "reached_target": reached(w, noise, s) and not bad, "diverged": bad,
                             "overparam_bound": bound(w, s), **{k: other(w, s) for k in OTHER}})
    return Records(exp, rows)


def falling(w, n, s):  # Neyshabur et al. 2015: test error keeps falling past interpolation (H = 16 here)
    return 0.3 - 0.02 * w ** 0.5 + 0.001 * s + n


def rising(w, n, s):
    return 0.1 + 0.002 * w + 0.001 * s + n


def noisy(w, n, s):
    return 0.2 + (0.01 * [1, -1, 0.5][s] if w == 64 else 0)


@pytest.mark.parametrize("claim", ["test-falls-beyond-interpolation", "test-falls-with-label-noise"])
def test_test_error_claims_reach_every_verdict(claim):
    assert BY_ID[claim].evaluate(records(falling))["verdict"] == HOLDS
    assert BY_ID[claim].evaluate(records(rising))["verdict"] == FAILS
    out = BY_ID[claim].evaluate(records(noisy))
    assert out["verdict"] == INCONCLUSIVE and out["why"]
    noise = 0.2 if "noise" in claim else 0.0
    out = BY_ID[claim].evaluate(records(falling, diverged={(64, noise, 1)}))
    assert out["verdict"] == UNTESTABLE and "H=64, seed 1: diverged" in out["why"]
    # the widest net stops interpolating in one seed: not "beyond interpolation"
    out = BY_ID[claim].evaluate(records(falling, train_err=lambda w, n, s: 0.0 if w == 16 or s else 0.02 * (w > 16)))
    assert out["verdict"] == UNTESTABLE and "H=64, seed 0: not interpolating" in out["why"]
    # no width below the largest interpolates: the sweep cannot test the claim
    out = BY_ID[claim].evaluate(records(falling, train_err=lambda w, n, s: 0.0 if w == 64 else 0.1))
    assert out["verdict"] == UNTESTABLE and "no width below the largest" in out["why"]


def test_label_noise_claim_untestable_when_not_run():
    exp = EXP.replace({"label_noises": [0.0]})
    out = BY_ID["test-falls-with-label-noise"].evaluate(records(falling, exp=exp))
    assert out["verdict"] == UNTESTABLE and "not run" in out["why"]


@pytest.mark.parametrize("claim", ["overparam-bound-falls", "other-bounds-grow"])
def test_bound_claims_reach_every_verdict(claim):
    falls, grows = (lambda w, s: 10.0 / w ** 0.5 * (1 + 0.01 * s)), (lambda w, s: w * (1 + 0.01 * s))
    mixed = lambda w, s: 5.0 + (0.1 * [1, -1, 0.5][s] if w == 64 else 0)  # noqa: E731
    key = "bound" if claim == "overparam-bound-falls" else "other"
    right, wrong = (falls, grows) if key == "bound" else (grows, falls)
    assert BY_ID[claim].evaluate(records(falling, **{key: right}))["verdict"] == HOLDS
    assert BY_ID[claim].evaluate(records(falling, **{key: wrong}))["verdict"] == FAILS
    out = BY_ID[claim].evaluate(records(falling, **{key: mixed}))
    assert out["verdict"] == INCONCLUSIVE and out["why"]
    # only the widest width reached the loss target in every seed: no pair trained to the same loss
    out = BY_ID[claim].evaluate(records(falling, reached=lambda w, n, s: w == 64))
    assert out["verdict"] == UNTESTABLE and "fewer than two widths" in out["why"]


def test_bound_claims_compare_only_widths_trained_to_the_target():
    """A width that missed the target (H = 4) is outside the comparison, however its bound looks."""
    out = BY_ID["overparam-bound-falls"].evaluate(records(falling, bound=lambda w, s: 0.1 if w == 4 else 10.0 / w))
    assert out["verdict"] == HOLDS and "H=16" in out["ours"]
