"""Grid selection on validation scores and the grid-edge extension rule.

References: hand-made score functions whose best value is known (inside, past an edge, past the limit).
"""

from __future__ import annotations

import math

import pytest

from geomopt.sweep import Grid, select_grids
from geomopt.sweep.select import extend


def scorer(fn, seeds=(0, 1, 2), log=None):
    """A ``run`` for select_grids: validation loss ``fn(key, value) + 0.01 * seed``; records every call."""
    calls = [] if log is None else log

    def run(pairs):
        calls.append(sorted(pairs, key=str))
        return {(k, v): [fn(k, v) + 0.01 * s for s in seeds] for k, v in pairs}
    return run, calls


def test_inside_the_grid_no_extension():
    run, calls = scorer(lambda k, v: (math.log10(v) + 2) ** 2)  # minimum at 0.01
    sel = select_grids({"a": Grid((0.001, 0.01, 0.1))}, run)["a"]
    assert sel.value == 0.01 and sel.edge is None and sel.extended == () and len(calls) == 1
    assert sel.scores[0.01].mean == pytest.approx(0.01) and sel.scores[0.01].n == 3


def test_edge_is_extended_geometrically_until_inside():
    run, calls = scorer(lambda k, v: (math.log10(v) - math.log10(0.9)) ** 2)  # minimum at 0.9
    sel = select_grids({"a": Grid((0.01, 0.03, 0.1, 0.3), max_steps=3)}, run)["a"]
    # 0.3 is best -> 0.3^2/0.1 = 0.9 -> best at the new edge -> 0.9^2/0.3 = 2.7 -> 0.9 inside
    assert sel.extended == (0.9, 2.7) and sel.value == 0.9 and sel.edge is None and sel.label == "0.9 (grid extended)"
    assert [c for c in calls[1:]] == [[("a", 0.9)], [("a", 2.7)]]


def test_edge_past_the_limit_is_reported():
    run, _ = scorer(lambda k, v: -v)  # always better higher
    sel = select_grids({"a": Grid((1.0, 2.0), max_steps=2)}, run)["a"]
    assert sel.grid == (1.0, 2.0, 4.0, 8.0) and sel.value == 8.0 and sel.edge == "high"
    assert "high edge" in sel.note and "2 step(s)" in sel.note and sel.label == "8 (high edge)"


def test_low_edge_linear_grid_and_bounds():
    run, _ = scorer(lambda k, v: v)  # always better lower
    sel = select_grids({"m": Grid((0.5, 0.7, 0.9), log=False, low=0.2, name="momentum")}, run)["m"]
    assert sel.grid == pytest.approx((0.3, 0.5, 0.7, 0.9)) and sel.edge == "low"  # 0.1 would pass the bound 0.2
    sel = select_grids({"m": Grid((0.5, 0.7, 0.9), log=False, max_steps=0)}, run)["m"]
    assert sel.extended == () and sel.edge == "low"


def test_problems_share_rounds_and_accuracy_is_maximized():
    run, calls = scorer(lambda k, v: v if k == "up" else -abs(v - 0.1))
    sels = select_grids({"up": Grid((0.1, 1.0)), "mid": Grid((0.01, 0.1, 1.0))}, run, minimize=False)
    # maximizing: "up" wants larger values, "mid" peaks at 0.1 (inside)
    assert sels["up"].edge == "high" and sels["up"].value == 100.0 and sels["mid"].value == 0.1
    assert len(calls[0]) == 5 and calls[1] == [("up", 10.0)]


def test_diverged_values_lose_and_fixed_grid_is_not_an_edge():
    run, _ = scorer(lambda k, v: math.inf if v > 0.05 else 1 - v)
    sel = select_grids({"a": Grid((0.01, 0.03, 0.1))}, run)["a"]
    assert sel.value == 0.03 and sel.edge is None
    sel = select_grids({"a": Grid((0.1,))}, run)["a"]
    assert sel.value == 0.1 and sel.edge is None and sel.grid == (0.1,)


def test_errors_are_named():
    with pytest.raises(ValueError, match="positive"):
        Grid((0.0, 1.0))
    with pytest.raises(ValueError, match="outside the limits"):
        Grid((0.5, 1.5), log=False, high=1.0, name="momentum")
    with pytest.raises(ValueError, match="no scores"):
        select_grids({"a": Grid((0.1, 1.0))}, lambda pairs: {})
    with pytest.raises(ValueError, match="direction"):
        extend(Grid((0.1, 1.0)), [0.1, 1.0], "up")


def test_to_dict_is_json():
    import json
    run, _ = scorer(lambda k, v: v)
    sel = select_grids({"a": Grid((0.1, 1.0), max_steps=0)}, run)["a"]
    d = json.loads(json.dumps(sel.to_dict()))
    assert d["value"] == 0.1 and d["edge"] == "low" and d["scores"]["0.1"]["n"] == 3
