"""Kendall tau vs scipy; granulated Kendall on a hand-computed example."""

import math

import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.measures import granulated_kendall, kendall_tau


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(-5, 5)), min_size=3, max_size=25))
def test_kendall_tau_matches_scipy(pairs):
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    ref = scipy.stats.kendalltau(x, y).statistic
    got = kendall_tau(x, y)
    if math.isnan(ref):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(ref, abs=1e-12)


def test_granulated_kendall_hand_example():
    # 2 hyperparameters (lr in {1, 2}, width in {a, b, c}); 6 models.
    hp = [{"lr": lr, "width": w} for lr in (1, 2) for w in ("a", "b", "c")]
    measure = [1, 2, 3, 4, 6, 5]
    gap = [1, 2, 3, 1, 2, 3]
    # lr varies within groups width=a: measures (1,4) gaps (1,1) -> tie in y: tau nan (dropped);
    # width=b: (2,6) vs (2,2) nan; width=c: (3,5) vs (3,3) nan -> m_lr = nan.
    # width varies within lr=1: measure 1,2,3 vs gap 1,2,3 -> 1; lr=2: 4,6,5 vs 1,2,3 -> (1 - 1 + ... ) = 1/3.
    out = granulated_kendall(hp, measure, gap)
    assert math.isnan(out["lr"])
    assert out["width"] == pytest.approx((1 + 1 / 3) / 2)
    assert out["psi"] == pytest.approx((1 + 1 / 3) / 2)


def test_granulated_kendall_both_hparams():
    hp = [{"a": a, "b": b} for a in (0, 1) for b in (0, 1)]
    measure = [0.0, 1.0, 2.0, 3.0]
    gap = [0.0, 1.0, 2.0, 1.5]
    # a varies (b fixed): b=0: (0,2) vs (0,2) -> 1; b=1: (1,3) vs (1,1.5) -> 1  => m_a = 1
    # b varies (a fixed): a=0: (0,1) vs (0,1) -> 1; a=1: (2,3) vs (2,1.5) -> -1 => m_b = 0
    out = granulated_kendall(hp, measure, gap)
    assert out == pytest.approx({"a": 1.0, "b": 0.0, "psi": 0.5})


def test_kendall_errors():
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau([1, 2], [1])
    with pytest.raises(ValueError, match="non-finite"):
        kendall_tau([1, float("nan")], [1, 2])
