"""Claim fixtures of implicit-geometry: synthetic Records (no training) for every claim reaching its four verdicts."""

from __future__ import annotations

import math

import pytest
import torch

from geomopt.experiments.implicit_geometry import (CLAIMS, DATASETS, NORMS, ImplicitGeometryExperiment,
                                                   regression_problem)
from geomopt.experiments.records import Records
from geomopt.sweep import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

EXP = ImplicitGeometryExperiment.quick()
BY_ID = {c.id: c for c in CLAIMS}
SEEDS = EXP.seeds


def regression_rows(dist=lambda spec, s: 1e-8, md_spread=lambda spec, s: 1e-9, sd_spread=lambda norm, s: 0.2,
                    residual=lambda part, s: 1e-11, ng_dist=lambda spec, lr, s: 0.01 * lr) -> list[dict]:
    """Mirror, natural gradient and steepest descent rows; each mirror/steepest run's limit is w0 + v + c * lr * e
    (spread about c * (0.6 - 0.1) for mirror, c * (1 - 0.1) for steepest, relative to ||v|| = 1); natural gradient's
    distance to the Bregman projection is ``ng_dist`` (default: first order in the step)."""
    rows = []
    for s in SEEDS:
        w0 = regression_problem(EXP, s)[2]
        g = torch.Generator().manual_seed(s)
        v, e = torch.randn(EXP.reg_d, generator=g), torch.randn(EXP.reg_d, generator=g)
        v, e = v / v.norm(), e / e.norm()
        for spec in EXP.potentials:
            c = md_spread(spec, s) / (max(EXP.md_lrs) - min(EXP.md_lrs))
            for lr in EXP.md_lrs:
                for m in EXP.momenta:
                    rows.append({"run": f"md/{spec}/{lr}/{m}/{s}", "part": "md", "potential": spec, "lr": lr,
                                 "momentum": m, "seed": s, "residual": residual("md", s), "steps": 100,
                                 "diverged": False, "dist_bregman": dist(spec, s), "w": (w0 + v + c * lr * e).tolist()})
            for lr in EXP.ng_lrs:
                rows.append({"run": f"ng/{spec}/{lr}/{s}", "part": "ng", "potential": spec, "lr": lr, "seed": s,
                             "residual": residual("ng", s), "steps": 100, "diverged": False,
                             "dist_bregman": ng_dist(spec, lr, s), "w": (w0 + v).tolist()})
        for norm in EXP.sd_norms:
            c = sd_spread(norm, s) / (max(EXP.sd_lrs) - min(EXP.sd_lrs))
            for lr in EXP.sd_lrs:
                rows.append({"run": f"sd/{norm}/{lr}/{s}", "part": "sd", "norm": norm, "lr": lr, "seed": s,
                             "residual": residual("sd", s), "steps": 100, "diverged": False,
                             "w": (w0 + v + c * lr * e).tolist()})
    return rows


def test_mirror_bregman_reaches_every_verdict():
    claim = BY_ID["mirror-bregman"]
    out = claim.evaluate(Records(EXP, regression_rows()))
    assert out["verdict"] == HOLDS and set(out["numbers"]) == set(EXP.potentials)
    # the paper's opposite: every limit 1-2% away from the Bregman projection
    assert claim.evaluate(Records(EXP, regression_rows(dist=lambda p, s: 0.01 + 0.005 * s)))["verdict"] == FAILS
    out = claim.evaluate(Records(EXP, regression_rows(dist=lambda p, s: [1e-4, 5e-3, 2e-4][s])))
    assert out["verdict"] == INCONCLUSIVE and out["why"]
    out = claim.evaluate(Records(EXP, regression_rows(residual=lambda part, s: 1e-3 if s == 1 else 1e-11)))
    assert out["verdict"] == UNTESTABLE and "not converged (relative residual 0.001" in out["why"]


def test_step_size_dependence_reaches_every_verdict():
    claim = BY_ID["step-size-dependence"]
    out = claim.evaluate(Records(EXP, regression_rows()))
    assert out["verdict"] == HOLDS, out
    # steepest descent's limits do not move with the step size: the claim's first half fails
    assert claim.evaluate(Records(EXP, regression_rows(sd_spread=lambda n, s: 1e-6)))["verdict"] == FAILS
    # mirror descent's limits move: its half fails
    assert claim.evaluate(Records(EXP, regression_rows(md_spread=lambda p, s: 0.05 + 0.01 * s)))["verdict"] == FAILS
    out = claim.evaluate(Records(EXP, regression_rows(sd_spread=lambda n, s: [5e-4, 3e-3, 8e-4][s])))
    assert out["verdict"] == INCONCLUSIVE and out["why"]
    rows = regression_rows()
    rows[-1]["diverged"] = True
    out = claim.evaluate(Records(EXP, rows))
    assert out["verdict"] == UNTESTABLE and "diverged" in out["why"]


