"""Claims as data: what a paper says, its published number, and a sound test of it over multi-seed results.

An experiment declares its claims as :class:`Claim` objects: the claim's text, the paper, its section,
figure or table, the published number, and ``test``: a function of the experiment's stored results (the
raw per-run numbers, so that a verdict can be recomputed from a results ledger) returning an
:class:`Outcome`. There are four verdicts, decided symmetrically:

- ``holds``: the evidence for the claim is strong: at least two seeds, every seed on the claim's side,
  and the 95% interval of the mean effect on the claim's side (for "no difference" claims: two
  one-sided tests with the claim's margin, :func:`equivalent`).
- ``fails``: the same strength of evidence for the opposite (every seed and the interval on the other
  side; for equivalence, the interval outside the margin).
- ``inconclusive``: neither; the outcome says what would decide it (how many seeds, or the smallest
  effect the seeds run can detect at 95%).
- ``untestable here``: the runs cannot test the claim (a run diverged, did not converge by the
  experiment's stated criterion, a selected hyperparameter is still at its grid's edge, a part was not
  run); the outcome names the runs and the gate. Gates (:func:`gated`) apply before any comparison, to
  positive and negative verdicts alike.

A claim with several parts (:func:`all_of`) lists each part's verdict and gets the one all parts support:
``holds`` when every part holds, ``fails`` when a part fails (a conjunction with a false part is false),
else ``untestable here`` when a part is, else ``inconclusive``.

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

from geomopt.sweep.stats import seed_stats, t_quantile
from geomopt.train.checkpoint import find_json, write_json

__all__ = ["HOLDS", "FAILS", "INCONCLUSIVE", "UNTESTABLE", "VERDICTS", "CLAIMS_FILE", "Claim", "Outcome", "RunGate",
           "less", "greater", "equivalent", "all_of", "gated", "untestable", "hierarchical_interval",
           "evaluate_claims", "write_claims", "read_claims", "count_verdicts"]

HOLDS, FAILS, INCONCLUSIVE, UNTESTABLE = "holds", "fails", "inconclusive", "untestable here"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, UNTESTABLE)
CLAIMS_FILE = "claims.json"
BOOTSTRAP_DRAWS = 4000  # hierarchical bootstrap resamples (seeded: the same inputs give the same interval)


@dataclass(frozen=True)
class Outcome:
    """The result of testing one claim.

    Attributes:
        verdict: One of ``VERDICTS``.
        ours: Our number as short text for the scoreboard, e.g. ``"-0.12 [-0.2, -0.05], < 0 in 3/3 seeds"``.
        numbers: The numbers behind the verdict (JSON-serializable).
        why: For ``inconclusive``, what would decide it; for ``untestable here``, the runs and the gate
            that failed; empty otherwise.
        seeds: The seeds the verdict rests on, where they differ from the experiment's (None: those).
    """

    verdict: str
    ours: str
    numbers: dict[str, Any] = field(default_factory=dict)
    why: str = ""
    seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Outcome: verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict in (INCONCLUSIVE, UNTESTABLE) and not self.why:
            raise ValueError(f"Outcome: a {self.verdict!r} verdict must say why (what would decide it, or the gate)")
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))


def untestable(why: str, ours: str = "not tested", numbers: dict[str, Any] | None = None) -> Outcome:
    """An ``untestable here`` outcome with its reason (the runs and the gate, or what was not run)."""
    return Outcome(UNTESTABLE, ours, dict(numbers or {}), why)


def gated(outcome: Outcome, failures: Sequence[str]) -> Outcome:
    """``outcome``, or ``untestable here`` naming every run-quality gate that failed (whatever the
    comparison said: a diverged or unconverged run decides neither ``holds`` nor ``fails``)."""
    failures = [f for f in failures if f]
    if not failures:
        return outcome
    shown = "; ".join(failures[:6]) + (f"; and {len(failures) - 6} more" if len(failures) > 6 else "")
    return Outcome(UNTESTABLE, outcome.ours, {**outcome.numbers, "gate_failures": list(failures),
                                               "verdict_without_gates": outcome.verdict}, shown, outcome.seeds)


@dataclass(frozen=True)
class RunGate:
    """A run-quality criterion for training curves, stated per experiment.

    A curve ``l_0, ..., l_T`` (``l_0`` before training) passes when every value is finite, the run learned
    (``l_T <= drop * l_0``), it is stable at the end (``l_T <= (1 + rebound) * min_t l_t``: no blow-up
    or late oscillation decides the comparison) and, with ``plateau`` set, it plateaued (over the last
    ``window`` epochs the loss fell by at most ``plateau`` relatively: ``l_{T-window} - l_T <= plateau * l_{T-window}``).

    A loss with an irreducible part ``f`` that no model can go below (e.g. the binary cross-entropy of
    targets in ``(0, 1)``, whose minimum is the targets' entropy) is judged by its excess ``l_t - f``: each
    criterion above with ``l_t - f`` in place of ``l_t`` (``check(..., floor=f)``; ``f = 0`` is the plain
    rule). Without it, "half its start" can lie below what any run can reach.
    """

    drop: float = 0.5
    rebound: float = 0.5
    plateau: float | None = None
    window: int = 3

    def check(self, curve: Sequence[float], name: str, floor: float = 0.0) -> str:
        """The reason ``curve`` fails the gate, naming the run ``name``; empty when it passes. ``floor``: the
        loss's irreducible part (finite, below the curve's start)."""
        values = [float(v) for v in curve]
        if len(values) < 2:
            return f"{name}: fewer than 2 recorded values"
        if not all(math.isfinite(v) for v in values):
            return f"{name}: non-finite loss (diverged)"
        floor = float(floor)
        if not math.isfinite(floor) or floor >= values[0]:
            raise ValueError(f"RunGate: the loss floor must be finite and below the curve's start {values[0]:.6g}, "
                             f"got {floor!r} ({name})")
        first, last, best = (v - floor for v in (values[0], values[-1], min(values)))
        above = f" above its floor {floor:.4g}" if floor else ""
        if last > self.drop * first:
            return (f"{name}: not converged (training loss{above} {last:.3g} > {self.drop:g} x its start{above} "
                    f"{first:.3g})")
        if last > (1 + self.rebound) * best:
            return (f"{name}: unstable (final training loss{above} {last:.3g} > {1 + self.rebound:g} x its best "
                    f"{best:.3g})")
        if self.plateau is not None and len(values) > self.window:
            before = values[-1 - self.window] - floor
            if before - last > self.plateau * before:
                return (f"{name}: not plateaued (loss{above} fell {100 * (before - last) / before:.3g}% over the last "
                        f"{self.window} epochs, more than {100 * self.plateau:g}%)")
        return ""


def hierarchical_interval(within: Sequence[Sequence[float]], confidence: float = 0.95,
                          draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean over seeds when each seed's value has its own uncertainty.

    ``within[i]`` holds draws of seed ``i``'s value (e.g. its bootstrap Kendall taus, Hutchinson
    samples). Each resample draws ``n`` seeds with replacement, then one within-seed draw for each, and
    takes their mean; the interval is the ``(1 -+ confidence) / 2`` percentiles of ``draws`` such means.
    Seeded, so the same inputs give the same interval.

    Raises:
        ValueError: no seeds, a seed without draws, or a non-finite draw.
    """
    import numpy as np
    if not within or any(len(w) == 0 for w in within):
        raise ValueError("hierarchical_interval: every seed needs at least one within-seed draw")
    rng = np.random.default_rng(seed)
    n = len(within)
    lengths = np.array([len(w) for w in within])
    padded = np.full((n, lengths.max()), np.nan)
    for i, w in enumerate(within):
        padded[i, :len(w)] = np.asarray(w, dtype=float)
    if not np.isfinite(padded[~np.isnan(padded)]).all():
        raise ValueError("hierarchical_interval: non-finite within-seed draw")
    seeds = rng.integers(0, n, size=(draws, n))
    picks = (rng.random((draws, n)) * lengths[seeds]).astype(int)
    means = padded[seeds, picks].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


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


