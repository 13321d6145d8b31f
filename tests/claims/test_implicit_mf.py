"""Claim fixtures of implicit-mf: synthetic Records (no training) for every claim reaching its four verdicts."""

from __future__ import annotations

import math

import pytest

from geomopt.experiments.implicit_mf import CLAIMS, PROBLEMS, RANK_ONE, ImplicitMFExperiment
from geomopt.experiments.records import Records
from geomopt.sweep import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

EXP = ImplicitMFExperiment.quick().replace({"alphas": [1e-1, 1e-3, 1e-5], "seeds": [0, 1, 2], "rc_seeds": [5, 6, 7]})
BY_ID = {c.id: c for c in CLAIMS}


def sweep(dist, erank=lambda p, a, s: 2.0, *, nuc_truth=lambda p, s: 0.0 if p != "undersampled" else 0.3,
          unconverged=(), exp=EXP) -> list[dict]:
    """Rows of the three problems: ``dist(problem, alpha, seed)`` to X_nuc; the baseline's distance to X*."""
    rows = []
    for p in PROBLEMS:
        for s in exp.seeds:
            rows.append({"run": f"{p}/nuc/{s}", "part": "baseline", "problem": p, "seed": s, "nuclear": 10.0,
                         "dist_truth": nuc_truth(p, s)})
            for a in exp.alphas:
                bad = (p, a, s) in unconverged
                rows.append({"run": f"{p}/{a}/{s}", "part": "alpha-sweep", "problem": p, "alpha": a, "seed": s,
                             "dist_nuc": dist(p, a, s), "dist_truth": 0.1, "erank": erank(p, a, s), "nuclear": 10.0,
                             "train_loss": 1e-2 if bad else 1e-14, "loss_zero": 0.5, "steps": exp.steps,
                             "diverged": False})
    return rows


def shrinking(p, a, s):  # Gunasekar et al.: the distance to X_nuc shrinks with alpha
    return a * (1 + 0.1 * s)


def growing(p, a, s):  # the opposite: smallest alpha farthest from X_nuc
    return 0.1 / a ** 0.1 * (1 + 0.1 * s)


def noisy(p, a, s):
    return 0.01 if a != min(EXP.alphas) else [0.005, 0.02, 0.009][s]


@pytest.mark.parametrize("claim", ["nuclear-well-sampled", "nuclear-undersampled"])
def test_towards_nuclear_claims_reach_every_verdict(claim):
    assert BY_ID[claim].evaluate(Records(EXP, sweep(shrinking)))["verdict"] == HOLDS
    assert BY_ID[claim].evaluate(Records(EXP, sweep(growing)))["verdict"] == FAILS
    out = BY_ID[claim].evaluate(Records(EXP, sweep(noisy)))
    assert out["verdict"] == INCONCLUSIVE and out["why"]
    problem = "sensing" if claim == "nuclear-well-sampled" else "undersampled"
    out = BY_ID[claim].evaluate(Records(EXP, sweep(shrinking, unconverged={(problem, 1e-5, 2)})))
    assert out["verdict"] == UNTESTABLE and f"{problem} alpha 1e-05, seed 2: not converged" in out["why"]


def test_well_sampled_reports_where_nuclear_equals_truth():
    out = BY_ID["nuclear-well-sampled"].evaluate(Records(EXP, sweep(shrinking)))
    assert out["numbers"]["seeds_with_nuc_equal_truth"] == {"sensing": 3, "completion": 3}


def test_undersampled_claims_use_only_seeds_where_nuclear_differs_from_truth():
    """Seed 1's X_nuc is X* (recovery, not a test of the conjecture): left out, and the claim says so."""
    rows = sweep(lambda p, a, s: 5.0 if s == 1 else 0.1 / a ** 0.1 * (1 + 0.001 * s),
                 nuc_truth=lambda p, s: 0.0 if p != "undersampled" or s == 1 else 0.3)
    out = BY_ID["nuclear-undersampled"].evaluate(Records(EXP, rows), seeds=EXP.seeds)
    assert out["verdict"] == FAILS and out["seeds"] == [0, 2]
    everywhere = sweep(growing, nuc_truth=lambda p, s: 0.0)
    for claim in ("nuclear-undersampled", "low-rank-undersampled"):
        out = BY_ID[claim].evaluate(Records(EXP, everywhere))
        assert out["verdict"] == UNTESTABLE and "X_nuc = X*" in out["why"]


def test_low_rank_reaches_every_verdict():
    claim = BY_ID["low-rank-undersampled"]
    low = lambda p, a, s: 2.0 + 10 * a + 0.01 * s  # noqa: E731  (Arora et al.: lower rank at small init)
    assert claim.evaluate(Records(EXP, sweep(shrinking, low)))["verdict"] == HOLDS
    high = lambda p, a, s: 5.0 - 10 * a + 0.01 * s  # noqa: E731
    assert claim.evaluate(Records(EXP, sweep(shrinking, high)))["verdict"] == FAILS
    mixed = lambda p, a, s: 3.0 + (0.2 * [1, -1, 0.5][s] if a == 1e-5 else 0)  # noqa: E731
    out = claim.evaluate(Records(EXP, sweep(shrinking, mixed)))
    assert out["verdict"] == INCONCLUSIVE and out["why"]
    out = claim.evaluate(Records(EXP, sweep(shrinking, low, unconverged={("undersampled", 1e-1, 0)})))
    assert out["verdict"] == UNTESTABLE and "not converged" in out["why"]