def test_natural_gradient_reaches_every_verdict():
    claim = BY_ID["natural-gradient"]
    out = claim.evaluate(Records(EXP, regression_rows()))
    assert out["verdict"] == HOLDS and set(out["numbers"]) == {f"{p} {part}" for p in EXP.potentials
                                                               for part in ("finite step", "small step")}
    # the paper's opposite: natural gradient reaches the Bregman projection at every step, as mirror descent does
    same = claim.evaluate(Records(EXP, regression_rows(ng_dist=lambda p, lr, s: 1e-8 * (1 + 0.1 * s))))
    assert same["verdict"] == FAILS
    # a finite-step error that does not shrink with the step (1e-2 at every step size)
    flat = claim.evaluate(Records(EXP, regression_rows(ng_dist=lambda p, lr, s: 0.01 * (1 + 0.1 * s))))
    assert flat["verdict"] == FAILS and "small step" in " ".join(k for k, v in flat["numbers"].items()
                                                                 if v["verdict"] == FAILS)
    noisy = claim.evaluate(Records(EXP, regression_rows(ng_dist=lambda p, lr, s: [1e-7, 1e-5, 1e-9][s] * lr)))
    assert noisy["verdict"] == INCONCLUSIVE and noisy["why"]
    rows = regression_rows(residual=lambda part, s: 1e-3 if (part, s) == ("ng", 2) else 1e-11)
    out = claim.evaluate(Records(EXP, rows))
    assert out["verdict"] == UNTESTABLE and "natural gradient lp:1.25 lr 0.8, seed 2: not converged" in out["why"]


def separable_records(gap=lambda d, run, norm, s: 0.01 if run == norm else 0.3, early=lambda d, run, norm, s: 0.2,
                      log_loss=lambda d, run, s: -40.0, diverged=()) -> Records:
    """Separable rows of both losses (the same numbers): run ``run``'s final gap in ``norm`` is ``gap(...)``; its
    curve has the ``early`` gap at a tenth of the steps."""
    rows, curves = [], {}
    for loss, d, s, run in ((lo, d, s, r) for lo in EXP.losses for d in DATASETS for s in SEEDS for r in NORMS):
        rid = f"sep/{loss}/{d}/{run}/{s}"
        final = {f"gap_{n}": gap(d, run, n, s) for n in NORMS}
        rows.append({"run": rid, "part": "separable", "loss": loss, "dataset": d, "norm": run, "seed": s,
                     "steps": 1000, "diverged": (d, run, s) in diverged, "log_loss0": math.log(40),
                     "log_loss": log_loss(d, run, s), "angle": 1.0, **final})
        curves[rid] = [{"step": 1, "log_loss": 3.0, "angle": 40.0, **{f"gap_{n}": 2.0 for n in NORMS}},
                       {"step": 100, "log_loss": -4.0, "angle": 9.0,
                        **{f"gap_{n}": early(d, run, n, s) for n in NORMS}},
                       {"step": 1000, "log_loss": log_loss(d, run, s), "angle": 1.0, **final}]
    return Records(EXP, rows, curves)


def test_max_margin_reaches_every_verdict():
    claim = BY_ID["max-margin"]
    assert claim.evaluate(separable_records())["verdict"] == HOLDS
    # the gap stops at 20-25% (no longer falling): it converges elsewhere
    plateau = separable_records(gap=lambda d, r, n, s: 0.2 + 0.02 * s, early=lambda d, r, n, s: 0.21 + 0.02 * s)
    assert claim.evaluate(plateau)["verdict"] == FAILS
    # above the threshold but still falling fast in every seed: more steps would decide, never "fails"
    falling = claim.evaluate(separable_records(gap=lambda d, r, n, s: 0.2 + 0.02 * s, early=lambda d, r, n, s: 1.0))
    assert falling["verdict"] == INCONCLUSIVE and "still falling" in falling["why"]
    noisy = claim.evaluate(separable_records(gap=lambda d, r, n, s: [0.01, 0.08, 0.03][s]))
    assert noisy["verdict"] == INCONCLUSIVE and noisy["why"]
    out = claim.evaluate(separable_records(log_loss=lambda d, r, s: 2.0 if (d, r, s) == ("digits", "l1", 1) else -40))
    assert out["verdict"] == UNTESTABLE and "digits l1 steepest descent on the exponential loss, seed 1: not " \
        "converged" in out["why"] and "on the logistic loss, seed 1" in out["why"]
    # only the logistic loss's l2 run stalls at 20-24% (its gap was 0.2 at a tenth of the steps): that part fails
    stalled = separable_records()
    for r in stalled.where(loss="logistic", dataset="synthetic", norm="l2"):
        r["gap_l2"] = 0.2 + 0.02 * r["seed"]
    out = claim.evaluate(stalled)
    assert out["verdict"] == FAILS and [k for k, v in out["numbers"].items() if v["verdict"] == FAILS] == \
        ["logistic synthetic l2 gap", "logistic synthetic l2 falling"]
    out = claim.evaluate(separable_records(gap=lambda d, r, n, s: 1.5 if r == "linf" and s == 2 else 0.01))
    assert out["verdict"] == UNTESTABLE and "does not separate the data" in out["why"]