def _seeds_needed(mean: float, std: float, half_room: float, p: float, have: int) -> int | None:
    """The smallest n > have with ``t_{p, n-1} std / sqrt(n) < half_room`` (None past 1000 seeds)."""
    if not (half_room > 0 and math.isfinite(std)):
        return None
    if std == 0:
        return have + 1
    for n in range(max(have + 1, 2), 1001):
        if t_quantile(p, n - 1) * std / math.sqrt(n) < half_room:
            return n
    return None


def _interval(d: list[float], within: Sequence[Sequence[float]] | None, confidence: float) -> tuple[float, float]:
    if within is not None:
        return hierarchical_interval(within, confidence)
    s = seed_stats(d, confidence)
    return s.low, s.high


def _fmt(v: float, scale: float, digits: int) -> str:
    return f"{v * scale:.{digits}g}"


def _compare(a: float | Sequence[float], b: float | Sequence[float], sign: int, label: str, scale: float,
             digits: int, within: Sequence[Sequence[float]] | None) -> Outcome:
    """Test ``sign * (a - b) < 0`` over seeds (``sign = 1``: a < b; ``-1``: a > b), symmetrically."""
    xa, xb = _paired(a, b, label)
    n = len(xa)
    d = [x - y for x, y in zip(xa, xb)]
    if within is not None and len(within) != n:
        raise ValueError(f"{label}: {len(within)} within-seed draw lists for {n} seeds")
    numbers: dict[str, Any] = {"a": list(xa), "b": list(xb), "difference": d, "seeds": n, "claim_sign": -sign}
    rel = "<" if sign > 0 else ">"
    if not all(math.isfinite(v) for v in d):
        bad = [i for i, v in enumerate(d) if not math.isfinite(v)]
        return untestable(f"{label}: non-finite value in seed position(s) {bad} (a diverged run)",
                          f"{label}: non-finite", numbers)
    mean = math.fsum(d) / n
    agree, oppose = sum(sign * v < 0 for v in d), sum(sign * v > 0 for v in d)
    numbers.update(mean=mean, seeds_agreeing=agree, seeds_opposing=oppose)
    if n < 2:
        return Outcome(INCONCLUSIVE, f"{label} = {_fmt(mean, scale, digits)} (1 seed)", numbers,
                       "one seed: at least 2 seeds, all on one side with the 95% interval, would decide it")
    low, high = _interval(d, within, 0.95)
    numbers.update(low=low, high=high, hierarchical=within is not None)
    ours = (f"{label} = {_fmt(mean, scale, digits)} [{_fmt(low, scale, digits)}, {_fmt(high, scale, digits)}], "
            f"{rel} 0 in {agree}/{n} seeds")
    claim_side = high < 0 if sign > 0 else low > 0
    other_side = low > 0 if sign > 0 else high < 0
    if agree == n and claim_side:
        return Outcome(HOLDS, ours, numbers)
    if oppose == n and other_side:
        return Outcome(FAILS, ours, numbers)
    std = seed_stats(d).std
    detectable = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    need = _seeds_needed(mean, std, abs(mean), 0.975, n) if mean != 0 else None
    why = (f"{n} seeds detect a mean {label} of about {_fmt(detectable, scale, digits)} or more at 95%; "
           + (f"about {need} seeds would decide it if the mean ({_fmt(mean, scale, digits)}) and spread stay"
              if need else "the mean is too close to 0 for any practical number of seeds"))
    if agree not in (0, n) and oppose not in (0, n):
        why += f"; the seeds disagree in sign ({agree} {rel} 0, {oppose} the other way)"
    return Outcome(INCONCLUSIVE, ours, numbers, why)


