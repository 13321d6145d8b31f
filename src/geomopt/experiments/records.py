"""An experiment's stored raw numbers, from which its claims are decided and can be decided again.

A reproduction writes one row per run to ``results.csv`` (its setting, seed, final numbers, whether it
was the selected value and whether that selection is at its grid's edge) and every run's per-epoch (or
per-step) numbers to ``curves.csv`` (long form: ``run``, then the step's fields). Its claims are
functions of these two files only (:class:`Records`), read back with their types, so that
``geomopt results check`` can recompute every verdict of a results ledger from what it stores, and a
test can build any outcome from synthetic rows.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomopt.tables import write_records

__all__ = ["RESULTS_FILE", "CURVES_FILE", "Records", "parse_cell", "read_csv", "write_curves", "read_stored",
           "gate_failures"]

RESULTS_FILE, CURVES_FILE = "results.csv", "curves.csv"


def parse_cell(text: str) -> Any:
    """A CSV cell back to its value: ``""`` -> None, ``True``/``False``, JSON lists and objects, int, float
    (``inf``, ``-inf`` included; floats are written with ``repr`` and come back exactly), else the text."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    if text[0] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a CSV file written by :func:`geomopt.tables.write_records`, values parsed."""
    with Path(path).open(newline="") as f:
        return [{k: parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def write_curves(path: str | Path, curves: dict[str, Sequence[dict[str, Any]]]) -> None:
    """``curves[run] = [record, ...]`` as one long CSV (column ``run`` first)."""
    rows = [{"run": run, **{k: _cell(v) for k, v in rec.items()}} for run, recs in curves.items() for rec in recs]
    write_records(Path(path), rows, key=None)


@dataclass
class Records:
    """An experiment's stored numbers: ``rows`` (one per run) and ``curves[run id]`` (per-epoch records).

    Attributes:
        exp: The experiment's config (its claims read grids, seeds and protocol from it).
        rows: One dict per run (``results.csv``); each has a ``run`` id naming its curve.
        curves: Per run id, its per-epoch (or per-step) records in order.
    """

    exp: Any
    rows: list[dict[str, Any]]
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def where(self, **conditions: Any) -> list[dict[str, Any]]:
        """The rows whose fields equal ``conditions`` (in stored order)."""
        return [r for r in self.rows if all(r.get(k) == v for k, v in conditions.items())]

    def curve(self, run: str, name: str) -> list[float]:
        """Run ``run``'s per-epoch ``name`` (a missing value is NaN)."""
        recs = self.curves.get(run)
        if recs is None:
            raise KeyError(f"no curve stored for run {run!r}")
        return [math.nan if r.get(name) is None else float(r[name]) for r in recs]

    def write(self, directory: str | Path) -> None:
        """Write ``results.csv`` and ``curves.csv`` into ``directory`` (replacing earlier ones: the files hold
        exactly the runs of this configuration, which its claims are decided on)."""
        write_records(Path(directory) / RESULTS_FILE, [{k: _cell(v) for k, v in r.items()} for r in self.rows])
        write_curves(Path(directory) / CURVES_FILE, self.curves)


def read_stored(directory: str | Path, exp: Any) -> Records:
    """The :class:`Records` stored in ``directory`` (``results.csv``, and ``curves.csv`` when present)."""
    directory = Path(directory)
    rows = read_csv(directory / RESULTS_FILE)
    curves: dict[str, list[dict[str, Any]]] = {}
    if (directory / CURVES_FILE).is_file():
        for rec in read_csv(directory / CURVES_FILE):
            run = str(rec.pop("run"))
            curves.setdefault(run, []).append({k: v for k, v in rec.items() if v is not None})
    for r in rows:
        if "run" in r and r["run"] is not None:
            r["run"] = str(r["run"])
    return Records(exp, rows, curves)


def gate_failures(records: Records, rows: Iterable[dict[str, Any]], gate: Any,
                  describe: Callable[[dict[str, Any]], str], edges: dict[str, str] | None = None,
                  loss: str = "train_loss", floor: str | None = None) -> list[str]:
    """The run-quality gate's failures among ``rows`` (compared runs), each naming its run (``describe(row)``):
    a diverged run (``row["diverged"]``), a curve ``loss`` that fails ``gate`` (a
    :class:`geomopt.sweep.RunGate`; ``floor``: the row field holding the loss's irreducible part, which the gate
    subtracts), and a selection still at its grid's edge after extension (``edges``: row field -> what it
    selected, default ``{"edge": "lr"}``: the row's ``edge`` is ``"low"``/``"high"``)."""
    failures = []
    for r in rows:
        name = describe(r)
        if floor is not None and r.get(floor) in (None, ""):
            raise ValueError(f"gate_failures: run {r['run']} has no {floor!r} (the loss floor the gate needs)")
        f = 0.0 if floor is None else float(r[floor])
        failures.append(f"{name}: diverged" if r["diverged"] else gate.check(records.curve(r["run"], loss), name, f))
        failures += [f"{name}: chosen {what} at the {r[k]} edge of its grid after extension"
                     for k, what in (edges or {"edge": "lr"}).items() if r.get(k)]
    return list(dict.fromkeys(f for f in failures if f))