def test_geometry_decides_reaches_every_verdict():
    claim = BY_ID["geometry-decides"]
    assert claim.evaluate(separable_records())["verdict"] == HOLDS
    # every run reaches the spectral max margin best: the other norms' parts fail
    swapped = separable_records(gap=lambda d, r, n, s: 0.01 if r == "spectral" else 0.3 + 0.01 * s)
    assert claim.evaluate(swapped)["verdict"] == FAILS
    mixed = separable_records(gap=lambda d, r, n, s: (0.01 if r == n else 0.3) if s != 1 else (0.2 if r == n else 0.1))
    out = claim.evaluate(mixed)
    assert out["verdict"] == INCONCLUSIVE and "disagree in sign" in out["why"]
    out = claim.evaluate(separable_records(diverged={("synthetic", "l2", 0)}))
    assert out["verdict"] == UNTESTABLE and "synthetic l2 steepest descent on the logistic loss, seed 0: diverged" \
        in out["why"]


def adagrad_records(angle=lambda d, s: 30.0, drift=lambda d, s: 0.1, change=lambda d, start, s: 1e-3) -> Records:
    """AdaGrad rows: the random start's limit is the zero start's rotated by ``angle`` degrees in a plane."""
    rows = []
    for d in DATASETS:
        for s in SEEDS:
            a = math.radians(angle(d, s))
            limits = {"zero": [1.0, 0.0, 0.0], "random": [math.cos(a), math.sin(a), 0.0]}
            for start in ("zero", "random"):
                rows.append({"run": f"adagrad/{d}/{start}/{s}", "part": "adagrad", "dataset": d, "start": start,
                             "seed": s, "loss": 1e-3, "loss0": 40.0, "diverged": False,
                             "accumulator_change": change(d, start, s), "drift": drift(d, s), "angle_to_limit": 5.0,
                             "limit": limits[start], "w": limits[start]})
    return Records(EXP, rows)


def test_adagrad_init_reaches_every_verdict():
    claim = BY_ID["adagrad-init"]
    assert claim.evaluate(adagrad_records())["verdict"] == HOLDS
    # both starts reach the same direction (within 0.01 deg) while the limits still drift by 0.5 deg
    same = adagrad_records(angle=lambda d, s: 0.01, drift=lambda d, s: 0.5 + 0.1 * s)
    assert claim.evaluate(same)["verdict"] == FAILS
    out = claim.evaluate(adagrad_records(angle=lambda d, s: [2.0, 0.2, 1.5][s], drift=lambda d, s: 0.5))
    assert out["verdict"] == INCONCLUSIVE and out["why"]
    out = claim.evaluate(adagrad_records(change=lambda d, start, s: 0.05 if (d, start) == ("digits", "random") else 0))
    assert out["verdict"] == UNTESTABLE and "digits AdaGrad from the random start, seed 0: preconditioner not frozen" \
        in out["why"]


@pytest.mark.parametrize("claim", [c.id for c in CLAIMS])
def test_missing_runs_are_untestable(claim):
    out = BY_ID[claim].evaluate(Records(EXP, []))
    assert out["verdict"] == UNTESTABLE and "not run" in out["why"]


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="potentials must be 'lp:P'"):
        EXP.replace({"potentials": ["lp:1"]})
    with pytest.raises(ValueError, match="sd_norms must be among"):
        EXP.replace({"sd_norms": ["spectral"]})
    with pytest.raises(ValueError, match="ng_lrs must be 2 or more step sizes, largest first"):
        EXP.replace({"ng_lrs": [0.1, 0.8]})
    with pytest.raises(ValueError, match="losses must be among"):
        EXP.replace({"losses": ["hinge"]})
    with pytest.raises(ValueError, match="two different digits"):
        EXP.replace({"digits_classes": [3, 3]})
    with pytest.raises(ValueError, match="unknown experiment key"):
        EXP.replace({"nope": 1})
