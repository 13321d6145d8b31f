"""Hyperparameter selection on validation scores, with the grid-edge extension rule.

Each selection problem is a :class:`Grid` of candidate values (a learning rate, a damping); every
value is run for every seed and scored on validation data carved from the training set (never the
test set). The selected value has the best mean score over seeds. When it lies at an end of the grid,
the grid is extended one step in that direction -- a geometric step (the ratio of the two end values)
for a log grid, an arithmetic one otherwise -- and the new value is run; at most ``max_steps``
extensions per direction and never past ``low`` / ``high``. A selection still at the edge after that
is reported as such (:attr:`Selection.edge`), and a claim resting on it cannot be said to hold.

:func:`select_grids` runs many problems together: each round hands every pending (key, value) pair
to one ``run`` call (one sweep), so extensions of different problems share a pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from geomopt.sweep.stats import SeedStats, seed_stats

__all__ = ["Grid", "Selection", "select_grids", "extend"]


@dataclass(frozen=True)
class Grid:
    """Candidate values of one hyperparameter and how far the edge rule may extend them.

    Attributes:
        values: The initial grid (any order; sorted and deduplicated here). One value is a fixed
            hyperparameter: no selection, never extended.
        log: Geometric steps (values must be positive) instead of arithmetic ones.
        max_steps: Extensions allowed past each end of the initial grid (the stated limit).
        low, high: Values never to go below / above (e.g. a momentum below 1); None: unbounded.
        name: The hyperparameter's name, for messages (e.g. ``"lr"``).
    """

    values: tuple[float, ...]
    log: bool = True
    max_steps: int = 2
    low: float | None = None
    high: float | None = None
    name: str = "lr"

    def __post_init__(self) -> None:
        vals = tuple(sorted({float(v) for v in self.values}))
        if not vals:
            raise ValueError(f"Grid {self.name!r}: no values")
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"Grid {self.name!r}: non-finite value in {list(vals)}")
        if self.log and vals[0] <= 0:
            raise ValueError(f"Grid {self.name!r}: a log grid needs positive values, got {list(vals)}")
        if self.max_steps < 0:
            raise ValueError(f"Grid {self.name!r}: max_steps must be >= 0, got {self.max_steps}")
        if (self.low is not None and vals[0] < self.low) or (self.high is not None and vals[-1] > self.high):
            raise ValueError(f"Grid {self.name!r}: values {list(vals)} outside the limits [{self.low}, {self.high}]")
        object.__setattr__(self, "values", vals)


@dataclass(frozen=True)
class Selection:
    """The outcome of one selection problem.

    Attributes:
        value: The selected value (best mean validation score over seeds).
        scores: Every tried value's validation score over seeds.
        grid: The grid as finally tried (initial values plus extensions), ascending.
        extended: The values the edge rule added.
        edge: ``"low"`` / ``"high"`` when the selected value is still at that end of the final grid
            (the limit was reached), else None.
        name: The hyperparameter's name.
        minimize: Whether lower scores are better.
    """

    value: float
    scores: Mapping[float, SeedStats]
    grid: tuple[float, ...]
    extended: tuple[float, ...] = ()
    edge: str | None = None
    name: str = "lr"
    minimize: bool = True

    @property
    def label(self) -> str:
        """The selected value for a table: ``"0.9 (grid extended)"``, ``"8 (high edge)"`` or ``"0.1"``."""
        if self.edge is not None:
            return f"{self.value:g} ({self.edge} edge)"
        return f"{self.value:g} (grid extended)" if self.value in self.extended else f"{self.value:g}"

    @property
    def note(self) -> str:
        """A short statement of where the selected value lies, e.g. for a verdict's caveats."""
        if self.edge is None:
            where = "inside the grid"
        else:
            where = f"at the {self.edge} edge of the grid after extending it by {len(self.extended)} step(s) (limit)"
        return f"{self.name} {self.value:g} {where} {[float(f'{v:.4g}') for v in self.grid]}"

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "grid": list(self.grid), "extended": list(self.extended),
                "edge": self.edge, "minimize": self.minimize,
                "scores": {f"{v:g}": s.to_dict() for v, s in self.scores.items()}}


