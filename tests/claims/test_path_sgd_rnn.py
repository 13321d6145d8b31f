"""Claim fixtures of path-sgd-rnn: synthetic stored runs (no training) for every claim and every verdict."""

from __future__ import annotations

import math

import pytest

from geomopt.experiments.path_sgd_rnn import CLAIMS, PathSGDRNNExperiment
from geomopt.experiments.records import Records
from geomopt.sweep import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

CLAIM = {c.id: c for c in CLAIMS}
START_MSE, START_CE = 1.17, 2.3  # training loss before training: adding (outputs near 0), 10 classes


def curve(start: float, final: float, epochs: int = 8, converged: bool = True) -> list[float]:
    """A training curve from ``start`` to ``final``: exponential and flat at the end (converged) or still
    falling linearly (not converged)."""
    if converged:
        return [final + (start - final) * math.exp(-2.0 * k) for k in range(epochs + 1)]
    return [start + (final - start) * k / epochs for k in range(epochs + 1)]


def build(finals: dict[tuple[str, str], list[float]], *, unconverged: tuple = (), edge: dict | None = None,
          diverged: tuple = ()) -> Records:
    """Chosen runs of each (task, method) with the given final test numbers per seed (training loss ends at
    the same value); ``unconverged``/``diverged``: (task, method) or (task, method, seed) to spoil."""
    rows, curves = [], {}
    for (task, method), values in finals.items():
        adding = task.startswith("adding")
        for seed, v in enumerate(values):
            run = f"{task}/{method}/seed{seed}"
            bad = {(task, method), (task, method, seed)}
            div = bool(bad & set(diverged))
            final = (math.inf if adding else 1.0) if div else v
            rows.append({"run": run, "task": task, "method": method, "lr": 1e-3, "seed": seed, "final": final,
                         "train_loss": final, "diverged": div, "restarts": 0, "chosen": True,
                         "edge": (edge or {}).get((task, method))})
            losses = curve(START_MSE if adding else START_CE, v if adding else START_CE * v / 0.9,  # chance: 90% error
                           converged=not bad & set(unconverged))
            if div:
                losses[-1] = math.inf
            curves[run] = [{"epoch": k, "step": 100 * k, "train_loss": x, "test": x} for k, x in enumerate(losses)]
    return Records(PathSGDRNNExperiment.quick(), rows, curves)


def seeds(mean: float, spread: float, n: int = 5) -> list[float]:
    return [mean + spread * (k - (n - 1) / 2) / n for k in range(n)]


PAPER_ADDING = {("adding T=750", "rnn-path"): seeds(0.0015, 0.0005), ("adding T=750", "irnn-sgd"): seeds(0.167, 0.004)}


def verdict(claim: str, records: Records) -> tuple[str, str]:
    out = CLAIM[claim].test(records)
    return out.verdict, out.why


def test_adding_paper_outcome_holds_and_its_opposite_fails():
    assert verdict("adding-solved", build(PAPER_ADDING))[0] == HOLDS  # the baseline failing to learn is the point
    swapped = {("adding T=750", "rnn-path"): seeds(0.167, 0.004), ("adding T=750", "irnn-sgd"): seeds(0.0015, 0.0005)}
    assert verdict("adding-solved", build(swapped))[0] == FAILS


def test_adding_noise_is_inconclusive():
    noisy = {("adding T=100", "rnn-path"): [0.004, 0.03, 0.012], ("adding T=100", "irnn-sgd"): [0.16, 0.17, 0.165]}
    v, why = verdict("adding-solved", build(noisy))
    assert v == INCONCLUSIVE and "seeds" in why


@pytest.mark.parametrize("spoil", [
    {"diverged": (("adding T=750", "rnn-path", 2),)},
    {"unconverged": (("adding T=750", "rnn-path"),)},  # still falling, above the solved threshold
    {"edge": {("adding T=750", "rnn-path"): "high"}},
    {"diverged": (("adding T=750", "irnn-sgd", 0),)},
])
def test_adding_gated_runs_are_untestable(spoil):
    base = dict(PAPER_ADDING)
    if "unconverged" in spoil:
        base[("adding T=750", "rnn-path")] = seeds(0.1, 0.01)
    v, why = verdict("adding-solved", build(base, **spoil))
    assert v == UNTESTABLE and "seed" in why


def test_adding_baseline_edge_gates_only_when_it_learned():
    edge = {("adding T=750", "irnn-sgd"): "low"}
    assert verdict("adding-solved", build(PAPER_ADDING, edge=edge))[0] == HOLDS
    learned = {**PAPER_ADDING, ("adding T=750", "irnn-sgd"): seeds(0.02, 0.004)}
    v, why = verdict("adding-solved", build(learned, edge=edge))
    assert v == UNTESTABLE and "irnn-sgd" in why and "edge" in why


def test_adding_untestable_when_not_run():
    assert verdict("adding-solved", build({("adding T=20", "rnn-path"): [0.001, 0.002]}))[0] == UNTESTABLE


K = ("adding T=20", "rnn-path"), ("adding T=20", "rnn-path-k12")


def test_kappa2_equivalence():
    same = {K[0]: seeds(0.0015, 0.0004), K[1]: seeds(0.0013, 0.0004)}  # k12 better in every seed, by 0.0002
    assert verdict("kappa2-negligible", build(same))[0] == HOLDS
    far = {K[0]: seeds(0.08, 0.004), K[1]: seeds(0.0015, 0.0004)}  # k12 better by 0.08 > margin 0.01
    assert verdict("kappa2-negligible", build(far))[0] == FAILS
    noisy = {K[0]: [0.001, 0.03, 0.004], K[1]: [0.012, 0.002, 0.02]}
    v, why = verdict("kappa2-negligible", build(noisy))
    assert v == INCONCLUSIVE and "margin" in why
    v, why = verdict("kappa2-negligible", build({K[0]: seeds(0.1, 0.01), K[1]: seeds(0.1, 0.01)},
                                                unconverged=(K[1],)))
    assert v == UNTESTABLE and "rnn-path-k12" in why
    assert verdict("kappa2-negligible", build(PAPER_ADDING))[0] == UNTESTABLE  # kappa2 not run


S = ("seq-mnist1d", "rnn-path"), ("seq-mnist1d", "irnn-sgd")


def test_sequential_verdicts():
    assert verdict("sequential", build({S[0]: seeds(0.03, 0.004), S[1]: seeds(0.06, 0.004)}))[0] == HOLDS
    assert verdict("sequential", build({S[0]: seeds(0.06, 0.004), S[1]: seeds(0.03, 0.004)}))[0] == FAILS
    v, why = verdict("sequential", build({S[0]: [0.03, 0.06, 0.045], S[1]: [0.05, 0.04, 0.047]}))
    assert v == INCONCLUSIVE and why
    # the baseline did not learn (cross-entropy barely below its start): no comparison
    v, why = verdict("sequential", build({S[0]: seeds(0.03, 0.004), S[1]: seeds(0.8, 0.004)},
                                         unconverged=(S[1],)))
    assert v == UNTESTABLE and "irnn-sgd" in why
    assert verdict("sequential", build(PAPER_ADDING))[0] == UNTESTABLE  # no pixel-by-pixel task run


def test_adding_neither_learned_is_untestable():
    stuck = {("adding T=750", "rnn-path"): seeds(0.167, 0.004), ("adding T=750", "irnn-sgd"): seeds(0.168, 0.004)}
    v, why = verdict("adding-solved", build(stuck))
    assert v == UNTESTABLE and "trivial plateau" in why
