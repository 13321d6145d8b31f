"""Claims as data: what a paper says, its published number, and a test of it over multi-seed results.

An experiment declares its claims as :class:`Claim` objects (usually a module-level ``CLAIMS`` list).
Each has the claim's text, the paper and its figure or table, the published number, and ``test``:
a function of the experiment's multi-seed results returning an :class:`Outcome` -- the verdict
(``holds`` / ``partly`` / ``does not hold`` at this scale), our number as short text, the numbers
behind it, and caveats. The helpers :func:`less`, :func:`greater` and :func:`all_of` build outcomes
so that a claim holds only when it holds across seeds: in every seed AND with the 95% interval of
the mean difference excluding the opposite. One seed never makes a claim hold. A caveat (a selected
hyperparameter still at its grid's edge, a run that did not converge) turns ``holds`` into ``partly``.

:func:`write_claims` evaluates the claims and writes ``claims.json`` beside the experiment's
``section.json``; the report's scoreboard reads every ``claims.json`` under a runs folder
(:func:`read_claims`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.sweep.stats import seed_stats
from geomopt.train.checkpoint import find_json, write_json

__all__ = ["HOLDS", "PARTLY", "FAILS", "VERDICTS", "CLAIMS_FILE", "Claim", "Outcome", "less", "greater", "all_of",
           "evaluate_claims", "write_claims", "read_claims"]

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"
VERDICTS = (HOLDS, PARTLY, FAILS)
CLAIMS_FILE = "claims.json"


@dataclass(frozen=True)
class Outcome:
    """The result of testing one claim.

    Attributes:
        verdict: One of ``VERDICTS`` (``"does not hold"`` means: at this scale, with these numbers).
        ours: Our number as short text for the scoreboard, e.g. ``"-0.12 [-0.2, -0.05], 3/3 seeds"``.
        numbers: The numbers behind the verdict (JSON-serializable).
        caveats: Reasons the verdict is weaker than it looks; any caveat turns ``holds`` into ``partly``.
    """

    verdict: str
    ours: str
    numbers: dict[str, Any] = field(default_factory=dict)
    caveats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Outcome: verdict must be one of {VERDICTS}, got {self.verdict!r}")
        object.__setattr__(self, "caveats", tuple(self.caveats))

    def with_caveats(self, *caveats: str) -> Outcome:
        """This outcome with more caveats (empty strings ignored)."""
        return Outcome(self.verdict, self.ours, self.numbers, self.caveats + tuple(c for c in caveats if c))


@dataclass(frozen=True)
class Claim:
    """One claim of a paper and its test.

    Attributes:
        id: Short identifier, unique within the experiment (e.g. ``"faster-than-sgd"``).
        text: The claim in one sentence.
        paper: The paper (e.g. ``"Neyshabur, Salakhutdinov & Srebro 2015"``).
        where: Its figure or table (e.g. ``"Fig. 2"``).
        published: The published number, as text (e.g. ``"test error 1.6% vs 1.9% (MNIST)"``).
        test: ``test(results) -> Outcome`` over the experiment's multi-seed results.
    """

    id: str
    text: str
    paper: str
    where: str
    published: str
    test: Callable[[Any], Outcome]

    def evaluate(self, results: Any) -> dict[str, Any]:
        """The claim's record: its fields and the outcome of ``test(results)`` (caveats applied)."""
        outcome = self.test(results)
        if not isinstance(outcome, Outcome):
            raise TypeError(f"claim {self.id!r}: test returned {type(outcome).__name__}, expected an Outcome")
        verdict = PARTLY if outcome.verdict == HOLDS and outcome.caveats else outcome.verdict
        return {"id": self.id, "text": self.text, "paper": self.paper, "where": self.where,
                "published": self.published, "verdict": verdict, "ours": outcome.ours,
                "numbers": outcome.numbers, "caveats": list(outcome.caveats)}


