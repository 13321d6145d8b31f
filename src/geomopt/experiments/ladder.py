"""A scale ladder: one reproduction at three or more sizes, and whether each claim's effect moves toward
the paper's claim as the scale grows.

``geomopt reproduce NAME --tier mid --ladder 'train_size=[2000, 5000, 10000]'`` runs the reproduction once per
value of one config field (each rung in ``OUT/NAME-ladder-FIELD/FIELD=VALUE/``, resumable like any reproduction),
then writes ``ladder.json``, ``ladder.png`` and a report section: per claim (and per part of a claim
with parts), the verdict and the effect with its 95% interval at every rung, signed so that a positive
effect is on the claim's side, and the trend as the size grows (:func:`decide_trend`).

The summary is a function of the rungs' ``claims.json`` alone (:func:`summarize`), so the results ledger
(:mod:`geomopt.experiments.ledger`) rebuilds it from the rungs it stores and ``geomopt results check``
recomputes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geomopt.report import Section, plot_bands, write_section
from geomopt.sweep.claims import CLAIMS_FILE, UNTESTABLE
from geomopt.train.checkpoint import write_json

__all__ = ["LADDER_FILE", "TOWARD", "AWAY", "NONE", "parts", "trend", "decide_trend", "summarize", "write_summary",
           "run_ladder", "rung_name", "variant"]

LADDER_FILE = "ladder.json"
TOWARD, AWAY, NONE = "toward the claim", "away from the claim", "no trend"


def variant(field: str, value: Any) -> str:
    """The ``variant`` a rung's claims record carries: ``FIELD=VALUE`` (the value as JSON)."""
    return f"{field}={json.dumps(value)}"


def rung_name(field: str, value: Any) -> str:
    """A rung's folder name: ``FIELD=VALUE`` with the JSON value's spaces dropped."""
    return f"{field}={json.dumps(value).replace(' ', '')}"


def _part(numbers: dict[str, Any], verdict: str) -> dict[str, Any]:
    out: dict[str, Any] = {"verdict": verdict}
    sign = numbers.get("claim_sign")
    if sign is not None and "low" in numbers and "difference" in numbers:
        lo, hi = sign * numbers["low"], sign * numbers["high"]
        out.update(mean=sign * numbers["mean"], low=min(lo, hi), high=max(lo, hi),
                   seeds=[sign * d for d in numbers["difference"]])
    return out


def _parts(numbers: dict[str, Any], verdict: str, gated: bool, prefix: str) -> dict[str, dict[str, Any]]:
    subs = {k: v for k, v in numbers.items() if isinstance(v, dict) and "verdict" in v}
    if "claim_sign" in numbers or not subs:
        return {prefix: _part(numbers, UNTESTABLE if gated else verdict)}
    out: dict[str, dict[str, Any]] = {}
    for key, sub in subs.items():
        out.update(_parts(sub, sub["verdict"], gated or "gate_failures" in sub, f"{prefix} / {key}" if prefix else key))
    return out


