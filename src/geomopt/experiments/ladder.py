"""A scale ladder: one reproduction at three or more sizes, and whether each claim's effect moves toward
the paper's claim as the scale grows.

``geomopt reproduce NAME --tier mid --ladder 'train_size=[2000, 5000, 10000]'`` runs the reproduction once per
value of one config field (each rung in ``OUT/NAME-ladder-FIELD/FIELD=VALUE/``, resumable like any reproduction),
then writes ``ladder.json``, ``ladder.png`` and a report section: per claim (and per part of a claim
with parts), the mean effect with its 95% interval at every rung, signed so that a positive effect is
on the claim's side, the verdict at every rung, and the trend (the least-squares slope of the signed
effect against log size: positive means the gap moves toward the paper's claim as the scale grows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geomopt.report import Section, plot_bands, write_section
from geomopt.sweep.claims import CLAIMS_FILE
from geomopt.train.checkpoint import write_json

__all__ = ["effects", "run_ladder", "trend"]


def effects(claim: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """The signed effect ``(mean, low, high)`` of a claim record, per part ("" for a single comparison):
    the mean difference and its interval times the claim's sign, so that positive is the claim's side.
    Parts without a directional comparison (equivalence, untested) are left out."""
    def one(numbers: dict[str, Any]) -> tuple[float, float, float] | None:
        sign = numbers.get("claim_sign")
        if sign is None or "mean" not in numbers or "low" not in numbers:
            return None
        lo, hi = sign * numbers["low"], sign * numbers["high"]
        return sign * numbers["mean"], min(lo, hi), max(lo, hi)
    numbers = claim.get("numbers", {})
    single = one(numbers)
    if single is not None:
        return {"": single}
    return {k: e for k, v in numbers.items() if isinstance(v, dict) and (e := one(v)) is not None}


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
    rungs = []
    for value in values:
        section = reproduce_one(root / f"{field}={json.dumps(value).replace(' ', '')}", value)
        claims_path = Path(section).parent / CLAIMS_FILE
        record = json.loads(claims_path.read_text())
        record["variant"] = f"{field}={json.dumps(value)}"
        record["title"] = f"{record['title'].split(' [ladder')[0]} [ladder {field}={json.dumps(value)}]"
        write_json(claims_path, record)
        rungs.append((value, record))
    return _write(root, name, field, rungs)


def _write(root: Path, name: str, field: str, rungs: list[tuple[Any, dict[str, Any]]]) -> Path:
    sizes = [_size(v) for v, _ in rungs]
    ladder: dict[str, Any] = {"experiment": name, "field": field, "tier": rungs[0][1].get("tier", "full"),
                              "values": [v for v, _ in rungs], "claims": {}}
    panels: dict[str, dict[str, tuple[list[float], ...]]] = {}
    rows = []
    for claim in rungs[0][1]["claims"]:
        cid = claim["id"]
        per_rung = [next(c for c in r["claims"] if c["id"] == cid) for _, r in rungs]
        parts: dict[str, list[tuple[float, float, float]]] = {}
        for c in per_rung:
            for part, e in effects(c).items():
                parts.setdefault(part, []).append(e)
        entry = {"verdicts": [c["verdict"] for c in per_rung], "parts": {}}
        for part, es in parts.items():
            if len(es) != len(rungs):
                continue
            slope = trend(sizes, [e[0] for e in es])
            entry["parts"][part] = {"mean": [e[0] for e in es], "low": [e[1] for e in es], "high": [e[2] for e in es],
                                    "slope_per_log_size": slope}
            panels.setdefault(cid, {})[part or "effect"] = (sizes, [e[0] for e in es], [e[1] for e in es],
                                                              [e[2] for e in es])
            direction = ("toward the claim" if slope > 0 else "away from the claim" if slope < 0 else "flat") \
                if math.isfinite(slope) else "undetermined"
            rows.append([cid, part or "-", " / ".join(c["verdict"] for c in per_rung),
                         " / ".join(f"{e[0]:.3g}" for e in es), f"{slope:.3g} ({direction})"])
        ladder["claims"][cid] = entry
    write_json(root / "ladder.json", ladder)
    figures = []
    if panels:
        plot_bands(panels, root / "ladder.png", xlabel=f"{field} (log scale)", ylabel="effect on the claim's side",
                   logx=True, ncols=3)
        figures.append({"file": "ladder.png", "caption": f"Each claim's effect (mean over seeds, 95% interval), "
                                                         f"signed so that above 0 is the claim's side, against {field}."})
    section = Section(title=f"Scale ladder: {name} over {field}", citations=[], warnings=[], paragraphs=[
        f"The reproduction {name} at {field} = {', '.join(json.dumps(v) for v, _ in rungs)}. The slope is the "
        "least-squares slope of the signed effect against log size: positive means the gap moves toward the "
        "paper's claim as the scale grows."],
        tables=[{"caption": "Per claim and part: verdict and signed mean effect at each rung, and the trend",
                 "columns": ["claim", "part", "verdicts", "effects", "slope per log size"], "rows": rows}],
        figures=figures, order=90)
    return write_section(root, section)
