"""Experiment configurations are plain dataclasses; ``--set key=value`` overrides go through here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


def merge_overrides(config: Any, overrides: dict[str, Any], name: str) -> dict[str, Any]:
    """The fields of the dataclass ``config`` with ``overrides`` applied, as a dict.

    A key that is not a field raises ValueError naming it and the valid keys. A field whose
    current value is a tuple accepts a list or a single value (JSON from the command line) and
    stays a tuple.
    """
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{name}: unknown experiment key(s) {unknown}; valid keys: {sorted(names)}")
    merged = dataclasses.asdict(config)
    for key, value in overrides.items():
        if isinstance(merged[key], tuple):
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        merged[key] = value
    return merged


def experiment_dir(out: str | Path, name: str, config: Any) -> Path:
    """``out/name``, created, with the experiment's resolved config written as experiment.json."""
    root = Path(out) / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    return root
