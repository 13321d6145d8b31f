"""The verdict rules: four verdicts decided symmetrically, gates, equivalence, hierarchical intervals."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.sweep import (FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE, Claim, Outcome, RunGate, all_of, equivalent,
                           gated, greater, hierarchical_interval, less, read_claims, untestable, write_claims)
from geomopt.sweep.stats import seed_stats


def test_less_holds_only_with_every_seed_and_the_interval():
    assert less([1.0, 1.1, 0.9], [2.0, 2.1, 2.0]).verdict == HOLDS
    assert less([1.0], [2.0]).verdict == INCONCLUSIVE  # one seed decides nothing, either way
    assert less([3.0], [2.0]).verdict == INCONCLUSIVE
    mixed = less([1.0, 2.5, 1.0], [2.0, 2.0, 2.0])
    assert mixed.verdict == INCONCLUSIVE and "seeds" in mixed.why and "disagree" in mixed.why


def test_fails_needs_the_same_evidence_as_holds():
    """Swapping the sides turns holds into fails and inconclusive into inconclusive: the rule is symmetric."""
    a, b = [1.0, 1.1, 0.9], [2.0, 2.1, 2.0]
    assert less(b, a).verdict == FAILS
    assert greater(a, b).verdict == FAILS and greater(b, a).verdict == HOLDS
    # every seed on the opposite side but a wide interval: inconclusive, not fails
    wide = less([2.1, 2.01, 6.0], [2.0, 2.0, 2.0])
    assert wide.verdict == INCONCLUSIVE and "would decide it" in wide.why


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=6), st.floats(-5, 5))
def test_symmetry_property(d, shift):
    """For any per-seed differences, the claim a < b and its mirror a > b get mirrored verdicts."""
    a = [shift + x for x in d]
    b = [shift] * len(d)
    mirror = {HOLDS: FAILS, FAILS: HOLDS, INCONCLUSIVE: INCONCLUSIVE}
    assert greater(a, b).verdict == mirror[less(a, b).verdict]
    assert greater(b, a).verdict == less(a, b).verdict


def test_inconclusive_says_how_many_seeds_would_decide():
    out = less([1.0, 1.4, 0.7], [1.5, 1.2, 1.6])  # mean -0.13, sd ~0.47 over 3 seeds
    assert out.verdict == INCONCLUSIVE
    assert "about" in out.why and "seeds would decide it" in out.why and "detect" in out.why


def test_non_finite_is_untestable_not_a_verdict():
    out = less([math.inf, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert out.verdict == UNTESTABLE and "diverged" in out.why
    with pytest.raises(ValueError, match="NaN"):
        less([math.nan, 1.0], [2.0, 2.0])
    with pytest.raises(ValueError, match="pair them by seed"):
        less([1.0, 2.0], [1.0])


def test_equivalence_by_two_one_sided_tests():
    assert equivalent([1.00, 1.01, 0.99, 1.0], [1.0, 1.0, 1.0, 1.0], margin=0.05).verdict == HOLDS
    assert equivalent([1.5, 1.6, 1.55], [1.0, 1.0, 1.0], margin=0.1).verdict == FAILS
    assert equivalent([0.5, 0.4, 0.45], [1.0, 1.0, 1.0], margin=0.1).verdict == FAILS
    noisy = equivalent([1.0, 1.2, 0.85], [1.0, 1.0, 1.0], margin=0.1)
    assert noisy.verdict == INCONCLUSIVE and noisy.why
    # a mean difference of 0 with 2 of 3 seeds on one side is not "no difference" unless inside the margin
    assert equivalent([0.9, 1.1, 1.0], [1.0, 1.0, 1.0], margin=0.05).verdict == INCONCLUSIVE
    with pytest.raises(ValueError, match="margin"):
        equivalent([1.0, 1.0], [1.0, 1.0], margin=0)


def test_equivalence_90_percent_interval_matches_t_quantile():
    d = [0.01, -0.02, 0.03, 0.0, 0.01]
    s = seed_stats(d, 0.90)
    out = equivalent(d, 0.0, margin=0.1)
    assert out.numbers["low90"] == pytest.approx(s.low) and out.numbers["high90"] == pytest.approx(s.high)


def test_hierarchical_interval_widens_with_within_seed_uncertainty():
    """Per-seed taus 0.3, 0.35, 0.4 look decisive; with each seed's bootstrap spread across 0 they are not."""
    tight = [[t] for t in (0.3, 0.35, 0.4)]
    loose = [[t + u for u in (-0.6, -0.3, 0.0, 0.3, 0.6)] for t in (0.3, 0.35, 0.4)]
    lo_t, hi_t = hierarchical_interval(tight)
    lo_l, hi_l = hierarchical_interval(loose)
    assert lo_l < lo_t and hi_l > hi_t and lo_l < 0 < hi_l
    assert hierarchical_interval(loose) == (lo_l, hi_l)  # seeded
    assert greater([0.3, 0.35, 0.4], 0.0).verdict == HOLDS
    assert greater([0.3, 0.35, 0.4], 0.0, within=loose).verdict == INCONCLUSIVE
    with pytest.raises(ValueError, match="within-seed draw"):
        hierarchical_interval([[0.1], []])


