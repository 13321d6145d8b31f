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