def parts(claim: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A claim record's parts ("" for a single comparison; ``"a / b"`` for a part of a part): each part's
    ``verdict`` (``untestable here`` wherever a run-quality gate failed above it) and, for a directional
    comparison over 2 or more seeds, its effect signed so that positive is the claim's side: ``mean``,
    ``low``, ``high`` (the 95% interval) and ``seeds`` (per-seed signed differences). Equivalence parts and
    parts that compared nothing carry their verdict only."""
    numbers = claim.get("numbers", {})
    return _parts(numbers, claim["verdict"], "gate_failures" in numbers, "")


def trend(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against ``log(sizes)`` (NaN with fewer than 2 finite points)."""
    pts = [(math.log(s), v) for s, v in zip(sizes, values) if s > 0 and math.isfinite(v)]
    if len(pts) < 2:
        return math.nan
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else math.nan


def _size(value: Any) -> float:
    """A rung's size on the x axis: the value, or the product of a tuple's entries (e.g. widths)."""
    if isinstance(value, (list, tuple)):
        return float(math.prod(value)) if value else 1.0
    return float(value)


def _separated(small: dict[str, Any], large: dict[str, Any], paired: bool, up: bool) -> bool:
    """The larger rung's interval lies entirely above (``up``) or below the smaller's, and so does every
    seed: each seed's change where the rungs share their seeds, else every seed of one rung against every
    seed of the other."""
    s, g = (small, large) if up else (large, small)
    if not g["low"] > s["high"]:
        return False
    if paired:
        return all(b > a for a, b in zip(s["seeds"], g["seeds"]))
    return min(g["seeds"]) > max(s["seeds"])


def decide_trend(field: str, values: Sequence[Any], rungs: Sequence[dict[str, Any]],
                 seeds: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Whether one part's signed effect moves toward the claim as ``field`` grows, decided from its rungs
    (each as :func:`parts` gives it, in the order of ``values``; ``seeds``: each rung's claim seeds).

    Only rungs that pass the run-quality gates (not ``untestable here``) and have an interval count. The
    smallest and the largest of them decide: ``toward the claim`` when the largest rung's 95% interval
    lies above the smallest's and every seed moved up too (paired by seed where both rungs used the same
    seeds, else every seed of the largest above every seed of the smallest), and the least-squares slope
    against log size agrees; ``away from the claim`` symmetrically; else ``no trend`` saying why. One seed
    cannot flip it: it needs the intervals apart, not only the means."""
    usable = [i for i, r in enumerate(rungs) if r["verdict"] != UNTESTABLE and "low" in r]
    if len(usable) < 2:
        return {"direction": NONE, "slope_per_log_size": None, "text": (
            f"no trend: {len(usable)} of {len(rungs)} rungs compared runs that pass the run-quality gates")}
    usable.sort(key=lambda i: _size(values[i]))
    sizes = [_size(values[i]) for i in usable]
    slope = trend(sizes, [rungs[i]["mean"] for i in usable])
    first, last = usable[0], usable[-1]
    paired = list(seeds[first]) == list(seeds[last]) and len(rungs[first]["seeds"]) == len(rungs[last]["seeds"])
    where = f"{field}={json.dumps(values[first])} and {json.dumps(values[last])}"
    n = min(len(rungs[first]["seeds"]), len(rungs[last]["seeds"]))
    for up, direction in ((True, TOWARD), (False, AWAY)):
        if _separated(rungs[first], rungs[last], paired, up) and (slope > 0) == up:
            return {"direction": direction, "slope_per_log_size": slope, "text": (
                f"{direction} as {field} grows (95% intervals at {where} apart, every seed the same way)")}
    a, b = rungs[first], rungs[last]
    why = "the 95% intervals overlap" if a["high"] >= b["low"] and b["high"] >= a["low"] else \
        "the intervals are apart but not every seed moved the same way"
    return {"direction": NONE, "slope_per_log_size": slope,
            "text": f"no trend detectable with {n} seeds (at {where} {why})"}


def summarize(experiment: str, field: str, values: Sequence[Any], records: Sequence[dict[str, Any]],
              tier: str | None = None) -> dict[str, Any]:
    """The ladder's summary (``ladder.json``) from its rungs' claims records (in the order of ``values``):
    per claim, its verdict at every rung and, per part, the rungs' verdicts and signed effects and the
    trend (:func:`decide_trend`)."""
    ladder: dict[str, Any] = {"experiment": experiment, "field": field, "tier": tier or records[0].get("tier", "full"),
                              "values": list(values), "sizes": [_size(v) for v in values],
                              "seeds": [r["seeds"] for r in records], "claims": {}}
    for claim in records[0]["claims"]:
        per_rung = [next((c for c in r["claims"] if c["id"] == claim["id"]), None) for r in records]
        if any(c is None for c in per_rung):
            continue
        split = [parts(c) for c in per_rung]
        names = list(dict.fromkeys(name for s in split for name in s))
        entry: dict[str, Any] = {"text": claim["text"], "verdicts": [c["verdict"] for c in per_rung], "parts": {}}
        for name in names:
            rungs = [s.get(name, {"verdict": c["verdict"]}) for s, c in zip(split, per_rung)]
            entry["parts"][name] = {"rungs": rungs, **decide_trend(field, values, rungs,
                                                                   [c["seeds"] for c in per_rung])}
        ladder["claims"][claim["id"]] = entry
    return ladder


def _panels(ladder: dict[str, Any]) -> dict[str, dict[str, tuple[list[float], ...]]]:
    panels: dict[str, dict[str, tuple[list[float], ...]]] = {}
    for cid, entry in ladder["claims"].items():
        for name, part in entry["parts"].items():
            pts = [(s, r) for s, r in zip(ladder["sizes"], part["rungs"]) if "low" in r]
            if len(pts) >= 2:
                panels.setdefault(cid, {})[name or "effect"] = (
                    [s for s, _ in pts], [r["mean"] for _, r in pts], [r["low"] for _, r in pts],
                    [r["high"] for _, r in pts])
    return panels


def write_summary(root: Path, ladder: dict[str, Any]) -> Path:
    """Write ``ladder.json``, ``ladder.png`` (when a part has effects at 2 or more rungs) and the report
    section into ``root``; returns the section's path."""
    field, name = ladder["field"], ladder["experiment"]
    write_json(Path(root) / LADDER_FILE, ladder)
    figures, rows = [], []
    panels = _panels(ladder)
    if panels:
        product = ", the product of the entries" if any(isinstance(v, (list, tuple)) for v in ladder["values"]) else ""
        sizes = sorted({x for lines in panels.values() for xs, *_ in lines.values() for x in xs})
        plot_bands(panels, Path(root) / "ladder.png", xlabel=f"{field} (log scale{product})",
                   ylabel="effect on the claim's side", logx=True, ncols=3, xticks=sizes, hline=0.0)
        figures.append({"file": "ladder.png", "caption": f"Each claim's effect (mean over seeds, 95% interval), "
                                                         f"signed so that above 0 (the dashed line) is the claim's "
                                                         f"side, against {field}."})
    for cid, entry in ladder["claims"].items():
        for part, p in entry["parts"].items():
            rows.append([cid, part or "-", " / ".join(r["verdict"] for r in p["rungs"]),
                         " / ".join(f"{r['mean']:.3g}" if "mean" in r else "-" for r in p["rungs"]), p["text"]])
    section = Section(title=f"Scale ladder: {name} over {field}", citations=[], warnings=[], paragraphs=[
        f"The reproduction {name} at {field} = {', '.join(json.dumps(v) for v in ladder['values'])}. Effects are "
        "signed so that positive is the claim's side. A trend is stated only when the largest passing rung's 95% "
        "interval is apart from the smallest's and every seed moved the same way."],
        tables=[{"caption": "Per claim and part: verdict and signed mean effect at each rung, and the trend",
                 "columns": ["claim", "part", "verdicts", "effects", "as the size grows"], "rows": rows}],
        figures=figures, order=90)
    return write_section(root, section)


def run_ladder(name: str, field: str, values: Sequence[Any], out: Path, reproduce_one: Callable[[Path, Any], Path],
               ) -> Path:
    """Run ``reproduce_one(rung_dir, value)`` for every value (it returns the rung's section path), then write
    the ladder's json, figure and section into ``out/NAME-ladder-FIELD``; returns the section path.

    Raises:
        ValueError: fewer than 3 values, or a value repeated.
    """
    if len(values) < 3:
        raise ValueError(f"--ladder {field}: a scale ladder needs 3 or more values, got {list(values)}")
    if len({json.dumps(v) for v in values}) != len(values):
        raise ValueError(f"--ladder {field}: repeated values in {list(values)}")
    root = Path(out) / f"{name}-ladder-{field}"
    records = []
    for value in values:
        section = reproduce_one(root / rung_name(field, value), value)
        claims_path = Path(section).parent / CLAIMS_FILE
        record = json.loads(claims_path.read_text())
        record["variant"] = variant(field, value)
        record["title"] = f"{record['title'].split(' [ladder')[0]} [ladder {variant(field, value)}]"
        write_json(claims_path, record)
        records.append(record)
    return write_summary(root, summarize(name, field, values, records))