def less(a: float | Sequence[float], b: float | Sequence[float], *, label: str = "a - b", scale: float = 1.0,
         digits: int = 3, within: Sequence[Sequence[float]] | None = None) -> Outcome:
    """Test the claim ``a < b`` over seeds: per-seed values paired by seed (a number is the same in every seed).

    With ``d_i = a_i - b_i`` over ``n >= 2`` seeds and the 95% interval of the mean of ``d`` (Student t; the
    hierarchical bootstrap of :func:`hierarchical_interval` when ``within`` gives each seed's own draws of
    ``d_i``): holds when every ``d_i < 0`` and the interval lies below 0; fails when every ``d_i > 0`` and
    the interval lies above 0; inconclusive otherwise, saying how many seeds would decide it. A non-finite
    ``d_i`` is untestable (gate diverged runs before comparing).

    Args:
        a, b: Per-seed values (equal lengths, same seed order) or numbers.
        label: What ``d`` is, for ``ours`` (e.g. ``"Path-SGD - SGD train loss"``).
        scale, digits: Shown numbers are times ``scale`` (e.g. 100 for %) with ``digits`` significant digits.
        within: Optional per-seed draws of ``d_i`` (within-replicate uncertainty).

    Raises:
        ValueError: Both are numbers, the lengths differ, or a value is NaN.
    """
    return _compare(a, b, 1, label, scale, digits, within)


