"""Experiment configurations are plain dataclasses; ``--set key=value`` overrides go through here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from geomopt.train.config import check_fields


def merge_overrides(config: Any, overrides: dict[str, Any], name: str, source: str = "--set") -> dict[str, Any]:
    """The fields of the dataclass ``config`` with ``overrides`` applied, as a dict.

    The overrides go through the one typed schema (:func:`geomopt.train.config.check_fields`): a
    key that is not a field or a value of the wrong type raises ValueError naming it. A tuple
    field accepts a list or a single value and stays a tuple.
    """
    merged = dataclasses.asdict(config)
    merged.update(check_fields(type(config), overrides, f"{name} ({source})", "experiment"))
    return merged


def experiment_dir(out: str | Path, name: str, config: Any) -> Path:
    """``out/name``, created, with the experiment's resolved config written as experiment.json."""
    root = Path(out) / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    return root


QUICK_SEEDS, FULL_SEEDS = 3, 5


def seed_list(seeds: int | None, quick: bool, overrides: dict[str, Any] | None = None) -> tuple[int, ...] | None:
    """The seeds of ``geomopt reproduce NAME --seeds N``: ``(0, ..., N-1)``; N defaults to 3 with
    ``--quick`` and 5 in the full protocol. None when ``--set seeds=[...]`` names them instead.

    Raises:
        ValueError: ``N < 1``, or both ``--seeds`` and ``--set seeds=...`` given.
    """
    if overrides and "seeds" in overrides:
        if seeds is not None:
            raise ValueError("give the seeds once: --seeds N or --set seeds=[...], not both")
        return None
    n = seeds if seeds is not None else (QUICK_SEEDS if quick else FULL_SEEDS)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--seeds must be a positive integer, got {n!r}")
    return tuple(range(n))
