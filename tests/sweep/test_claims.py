"""Claims as data: a claim holds only when it holds across seeds.

References: hand-made per-seed numbers whose verdict is known (every seed agrees with an interval
excluding the opposite; one seed disagrees; one seed only; diverged runs).
"""

from __future__ import annotations

import json
import math

import pytest

from geomopt.sweep import FAILS, HOLDS, PARTLY, Claim, Outcome, all_of, greater, less, read_claims, write_claims


def test_less_holds_only_across_seeds():
    assert less([0.10, 0.11, 0.12], [0.20, 0.22, 0.21]).verdict == HOLDS
    # holds in one seed, fails in another: not reported as holding
    assert less([0.10, 0.30], [0.20, 0.20]).verdict == PARTLY
    # every seed agrees but the interval of the mean difference includes 0 (n = 2, t = 12.7)
    assert less([0.10, 0.10], [0.11, 0.30]).verdict == PARTLY
    # one large outlier keeps the interval below 0 while one seed disagrees: still not holding
    out = less([0.0] * 5 + [0.11], [10.0] * 5 + [0.1])
    assert out.numbers["difference"]["high"] < 0 and out.verdict == PARTLY
    # one seed never makes a claim hold
    assert less([0.1], [0.2]).verdict == PARTLY
    assert less([0.3, 0.3], [0.2, 0.2]).verdict == FAILS
    assert less([0.1, 0.4, 0.3], [0.2, 0.2, 0.2]).verdict == FAILS  # mean difference >= 0


def test_greater_and_numbers():
    out = greater([0.9, 0.95, 0.93], 0.5, label="acc - chance")
    assert out.verdict == HOLDS and out.numbers["seeds_agreeing"] == 3
    assert out.numbers["difference"]["mean"] == pytest.approx(0.4266666, rel=1e-5)
    assert out.ours.startswith("acc - chance = 0.427 [") and "> 0 in 3/3 seeds" in out.ours
    assert greater([0.4, 0.7], 0.5).verdict == PARTLY  # one seed each way, mean difference > 0
    assert greater([0.4, 0.6], 0.5).verdict == FAILS  # mean difference 0
    json.dumps(out.numbers)


def test_diverged_runs():
    # the baseline diverged in every seed: the method is better in all of them
    assert less([0.1, 0.2], [math.inf, math.inf]).verdict == HOLDS
    assert less([math.inf, 0.1], [0.2, 0.2]).verdict in (PARTLY, FAILS)
    assert less([math.inf, math.inf], [math.inf, math.inf]).verdict == FAILS  # both diverged: ties
    with pytest.raises(ValueError, match="NaN"):
        less([math.nan, 0.1], [0.2, 0.2])
    with pytest.raises(ValueError, match="pair them"):
        less([0.1, 0.2], [0.3])


def test_all_of_and_caveats():
    h, p, f = Outcome(HOLDS, "h"), Outcome(PARTLY, "p"), Outcome(FAILS, "f")
    assert all_of({"a": h, "b": h}).verdict == HOLDS
    assert all_of({"a": h, "b": f}).verdict == PARTLY
    assert all_of({"a": f, "b": f}).verdict == FAILS
    assert all_of({"a": p}).verdict == PARTLY
    combined = all_of({"mnist": h.with_caveats("lr at the high edge"), "cifar": h})
    assert combined.caveats == ("mnist: lr at the high edge",) and combined.ours.startswith("holds in 2/2")
    claim = Claim("c", "text", "paper", "Fig. 1", "1.6%", lambda r: combined)
    assert claim.evaluate(None)["verdict"] == PARTLY  # a caveat turns holds into partly
    with pytest.raises(ValueError, match="verdict"):
        Outcome("maybe", "x")


def test_write_and_read_claims(tmp_path):
    claims = [Claim("lower-loss", "A reaches lower loss than B", "Someone 2015", "Fig. 2", "0.01 vs 0.05",
                    lambda r: less(r["a"], r["b"], label="A - B loss")),
              Claim("one-seed-flip", "A beats B in accuracy", "Someone 2015", "Tab. 1", "98% vs 97%",
                    lambda r: greater(r["acc_a"], r["acc_b"]))]
    results = {"a": [0.01, 0.02, 0.015], "b": [0.05, 0.06, 0.055], "acc_a": [0.99, 0.95, 0.98], "acc_b": [0.97, 0.97, 0.96]}
    path = write_claims(tmp_path / "exp", "demo", claims, results, title="Demo", seeds=[0, 1, 2], seconds=12.5, quick=True)
    record = json.loads(path.read_text())
    assert [c["verdict"] for c in record["claims"]] == [HOLDS, PARTLY]
    assert record["seeds"] == [0, 1, 2] and record["seconds"] == 12.5 and record["claims"][0]["published"] == "0.01 vs 0.05"
    ((found, folder),) = read_claims(tmp_path)
    assert found == record and folder == tmp_path / "exp"
    with pytest.raises(ValueError, match="duplicate"):
        write_claims(tmp_path, "demo", claims[:1] * 2, results, title="Demo", seeds=[0], seconds=0, quick=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "claims.json").write_text("[1]")
    with pytest.raises(ValueError, match="not a claims record"):
        read_claims(tmp_path)
    with pytest.raises(TypeError, match="expected an Outcome"):
        Claim("x", "", "", "", "", lambda r: HOLDS).evaluate(None)
