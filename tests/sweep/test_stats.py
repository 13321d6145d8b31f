"""Mean and 95% t-interval over seeds.

References: hand-computed cases (t table values), scipy.stats.t (quantiles and intervals).
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.sweep import band, seed_stats, t_quantile


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 6, 7, 10, 19, 30, 57, 200])
@pytest.mark.parametrize("p", [0.5, 0.75, 0.9, 0.975, 0.995])
def test_t_quantile_matches_scipy(df, p):
    assert t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-10, abs=1e-12)


def test_hand_computed_intervals():
    # two seeds 0, 2: mean 1, s = sqrt(2), se = 1, t(0.975, 1) = 12.7062 (table)
    s = seed_stats([0.0, 2.0])
    assert (s.mean, s.n) == (1.0, 2) and s.std == pytest.approx(math.sqrt(2))
    assert s.low == pytest.approx(1 - 12.7062, abs=1e-4) and s.high == pytest.approx(1 + 12.7062, abs=1e-4)
    # three seeds 1, 2, 3: mean 2, s = 1, se = 1/sqrt(3), t(0.975, 2) = 4.3027
    s = seed_stats([3.0, 1.0, 2.0])
    assert s.half_width == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    # identical values: a zero-width interval
    s = seed_stats([0.5] * 5)
    assert (s.low, s.mean, s.high, s.std) == (0.5, 0.5, 0.5, 0.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=12), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_interval_matches_scipy(values, confidence):
    s = seed_stats(values, confidence)
    mean = sum(values) / len(values)
    sem = scipy.stats.sem(values)
    if sem == 0:
        assert s.low == s.high == pytest.approx(mean)
        return
    low, high = scipy.stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    assert s.low == pytest.approx(low, rel=1e-9, abs=1e-9) and s.high == pytest.approx(high, rel=1e-9, abs=1e-9)


def test_one_seed_and_nonfinite_values():
    s = seed_stats([0.3])
    assert (s.low, s.high) == (0.3, 0.3) and math.isnan(s.std) and s.fmt() == "0.3 (1 seed)"
    s = seed_stats([0.1, math.inf])  # a diverged run: infinite mean, no interval
    assert s.mean == math.inf and (s.low, s.high) == (-math.inf, math.inf)
    assert math.isnan(seed_stats([math.inf, -math.inf]).mean)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no values"):
        seed_stats([])
    with pytest.raises(ValueError, match="NaN"):
        seed_stats([1.0, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        seed_stats([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="df"):
        t_quantile(0.9, 0)
    with pytest.raises(ValueError, match="different lengths"):
        band([[1.0, 2.0], [1.0]])


def test_band_is_pointwise():
    mean, low, high = band([[0.0, 1.0], [2.0, 1.0]])
    assert mean == [1.0, 1.0] and high[1] == low[1] == 1.0
    assert high[0] == pytest.approx(1 + 12.7062, abs=1e-4)


def test_fmt():
    assert seed_stats([0.01, 0.03]).fmt(scale=100, digits=2) == "2 [-11, 15]"


def test_fmt_clips_the_interval_to_the_quantity_range():
    s = seed_stats([0.01, 0.0, 0.05])
    assert s.low < 0
    text = s.fmt(100, bounds=(0, 1))
    assert text.startswith("2 [0, ") and "-" not in text
    assert "-" in s.fmt(100)