def greater(a: float | Sequence[float], b: float | Sequence[float], *, label: str = "a - b", scale: float = 1.0,
            digits: int = 3, within: Sequence[Sequence[float]] | None = None) -> Outcome:
    """Test the claim ``a > b`` over seeds: :func:`less` with the sides swapped (``d_i = a_i - b_i > 0``)."""
    return _compare(a, b, -1, label, scale, digits, within)


def equivalent(a: float | Sequence[float], b: float | Sequence[float], *, margin: float, label: str = "a - b",
               scale: float = 1.0, digits: int = 3) -> Outcome:
    """Test the claim ``|a - b| < margin`` ("no speed-up", "negligible", "within 1 point") over seeds.

    Two one-sided tests at 5% each (TOST): holds when ``n >= 2``, every ``|d_i| < margin`` and the 90%
    interval of the mean of ``d`` lies inside ``(-margin, margin)``; fails when every ``d_i`` lies beyond
    the margin on one side and the 95% interval lies beyond it on that side; inconclusive otherwise.
    ``margin`` is in the units of ``d`` (written in the claim).

    Raises:
        ValueError: ``margin`` not positive and finite, or the values as in :func:`less`.
    """
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"equivalent: margin must be a positive finite number, got {margin!r}")
    xa, xb = _paired(a, b, label)
    n = len(xa)
    d = [x - y for x, y in zip(xa, xb)]
    numbers: dict[str, Any] = {"a": xa, "b": xb, "difference": d, "seeds": n, "margin": margin}
    if not all(math.isfinite(v) for v in d):
        return untestable(f"{label}: non-finite value (a diverged run)", f"{label}: non-finite", numbers)
    mean = math.fsum(d) / n
    within_margin = sum(abs(v) < margin for v in d)
    numbers.update(mean=mean, seeds_within_margin=within_margin)
    m = _fmt(margin, scale, digits)
    if n < 2:
        return Outcome(INCONCLUSIVE, f"{label} = {_fmt(mean, scale, digits)} (1 seed), margin +-{m}", numbers,
                       "one seed: at least 2 seeds would decide it")
    tost, wide = seed_stats(d, 0.90), seed_stats(d, 0.95)
    numbers.update(low90=tost.low, high90=tost.high, low=wide.low, high=wide.high)
    ours = (f"{label} = {_fmt(mean, scale, digits)}, 90% [{_fmt(tost.low, scale, digits)}, "
            f"{_fmt(tost.high, scale, digits)}] vs margin +-{m}, inside in {within_margin}/{n} seeds")
    if within_margin == n and -margin < tost.low and tost.high < margin:
        return Outcome(HOLDS, ours, numbers)
    if (all(v >= margin for v in d) and wide.low > margin) or (all(v <= -margin for v in d) and wide.high < -margin):
        return Outcome(FAILS, ours, numbers)
    need = _seeds_needed(mean, wide.std, margin - abs(mean), 0.95, n) if abs(mean) < margin else \
        _seeds_needed(mean, wide.std, abs(mean) - margin, 0.975, n)
    why = (f"{n} seeds give a 90% interval of half-width {_fmt(0.5 * (tost.high - tost.low), scale, digits)} "
           f"against the margin {m}; " + (f"about {need} seeds would decide it if the mean and spread stay"
                                           if need else "the mean is too close to the margin to decide"))
    return Outcome(INCONCLUSIVE, ours, numbers, why)