def test_hierarchical_interval_of_constant_draws_is_the_mean():
    lo, hi = hierarchical_interval([[2.0, 2.0], [2.0]])
    assert lo == hi == 2.0


def test_all_of_gets_what_every_part_supports():
    h, f = less([1, 1.1], [2, 2.1]), less([3, 3.1], [2, 2.1])
    i = less([1.0, 2.5, 1.0], [2.0, 2.0, 2.0])
    u = untestable("not run")
    assert all_of({"a": h, "b": h}).verdict == HOLDS
    assert all_of({"a": h, "b": f}).verdict == FAILS
    assert all_of({"a": h, "b": i, "c": u}).verdict == UNTESTABLE
    mixed = all_of({"a": h, "b": i})
    assert mixed.verdict == INCONCLUSIVE and mixed.why.startswith("b:")
    assert "(holds)" in mixed.ours and "(inconclusive)" in mixed.ours
    with pytest.raises(ValueError):
        all_of({})


def test_gates_turn_holds_and_fails_alike_into_untestable():
    for out in (less([1, 1.1], [2, 2.1]), less([3, 3.1], [2, 2.1])):
        g = gated(out, ["sgd lr 0.3 seed 1: diverged", ""])
        assert g.verdict == UNTESTABLE and "diverged" in g.why
        assert g.numbers["verdict_without_gates"] == out.verdict
        assert gated(out, []) is out


def test_run_gate():
    gate = RunGate(drop=0.5, rebound=0.5, plateau=0.05, window=2)
    assert gate.check([2.3, 1.0, 0.5, 0.49, 0.488], "run") == ""
    assert "not converged" in gate.check([2.3, 2.0, 1.9, 1.9], "run")
    assert "unstable" in gate.check([2.3, 0.2, 0.1, 0.9], "run")
    assert "diverged" in gate.check([2.3, math.inf], "run")
    assert "not plateaued" in gate.check([2.3, 1.0, 0.8, 0.6], "run")
    assert RunGate().check([2.3, 1.0, 0.8, 0.6], "run") == ""


def test_run_gate_judges_the_excess_over_a_loss_floor():
    gate = RunGate(drop=0.5, rebound=0.5, plateau=0.05, window=2)
    curve = [540.0, 320.0, 300.0, 299.0, 298.5]  # above half its start, but its excess over 250 fell 290 -> 48.5
    assert "not converged" in gate.check(curve, "run") and gate.check(curve, "run", floor=250.0) == ""
    assert gate.check(curve, "run", floor=0.0) == gate.check(curve, "run")
    # relative to the excess, the same late rise is an instability and the same last fall is no plateau
    assert "unstable" in RunGate().check([540.0, 200.0, 230.0], "run", floor=190.0)
    assert RunGate().check([540.0, 200.0, 230.0], "run") == ""
    assert "not plateaued" in RunGate(plateau=0.05, window=2).check([540.0, 300.0, 280.0, 270.0], "run", floor=250.0)
    assert "above its floor 250" in gate.check([540.0, 500.0, 480.0], "run", floor=250.0)
    for bad in (540.0, 600.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="loss floor"):
            gate.check(curve, "run", floor=bad)


def test_outcome_validates():
    with pytest.raises(ValueError, match="verdict"):
        Outcome("partly", "x")
    with pytest.raises(ValueError, match="say why"):
        Outcome(INCONCLUSIVE, "x")


def test_write_and_read_claims(tmp_path):
    claims = [Claim("a", "A is lower", "Someone 2015", "Fig. 1", "1.0 vs 2.0", lambda r: less(r["a"], r["b"])),
              Claim("b", "B", "Someone 2015", "Tab. 1", "n/a",
                    lambda r: Outcome(HOLDS, "x", seeds=(7, 8)))]
    path = write_claims(tmp_path, "exp", claims, {"a": [1.0, 1.1], "b": [2.0, 2.1]}, title="T", seeds=[0, 1],
                        seconds=3.0, tier="mid")
    record = json.loads(path.read_text())
    assert record["tier"] == "mid" and record["counts"] == {HOLDS: 2, FAILS: 0, INCONCLUSIVE: 0, UNTESTABLE: 0}
    assert record["claims"][0]["seeds"] == [0, 1] and record["claims"][1]["seeds"] == [7, 8]
    [(read, folder)] = read_claims(tmp_path)
    assert read == record and folder == tmp_path
    with pytest.raises(ValueError, match="duplicate"):
        write_claims(tmp_path, "exp", claims + claims[:1], {"a": [1.0, 1.1], "b": [2.0, 2.1]}, title="T",
                     seeds=[0, 1], seconds=0.0, tier="quick")
