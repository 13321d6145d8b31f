"""Shared by the reproduction tests: file a finished reproduction into a ledger and recompute its verdicts."""

from __future__ import annotations

from pathlib import Path

from geomopt.experiments.ledger import add, check, write_provenance


def ledger_problems(runs: Path, name: str, ledger: Path) -> list[str]:
    """What `geomopt results check` finds after filing ``runs/name`` into ``ledger`` (empty: every stored
    verdict follows from the stored rows and curves with the current claim logic)."""
    write_provenance(Path(runs) / name, ["geomopt", "reproduce", name], 0.0, 1.0)
    add(runs, ledger)
    return check(ledger)