def rc(nuclear_end, ratio, *, det=lambda i, s: 1e-4, reached=True, diverged=()) -> Records:
    rows, curves = [], {}
    for init in ("gaussian", "balanced"):
        for s in EXP.rc_seeds:
            bad = (init, s) in diverged
            run = f"2x2/{init}/{s}"
            rows.append({"run": run, "part": "2x2", "init": init, "seed": s, "steps": EXP.rc_steps,
                         "loss": math.inf if bad else 1e-4, "W11": 60.0, "det": det(init, s),
                         "nuclear": nuclear_end(s), "frobenius": 1.0, "spectral": 1.0, "ratio": ratio(s),
                         "erank": 1.0, "diverged": bad, "nuclear@0.01": 3.0 if reached else math.nan,
                         "ratio@0.01": 1e-2 if reached else math.nan, "nuclear@0.001": 5.0, "ratio@0.001": 1e-3})
            curves[run] = [{"loss": 1.0, "nuclear": 0.0, "ratio": 1.0}]
    return Records(EXP, rows, curves)


@pytest.mark.parametrize("claim_id", ["norms-vs-rank", "norms-vs-rank-gaussian"])
def test_norms_vs_rank_reaches_every_verdict_on_its_own_seeds(claim_id):
    claim = BY_ID[claim_id]
    out = claim.evaluate(rc(lambda s: 60.0 + s, lambda s: 1e-5 * (1 + s)), seeds=EXP.seeds)
    assert out["verdict"] == HOLDS and out["seeds"] == [5, 6, 7]
    # norms fall back and the rank stays 2 (a finite solution): fails
    assert claim.evaluate(rc(lambda s: 2.0 + 0.1 * (s - 5), lambda s: 0.5 + 0.1 * s))["verdict"] == FAILS
    out = claim.evaluate(rc(lambda s: [3.5, 2.5, 3.2][s - 5], lambda s: 1e-5))
    assert out["verdict"] == INCONCLUSIVE and out["why"]


@pytest.mark.parametrize("bad, phrase", [({"det": lambda i, s: -1.0 if s == 6 else 1e-4}, "crossed det W = 0"),
                                         ({"det": lambda i, s: -1e-6 if s == 6 else 1e-4}, "crossed det W = 0"),
                                         ({"reached": False}, "never reached 0.01"),
                                         ({"diverged": {("balanced", 7), ("gaussian", 7)}}, "diverged")])
def test_norms_vs_rank_gates(bad, phrase):
    for claim_id in ("norms-vs-rank", "norms-vs-rank-gaussian"):
        out = BY_ID[claim_id].evaluate(rc(lambda s: 60.0, lambda s: 1e-5, **bad))
        assert out["verdict"] == UNTESTABLE and phrase in out["why"]


def test_each_init_is_judged_on_its_own_runs():
    # the Gaussian runs cross det W = 0 (as exact gradient flow from that init does): only its claim is untestable
    crossed = rc(lambda s: 60.0 + s, lambda s: 1e-5, det=lambda i, s: -0.9 if i == "gaussian" else 1e-6)
    assert BY_ID["norms-vs-rank"].evaluate(crossed)["verdict"] == HOLDS
    out = BY_ID["norms-vs-rank-gaussian"].evaluate(crossed)
    assert out["verdict"] == UNTESTABLE and "gaussian" in out["why"] and "balanced" not in out["why"]
    only_balanced = Records(EXP, [r for r in crossed.rows if r["init"] == "balanced"], crossed.curves)
    out = BY_ID["norms-vs-rank-gaussian"].evaluate(only_balanced)
    assert out["verdict"] == UNTESTABLE and "no 2 x 2 run from the gaussian init" in out["why"]


def test_rank_one_threshold_is_below_every_finite_solution():
    """The finite-norm solutions of the 2 x 2 problem have rank 2: sigma2/sigma1 of [[0,1],[1,0]] is 1."""
    assert RANK_ONE < 1.0


def test_missing_runs_are_untestable():
    rows = [r for r in sweep(shrinking) if not (r["part"] == "alpha-sweep" and r["alpha"] == 1e-5 and r["seed"] == 2)]
    for claim in ("nuclear-well-sampled", "nuclear-undersampled", "low-rank-undersampled"):
        out = BY_ID[claim].evaluate(Records(EXP, rows))
        assert out["verdict"] == UNTESTABLE and "not run" in out["why"]


def test_unconverged_run_passes_when_its_fit_resolves_the_distance():
    """Stopped at the step limit with relative residual 1e-4 against a distance of 1e-2: the distance is measured."""
    rows = sweep(lambda p, a, s: 1e-2 * (1 + a + 0.001 * s))
    for r in rows:
        if r["part"] == "alpha-sweep" and r["problem"] == "sensing":
            r["train_loss"] = 0.5 * 1e-8  # residual sqrt(1e-8) = 1e-4 <= 0.1 x 1e-2
    assert BY_ID["nuclear-well-sampled"].evaluate(Records(EXP, rows))["verdict"] == HOLDS
    for r in rows:
        if r["part"] == "alpha-sweep" and r["problem"] == "sensing" and r["alpha"] == 1e-5:
            r["train_loss"] = 0.5 * 1e-5  # residual 3e-3 > 1e-3
    out = BY_ID["nuclear-well-sampled"].evaluate(Records(EXP, rows))
    assert out["verdict"] == UNTESTABLE and "relative residual 0.0032" in out["why"]
