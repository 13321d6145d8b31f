"""Kendall tau-a against the double sum of Jiang et al.'s eq. 3 and hand tables with ties; tau-b vs scipy;
granulated Kendall (eq. 4) on hand-computed tables; the bootstrap interval vs resampling by hand."""

import math

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.measures import bootstrap_kendall, granulated_kendall, kendall_tau


def _sign(v):
    return (v > 0) - (v < 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=2, max_size=20))
def test_kendall_tau_a_is_eq3_double_sum(pairs):
    # Jiang et al. eq. 3: 1/(|T|(|T|-1)) sum over ordered pairs i != j of sign(x_i - x_j) sign(y_i - y_j).
    n = len(pairs)
    ref = sum(_sign(a[0] - b[0]) * _sign(a[1] - b[1]) for i, a in enumerate(pairs) for j, b in enumerate(pairs)
              if i != j) / (n * (n - 1))
    assert kendall_tau([p[0] for p in pairs], [p[1] for p in pairs]) == pytest.approx(ref, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(-5, 5)), min_size=3, max_size=25))
def test_kendall_tau_b_matches_scipy(pairs):
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    ref = scipy.stats.kendalltau(x, y).statistic
    got = kendall_tau(x, y, variant="b")
    if math.isnan(ref):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(ref, abs=1e-12)


def test_kendall_tau_hand_table_with_ties():
    # x = 1 1 2 3, y = 1 2 2 3: of the 6 pairs, (0,1) ties in x and (1,2) ties in y; the other 4 concordant.
    x, y = [1, 1, 2, 3], [1, 2, 2, 3]
    assert kendall_tau(x, y) == pytest.approx(4 / 6)                       # tau-a: S / n0
    assert kendall_tau(x, y, variant="b") == pytest.approx(4 / 5)          # tau-b: S / sqrt(5 * 5)
    # a constant gap: tau-a is 0 (no pair is concordant), tau-b undefined
    assert kendall_tau([1, 2, 3], [0, 0, 0]) == 0.0
    assert math.isnan(kendall_tau([1, 2, 3], [0, 0, 0], variant="b"))


def test_granulated_kendall_hand_table_with_ties():
    # 2 hyperparameters (lr in {1, 2}, width in {a, b, c}); 6 models.
    hp = [{"lr": lr, "width": w} for lr in (1, 2) for w in ("a", "b", "c")]
    measure = [1, 2, 3, 4, 6, 5]
    gap = [1, 2, 3, 1, 2, 3]
    # lr varies within groups width=a: measures (1,4) gaps (1,1): the one pair ties in the gap -> tau-a 0;
    # the same for width=b and width=c -> m_lr = 0 (tau-b: every group NaN, dropped -> m_lr NaN).
    # width varies within lr=1: 1,2,3 vs 1,2,3 -> 3/3 = 1; lr=2: 4,6,5 vs 1,2,3 -> (2 - 1)/3 = 1/3.
    out = granulated_kendall(hp, measure, gap)
    assert out == pytest.approx({"lr": 0.0, "width": 2 / 3, "psi": 1 / 3})
    out_b = granulated_kendall(hp, measure, gap, variant="b")
    assert math.isnan(out_b["lr"])
    assert out_b["width"] == pytest.approx(2 / 3)
    assert out_b["psi"] == pytest.approx(2 / 3)


def test_granulated_kendall_ties_inside_groups():
    # a in {0, 1, 2}, b in {0, 1}. Measure ties inside the a-groups.
    hp = [{"a": a, "b": b} for b in (0, 1) for a in (0, 1, 2)]
    measure = [1, 1, 2, 5, 6, 6]
    gap = [0.1, 0.2, 0.3, 0.3, 0.1, 0.2]
    # a varies, b=0: measure 1,1,2 gap .1,.2,.3: pairs (0,1) tie, (0,2) +, (1,2) + -> tau-a 2/3, tau-b 2/sqrt(2*3)
    #          b=1: measure 5,6,6 gap .3,.1,.2: (0,1) -, (0,2) -, (1,2) tie -> tau-a -2/3, tau-b -2/sqrt(6)
    #  -> m_a = 0 under both.
    # b varies, a=0: (1,5) vs (.1,.3) +1; a=1: (1,6) vs (.2,.1) -1; a=2: (2,6) vs (.3,.2) -1 -> m_b = -1/3.
    out = granulated_kendall(hp, measure, gap)
    assert out == pytest.approx({"a": 0.0, "b": -1 / 3, "psi": -1 / 6})
    # with one a-group's gap constant, tau-a keeps the group (0), tau-b drops it
    gap2 = [0.1, 0.2, 0.3, 0.2, 0.2, 0.2]
    # b varies now: a=0: (1,5) vs (.1,.2) +1; a=1: (1,6) vs (.2,.2) 0; a=2: (2,6) vs (.3,.2) -1 -> m_b = 0
    out = granulated_kendall(hp, measure, gap2)
    assert out == pytest.approx({"a": (2 / 3 + 0) / 2, "b": 0.0, "psi": 1 / 6})
    out_b = granulated_kendall(hp, measure, gap2, variant="b")
    assert out_b == pytest.approx({"a": 2 / math.sqrt(6), "b": 0.0, "psi": 1 / math.sqrt(6)})


def test_granulated_kendall_both_hparams():
    hp = [{"a": a, "b": b} for a in (0, 1) for b in (0, 1)]
    measure = [0.0, 1.0, 2.0, 3.0]
    gap = [0.0, 1.0, 2.0, 1.5]
    # a varies (b fixed): b=0: (0,2) vs (0,2) -> 1; b=1: (1,3) vs (1,1.5) -> 1  => m_a = 1
    # b varies (a fixed): a=0: (0,1) vs (0,1) -> 1; a=1: (2,3) vs (2,1.5) -> -1 => m_b = 0
    for variant in ("a", "b"):
        assert granulated_kendall(hp, measure, gap, variant) == pytest.approx({"a": 1.0, "b": 0.0, "psi": 0.5})


def test_kendall_errors():
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau([1, 2], [1])
    with pytest.raises(ValueError, match="non-finite"):
        kendall_tau([1, float("nan")], [1, 2])
    with pytest.raises(ValueError, match="variant"):
        kendall_tau([1, 2], [1, 2], variant="c")
    with pytest.raises(ValueError, match="variant"):
        granulated_kendall([{"a": 1}], [1.0], [1.0], variant="tau-b")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.floats(-1, 1)), min_size=2, max_size=12), st.integers(0, 2**16),
       st.sampled_from(["a", "b"]))
def test_bootstrap_kendall_matches_resampling_by_hand(pairs, seed, variant):
    """The same resamples (same generator draws), each tau by kendall_tau on the resampled lists (ties from
    repeated models and tied values included); NaN (constant, tau-b) resamples dropped; 2.5/97.5% quantiles."""
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    n, samples = len(x), 60
    idx = torch.randint(n, (samples, n), generator=torch.Generator().manual_seed(seed))
    taus = [kendall_tau([x[i] for i in row], [y[i] for i in row], variant) for row in idx.tolist()]
    taus = torch.tensor([t for t in taus if not math.isnan(t)], dtype=torch.float64)
    lo, hi = bootstrap_kendall(x, y, variant, samples=samples, seed=seed)
    if taus.numel() == 0:
        assert math.isnan(lo) and math.isnan(hi)
    else:
        ref = torch.quantile(taus, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        assert (lo, hi) == pytest.approx(ref, abs=1e-12)
        assert bootstrap_kendall(x, y, variant, samples=samples, seed=seed) == (lo, hi)  # seeded
