"""Claim fixtures of bn-lstm: synthetic stored runs (no training) for every claim and every verdict."""

from __future__ import annotations

import math

import pytest

from geomopt.experiments.bn_lstm import BNLSTMExperiment, claims
from geomopt.experiments.records import Records
from geomopt.sweep import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

CLAIM = {c.id: c for c in claims(BNLSTMExperiment.quick())}
EPOCHS = 10


def build(finals: dict[tuple[str, str], list[float]], rates: dict[tuple[str, str], list[float]], *,
          diverged: tuple = (), edge: dict | None = None, stuck: tuple = ()) -> Records:
    """Chosen runs: final test accuracy % (bits/char for chars) per seed, and each run's training curve
    ``floor + (start - floor) exp(-rate k)`` (a larger rate: faster); ``stuck`` runs stay near their start."""
    rows, curves = [], {}
    for (data, model), values in finals.items():
        for seed, v in enumerate(values):
            run = f"{data}/{model}/seed{seed}"
            div = bool({(data, model), (data, model, seed)} & set(diverged))
            start, floor = (4.0, 1.0) if data == "chars" else (2.3, 0.05)
            if (data, model) in stuck:
                floor = 0.9 * start
            losses = [floor + (start - floor) * math.exp(-rates[data, model][seed] * k) for k in range(EPOCHS + 1)]
            if div:
                losses[-1] = math.inf
            rows.append({"run": run, "dataset": data, "model": model, "lr": 3e-3, "seed": seed,
                         "final": (math.inf if data == "chars" else 0.0) if div else v, "diverged": div,
                         "chosen": True, "edge": (edge or {}).get((data, model)), "train_loss": losses[-1]})
            curves[run] = [{"epoch": k, "train_loss": x, "test": x} for k, x in enumerate(losses)]
    return Records(BNLSTMExperiment.quick(), rows, curves)


def spread(mean: float, width: float, n: int = 5) -> list[float]:
    return [mean + width * (k - (n - 1) / 2) / n for k in range(n)]


PAPER = {("seq-mnist", "lstm"): spread(98.9, 0.05), ("seq-mnist", "bnlstm"): spread(99.0, 0.05),
         ("seq-mnist-perm", "lstm"): spread(90.2, 0.5), ("seq-mnist-perm", "bnlstm"): spread(95.4, 0.5),
         ("chars", "lstm"): spread(1.38, 0.005), ("chars", "bnlstm"): spread(1.32, 0.005)}
FAST = {k: spread(1.0 if k[1] == "bnlstm" else 0.5, 0.1) for k in PAPER}


def verdict(claim: str, records: Records) -> tuple[str, str]:
    out = CLAIM[claim].test(records)
    return out.verdict, out.why


def swap(d: dict) -> dict:
    return {(data, "lstm" if m == "bnlstm" else "bnlstm"): v for (data, m), v in d.items()}


@pytest.mark.parametrize("claim", ["generalizes-better", "converges-faster"])
def test_published_holds_opposite_fails(claim):
    assert verdict(claim, build(PAPER, FAST))[0] == HOLDS
    assert verdict(claim, build(swap(PAPER), swap(FAST)))[0] == FAILS


@pytest.mark.parametrize("claim", ["generalizes-better", "converges-faster"])
def test_noise_at_three_seeds_is_inconclusive(claim):
    finals = {("seq-digits", "lstm"): [95.0, 96.5, 95.8], ("seq-digits", "bnlstm"): [96.0, 95.5, 95.9]}
    rates = {("seq-digits", "lstm"): [0.8, 1.0, 0.9], ("seq-digits", "bnlstm"): [0.9, 0.85, 0.95]}
    v, why = verdict(claim, build(finals, rates))
    assert v == INCONCLUSIVE and "seeds" in why


@pytest.mark.parametrize("claim", ["generalizes-better", "converges-faster"])
@pytest.mark.parametrize("spoil", [{"diverged": (("seq-mnist", "lstm", 1),)}, {"stuck": (("seq-mnist-perm", "lstm"),)},
                                   {"edge": {("chars", "bnlstm"): "high"}}])
def test_gated_runs_are_untestable(claim, spoil):
    v, why = verdict(claim, build(PAPER, FAST, **spoil))
    assert v == UNTESTABLE and "seed" in why


def test_not_run_is_untestable():
    only = {k: v for k, v in PAPER.items() if k[1] == "lstm"}
    assert verdict("generalizes-better", build(only, FAST))[0] == UNTESTABLE