def _paired(a: float | Sequence[float], b: float | Sequence[float], label: str) -> tuple[list[float], list[float]]:
    """Per-seed values of both sides (a number stands for the same value in every seed)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        raise ValueError(f"{label}: per-seed values expected for at least one side, got two numbers")
    n = len(b) if isinstance(a, (int, float)) else len(a)  # type: ignore[arg-type]
    xa = [float(a)] * n if isinstance(a, (int, float)) else [float(v) for v in a]
    xb = [float(b)] * n if isinstance(b, (int, float)) else [float(v) for v in b]
    if len(xa) != len(xb) or n == 0:
        raise ValueError(f"{label}: {len(xa)} values against {len(xb)}; pair them by seed")
    if any(math.isnan(v) for v in xa + xb):
        raise ValueError(f"{label}: NaN among {xa} / {xb}; record a diverged run as inf")
    return xa, xb


def _compare(a: float | Sequence[float], b: float | Sequence[float], sign: int, label: str, scale: float,
             digits: int) -> Outcome:
    """Test ``sign * (a - b) < 0`` over seeds (``sign = 1``: a < b; ``-1``: a > b)."""
    xa, xb = _paired(a, b, label)
    n = len(xa)
    d = [0.0 if math.isinf(x) and x == y else x - y for x, y in zip(xa, xb)]  # both diverged: a tie
    stats = seed_stats(d)
    agree = sum(sign * v < 0 for v in d)
    finite = all(math.isfinite(v) for v in d)
    excludes = (stats.high < 0) if sign > 0 else (stats.low > 0)
    mean_wrong = not math.isnan(stats.mean) and sign * stats.mean >= 0
    if n >= 2 and agree == n and (excludes or not finite):
        verdict = HOLDS
    elif agree == 0 or mean_wrong:
        verdict = FAILS
    else:
        verdict = PARTLY
    ours = f"{label} = {stats.fmt(scale, digits)}, {'<' if sign > 0 else '>'} 0 in {agree}/{n} seeds"
    return Outcome(verdict, ours, {"a": seed_stats(xa).to_dict(), "b": seed_stats(xb).to_dict(),
                                   "difference": stats.to_dict(), "seeds_agreeing": agree, "seeds": n})


def less(a: float | Sequence[float], b: float | Sequence[float], *, label: str = "a - b", scale: float = 1.0,
         digits: int = 3) -> Outcome:
    """Test ``a < b`` over seeds: per-seed values paired by seed (a number is the same in every seed).

    With ``d_i = a_i - b_i``: holds when at least two seeds are given, ``d_i < 0`` in every seed, and
    the 95% t-interval of the mean of ``d`` lies below 0 (a diverged run's ``inf`` is worse than any
    finite value; with one, the every-seed condition decides). Does not hold when no seed has
    ``d_i < 0`` or the mean of ``d`` is at least 0. Partly otherwise.

    Args:
        a, b: Per-seed values (equal lengths, same seed order) or numbers.
        label: What ``d`` is, for ``ours`` (e.g. ``"Path-SGD - SGD train loss"``).
        scale, digits: Shown numbers are times ``scale`` (e.g. 100 for %) with ``digits`` significant digits.

    Raises:
        ValueError: Both are numbers, the lengths differ, or a value is NaN.
    """
    return _compare(a, b, 1, label, scale, digits)


def greater(a: float | Sequence[float], b: float | Sequence[float], *, label: str = "a - b", scale: float = 1.0,
            digits: int = 3) -> Outcome:
    """Test ``a > b`` over seeds: the rule of :func:`less` with ``d_i = a_i - b_i > 0`` and the interval above 0."""
    return _compare(a, b, -1, label, scale, digits)


def all_of(parts: dict[str, Outcome], *, ours: str | None = None) -> Outcome:
    """One outcome from several (e.g. one per dataset): holds when every part holds, does not hold when
    none holds or partly holds, partly otherwise. Caveats are pooled, each prefixed by its part's name.
    ``ours`` defaults to one line per part (the scoreboard shows line breaks)."""
    if not parts:
        raise ValueError("all_of: no parts")
    verdicts = [o.verdict for o in parts.values()]
    if all(v == HOLDS for v in verdicts):
        verdict = HOLDS
    elif all(v == FAILS for v in verdicts):
        verdict = FAILS
    else:
        verdict = PARTLY
    held = sum(v == HOLDS for v in verdicts)
    text = ours if ours is not None else f"holds in {held}/{len(parts)}:" + "".join(
        f"\n{k}: {o.ours} ({o.verdict})" for k, o in parts.items())
    caveats = tuple(f"{k}: {c}" for k, o in parts.items() for c in o.caveats)
    return Outcome(verdict, text, {k: {"verdict": o.verdict, "ours": o.ours, **o.numbers} for k, o in parts.items()},
                   caveats)


def evaluate_claims(claims: Sequence[Claim], results: Any) -> list[dict[str, Any]]:
    """Every claim's record (:meth:`Claim.evaluate`); ids must be unique."""
    ids = [c.id for c in claims]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"evaluate_claims: duplicate claim id(s) {dupes}")
    return [c.evaluate(results) for c in claims]


def write_claims(directory: str | Path, experiment: str, claims: Sequence[Claim], results: Any, *, title: str,
                 seeds: Sequence[int], seconds: float, quick: bool) -> Path:
    """Evaluate ``claims`` on ``results`` and write ``directory/claims.json``.

    Args:
        directory: The experiment's folder (where its ``section.json`` is).
        experiment: The reproduction's name (``geomopt reproduce NAME``).
        claims, results: The claims and the experiment's multi-seed results they are tested on.
        title: The report section's title (the scoreboard links to it).
        seeds: The seeds the results are over.
        seconds: Compute time the reproduction spent (sum of its runs' training seconds).
        quick: Whether this was the ``--quick`` protocol.

    Returns:
        The path of ``claims.json``.
    """
    record = {"experiment": experiment, "title": title, "seeds": list(seeds), "seconds": float(seconds),
              "quick": bool(quick), "claims": evaluate_claims(claims, results)}
    path = Path(directory) / CLAIMS_FILE
    write_json(path, record)
    return path


def read_claims(runs_dir: str | Path, exclude: Path | None = None) -> list[tuple[dict[str, Any], Path]]:
    """Every ``claims.json`` under ``runs_dir`` (none inside ``exclude``) as (record, its folder), sorted by path.

    Raises:
        ValueError: A file is not valid JSON or not a claims record.
    """
    return find_json(runs_dir, CLAIMS_FILE, key="claims", kind=list, what="claims record",
                     hint="write it with geomopt.sweep.claims.write_claims", exclude=exclude)