def all_of(parts: dict[str, Outcome], *, ours: str | None = None) -> Outcome:
    """One outcome of a claim with several parts (e.g. one per dataset or baseline): holds when every part
    holds; fails when a part fails; else untestable here when a part is; else inconclusive. ``ours``
    defaults to one line per part with its verdict; ``why`` lists the parts that keep it from holding."""
    if not parts:
        raise ValueError("all_of: no parts")
    verdicts = {k: o.verdict for k, o in parts.items()}
    if all(v == HOLDS for v in verdicts.values()):
        verdict = HOLDS
    elif FAILS in verdicts.values():
        verdict = FAILS
    elif UNTESTABLE in verdicts.values():
        verdict = UNTESTABLE
    else:
        verdict = INCONCLUSIVE
    held = sum(v == HOLDS for v in verdicts.values())
    text = ours if ours is not None else f"holds in {held}/{len(parts)}:" + "".join(
        f"\n{k}: {o.ours} ({o.verdict})" for k, o in parts.items())
    why = "" if verdict in (HOLDS, FAILS) else "; ".join(
        f"{k}: {o.why}" for k, o in parts.items() if o.verdict == verdict)
    seeds = sorted({s for o in parts.values() if o.seeds is not None for s in o.seeds})
    return Outcome(verdict, text, {k: {"verdict": o.verdict, "ours": o.ours, "why": o.why, **o.numbers}
                                   for k, o in parts.items()}, why, tuple(seeds) if seeds else None)


@dataclass(frozen=True)
class Claim:
    """One claim of a paper and its test.

    Attributes:
        id: Short identifier, unique within the experiment (e.g. ``"faster-than-sgd"``).
        text: The claim in one sentence, in our words.
        paper: The paper (authors, year; its title is in the experiment's citations).
        where: Its section, figure or table (e.g. ``"Fig. 2"``).
        published: The published number, as text (e.g. ``"test error 1.6% vs 1.9% (MNIST)"``).
        test: ``test(results) -> Outcome`` over the experiment's stored multi-seed results.
    """

    id: str
    text: str
    paper: str
    where: str
    published: str
    test: Callable[[Any], Outcome]

    def evaluate(self, results: Any, seeds: Sequence[int] = ()) -> dict[str, Any]:
        """The claim's record: its fields, the outcome of ``test(results)`` and the seeds it rests on."""
        outcome = self.test(results)
        if not isinstance(outcome, Outcome):
            raise TypeError(f"claim {self.id!r}: test returned {type(outcome).__name__}, expected an Outcome")
        used = list(outcome.seeds) if outcome.seeds is not None else [int(s) for s in seeds]
        return {"id": self.id, "text": self.text, "paper": self.paper, "where": self.where,
                "published": self.published, "verdict": outcome.verdict, "ours": outcome.ours,
                "why": outcome.why, "seeds": used, "numbers": outcome.numbers}


def evaluate_claims(claims: Sequence[Claim], results: Any, seeds: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Every claim's record (:meth:`Claim.evaluate`); ids must be unique."""
    ids = [c.id for c in claims]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"evaluate_claims: duplicate claim id(s) {dupes}")
    return [c.evaluate(results, seeds) for c in claims]


def count_verdicts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many claims got each verdict, in ``VERDICTS`` order."""
    return {v: sum(r["verdict"] == v for r in records) for v in VERDICTS}


def write_claims(directory: str | Path, experiment: str, claims: Sequence[Claim], results: Any, *, title: str,
                 seeds: Sequence[int], seconds: float, tier: str) -> Path:
    """Evaluate ``claims`` on ``results`` and write ``directory/claims.json``.

    Args:
        directory: The experiment's folder (where its ``section.json`` is).
        experiment: The reproduction's name (``geomopt reproduce NAME``).
        claims, results: The claims and the experiment's multi-seed results they are tested on.
        title: The report section's title (the scoreboard links to it).
        seeds: The experiment's seeds (a claim whose outcome names its own seeds records those).
        seconds: Compute time the reproduction spent (sum of its runs' training seconds).
        tier: The protocol tier (``quick``, ``mid`` or ``full``).

    Returns:
        The path of ``claims.json``.
    """
    evaluated = evaluate_claims(claims, results, seeds)
    record = {"experiment": experiment, "title": title, "seeds": list(seeds), "seconds": float(seconds),
              "tier": tier, "quick": tier == "quick", "counts": count_verdicts(evaluated), "claims": evaluated}
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
