"""Claim fixtures of the edge-of-stability reproduction: synthetic sharpness traces (no training) for every
claim and loss reach each of the four verdicts."""

from __future__ import annotations

import math

import pytest

from geomopt.experiments.edge_of_stability import EdgeOfStabilityExperiment, claims
from geomopt.experiments.records import Records
from geomopt.sweep.claims import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

LR = 0.2  # 2/lr = 10
STEPS = 200


def _curve(ratios: list[float], loss=lambda t: 1.0 / (1 + 0.05 * t), spikes: int = 3) -> list[dict]:
    """A trace measured every 10 steps with lambda lr/2 = ``ratios[i]`` at step 10 i, and the loss ``loss(t)`` with
    a spike every 50 steps (``spikes`` of them)."""
    out = []
    for t in range(STEPS + 1):
        value = loss(t) * (1.5 if t % 50 == 25 and t // 50 < spikes else 1.0)
        rec = {"step": t, "loss": value}
        if t % 10 == 0:
            rec["sharpness"] = ratios[t // 10] * 2 / LR
        out.append(rec)
    return out


def _ratios(plateau: float, noise: float = 0.0, seed: int = 0) -> list[float]:
    """Sharpening from 0.3 to ``plateau`` by step 50, then ``plateau`` (wiggling by +-``noise``)."""
    return [0.3 + (plateau - 0.3) * i / 5 if i < 5 else plateau + noise * math.sin(i + 7 * seed) for i in range(21)]


def build(traces: dict[str, list[list[dict]]], *, diverged: tuple[int, ...] = ()) -> Records:
    """Records of one lr, ``traces[loss][seed]``."""
    exp = EdgeOfStabilityExperiment.quick().replace({"lrs": [LR], "steps": STEPS, "losses": list(traces),
                                                     "seeds": list(range(len(next(iter(traces.values())))))})
    rows, curves = [], {}
    for loss, per_seed in traces.items():
        for seed, curve in enumerate(per_seed):
            run = f"runs/{loss}/lr{LR:g}/seed{seed}"
            rows.append({"run": run, "loss": loss, "lr": LR, "seed": seed, "diverged": seed in diverged,
                         "final_loss": curve[-1]["loss"], "train_acc": 1.0, "test_acc": 0.8, "seconds": 1.0})
            curves[run] = curve
    return Records(exp, rows, curves)


def verdicts(records: Records) -> dict[str, str]:
    return {c.id: c.test(records).verdict for c in claims(records.exp)}


LOSSES = ("mse", "cross-entropy")


def test_paper_result_holds():
    """Sharpening to 2/lr, then hovering within 10% of it, the loss falling with spikes: every claim holds."""
    got = verdicts(build({loss: [_curve(_ratios(1.02, 0.05, s)) for s in range(3)] for loss in LOSSES}))
    assert got == {f"{c}-{loss}": HOLDS for c in ("sharpening", "edge", "loss-falls") for loss in LOSSES}


def test_opposite_fails():
    """Overshooting far beyond 2/lr (2.5x) with a monotone loss rising at the end... every seed: the edge claim
    and the non-monotone-fall claim fail; a stable run plateauing at half of 2/lr fails the sharpening claim."""
    overshoot = build({"mse": [_curve(_ratios(2.5, 0.1, s), spikes=0) for s in range(3)]})
    got = {c.id: c.test(overshoot) for c in claims(overshoot.exp)}
    assert got["edge-mse"].verdict == FAILS and got["loss-falls-mse"].verdict == FAILS
    assert got["sharpening-mse"].verdict == HOLDS
    stable = build({"cross-entropy": [_curve(_ratios(0.5, 0.02, s)) for s in range(3)]})
    got = {c.id: c.test(stable) for c in claims(stable.exp)}
    assert got["sharpening-cross-entropy"].verdict == FAILS
    # no edge window: the edge claims cannot be tested, and say so
    assert got["edge-cross-entropy"].verdict == UNTESTABLE and "never reached 2/lr" in got["edge-cross-entropy"].why


def test_the_old_median_rule_counterexamples_do_not_hold():
    """A seed peaking at 2.84x with the median near 1 (only a few measurements in the band) does not hold."""
    wild = [[0.3, 0.5, 0.7, 0.9, 1.0, 2.84, 0.6, 1.3, 0.7, 1.25, 0.75, 1.2, 0.8, 1.3, 0.7, 1.05, 1.3, 0.7, 1.2, 0.75,
             1.0] for _ in range(3)]
    records = build({"mse": [_curve(r) for r in wild]})
    assert next(c for c in claims(records.exp) if c.id == "edge-mse").test(records).verdict == FAILS


def test_noise_at_three_seeds_is_inconclusive():
    """Seeds that disagree (one hovering, two oscillating widely): inconclusive, saying what would decide it."""
    mixed = [_curve(_ratios(1.0, 0.05, 0)), _curve(_ratios(1.0, 0.3, 1)), _curve(_ratios(1.0, 0.06, 2))]
    records = build({"mse": mixed})
    out = next(c for c in claims(records.exp) if c.id == "edge-mse").test(records)
    assert out.verdict == INCONCLUSIVE and out.why
    noisy_peak = [_curve(_ratios(p)) for p in (0.88, 1.0, 0.95)]
    records = build({"mse": noisy_peak})
    out = next(c for c in claims(records.exp) if c.id == "sharpening-mse").test(records)
    assert out.verdict == INCONCLUSIVE and out.why


@pytest.mark.parametrize("claim", ["sharpening", "edge", "loss-falls"])
def test_diverged_or_unconverged_runs_are_untestable(claim):
    good = [_curve(_ratios(1.02, 0.05, s)) for s in range(3)]
    diverged = build({"mse": good}, diverged=(1,))
    out = next(c for c in claims(diverged.exp) if c.id == f"{claim}-mse").test(diverged)
    assert out.verdict == UNTESTABLE and "seed 1: diverged" in out.why
    flat = build({"mse": [_curve(_ratios(1.02, 0.05, s), loss=lambda t: 1.0 - 1e-4 * t) for s in range(3)]})
    out = next(c for c in claims(flat.exp) if c.id == f"{claim}-mse").test(flat)
    assert out.verdict == UNTESTABLE and "not converged" in out.why
    blowup = build({"mse": [_curve(_ratios(1.02, 0.05, s), loss=lambda t: 1.0 / (1 + 0.05 * t) + 0.3 * (t == STEPS))
                            for s in range(3)]})
    out = next(c for c in claims(blowup.exp) if c.id == f"{claim}-mse").test(blowup)
    assert out.verdict == UNTESTABLE and "unstable" in out.why


def test_a_run_starting_above_the_band_cannot_show_sharpening():
    high = [_curve([1.2] * 21) for _ in range(3)]
    records = build({"mse": high})
    out = next(c for c in claims(records.exp) if c.id == "sharpening-mse").test(records)
    assert out.verdict == UNTESTABLE and "nothing to rise" in out.why


def test_an_overshoot_does_not_blur_the_sharpening_claim():
    """One seed's catapult to 4x 2/lr: sharpening still holds (it reached the band), the overshoot is the edge
    claim's business; a seed whose loss falls monotonically makes the non-monotone part inconclusive."""
    catapult = [_curve(_ratios(1.02, 0.05, 0)), _curve(_ratios(1.02, 0.05, 1)),
                _curve(_ratios(1.02, 0.05, 2)[:6] + [4.0] + _ratios(1.02, 0.05, 2)[7:])]
    records = build({"mse": catapult})
    assert verdict_of(records, "sharpening-mse").verdict == HOLDS
    monotone = [_curve(_ratios(1.02, 0.05, s), spikes=3 if s else 0) for s in range(3)]
    out = verdict_of(build({"mse": monotone}), "loss-falls-mse")
    assert out.verdict == INCONCLUSIVE and "non-monotone" in out.why


def verdict_of(records: Records, cid: str):
    return next(c for c in claims(records.exp) if c.id == cid).test(records)