def extend(grid: Grid, tried: Sequence[float], direction: str) -> float | None:
    """The next value past the ``direction`` (``"low"``/``"high"``) end of ``tried``, or None at the limit.

    One step is the ratio (log grid) or difference of the two values nearest that end of ``tried``
    (at least two values).
    """
    if direction not in ("low", "high"):
        raise ValueError(f"extend: direction must be 'low' or 'high', got {direction!r}")
    vals = sorted(tried)
    if len(vals) < 2:
        raise ValueError(f"extend: grid {grid.name!r} needs two values to step from, got {vals}")
    initial_end = grid.values[0] if direction == "low" else grid.values[-1]
    outside = [v for v in vals if (v < initial_end if direction == "low" else v > initial_end)]
    if len(outside) >= grid.max_steps:
        return None
    a, b = (vals[0], vals[1]) if direction == "low" else (vals[-1], vals[-2])
    new = float(f"{(a * a / b if grid.log else 2 * a - b):.12g}")  # 0.3 * 0.3 / 0.1 -> 0.9, not 0.8999...
    if (direction == "low" and grid.low is not None and new < grid.low) or \
            (direction == "high" and grid.high is not None and new > grid.high):
        return None
    return new


def _select(scores: Mapping[float, Sequence[float]], minimize: bool) -> tuple[float, dict[float, SeedStats]]:
    stats = {v: seed_stats(scores[v]) for v in sorted(scores)}

    def key(v: float) -> float:
        m = stats[v].mean
        if math.isnan(m):
            return math.inf
        return m if minimize else -m
    best = min(stats, key=key)  # ties: the smaller value
    return best, stats


def _edge(grid: Grid, scores: Mapping[float, Sequence[float]], minimize: bool) -> str | None:
    """``"low"``/``"high"`` when the best of the values tried is at that end of them (a one-value grid is
    a fixed value, never at an edge)."""
    if len(grid.values) < 2:
        return None
    best, _ = _select(scores, minimize)
    tried = sorted(scores)
    return "low" if best == tried[0] else "high" if best == tried[-1] else None


def select_grids(grids: Mapping[Hashable, Grid],
                 run: Callable[[list[tuple[Hashable, float]]], Mapping[tuple[Hashable, float], Sequence[float]]],
                 *, minimize: bool = True) -> dict[Hashable, Selection]:
    """Select a value for every problem in ``grids``, extending grids whose best value is at an edge.

    Args:
        grids: One :class:`Grid` per problem key (e.g. ``(dataset, optimizer)``).
        run: Called once per round with every (key, value) pair still to score; returns, for each pair,
            its validation scores over seeds (a diverged run: ``inf`` when minimizing, ``-inf`` otherwise).
            It may run them in parallel (one sweep per round).
        minimize: Lower scores are better (a loss, an error); False for an accuracy.

    Returns:
        ``{key: Selection}``.

    Raises:
        ValueError: ``run`` did not return scores for a pair it was given.
    """
    scores: dict[Hashable, dict[float, Sequence[float]]] = {k: {} for k in grids}
    pending = [(k, v) for k, g in grids.items() for v in g.values]
    while pending:
        got = run(list(pending))
        for k, v in pending:
            if (k, v) not in got:
                raise ValueError(f"select_grids: run returned no scores for {k!r} at {grids[k].name}={v:g}")
            scores[k][v] = got[k, v]
        pending = []
        for k, g in grids.items():
            direction = _edge(g, scores[k], minimize)
            new = extend(g, list(scores[k]), direction) if direction else None
            if new is not None and new not in scores[k]:
                pending.append((k, new))
    out = {}
    for k, g in grids.items():
        best, stats = _select(scores[k], minimize)
        tried = tuple(sorted(scores[k]))
        out[k] = Selection(value=best, scores=stats, grid=tried, extended=tuple(v for v in tried if v not in g.values),
                           edge=_edge(g, scores[k], minimize), name=g.name, minimize=minimize)
    return out
