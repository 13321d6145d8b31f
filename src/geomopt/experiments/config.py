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
TIERS = ("quick", "mid", "full")  # CI-sized on embedded data; real data on 2 CPU cores; the paper's own protocol


def check_tier(tier: str, name: str) -> str:
    """``tier`` if it is one of ``TIERS``, else ValueError naming the experiment."""
    if tier not in TIERS:
        raise ValueError(f"{name}: tier must be one of {', '.join(TIERS)}, got {tier!r}")
    return tier


def tier_config(cls: Any, tier: str, name: str) -> Any:
    """The experiment config of a protocol tier: ``cls.quick()``, ``cls.mid()`` or ``cls()`` (full)."""
    check_tier(tier, name)
    if tier == "full":
        return cls()
    if not hasattr(cls, tier):
        raise ValueError(f"{name}: no {tier!r} tier is defined for this reproduction (tiers: quick, full)")
    return getattr(cls, tier)()


def seed_list(seeds: int | None, quick: bool | str, overrides: dict[str, Any] | None = None) -> tuple[int, ...] | None:
    """The seeds of ``geomopt reproduce NAME --seeds N``: ``(0, ..., N-1)``; N defaults to 3 with
    ``--quick`` and the mid tier (``quick`` may be the tier's name) and 5 in the full protocol. None when ``--set seeds=[...]`` names them instead.

    Raises:
        ValueError: ``N < 1``, or both ``--seeds`` and ``--set seeds=...`` given.
    """
    if overrides and "seeds" in overrides:
        if seeds is not None:
            raise ValueError("give the seeds once: --seeds N or --set seeds=[...], not both")
        return None
    small = quick in ("quick", "mid") if isinstance(quick, str) else bool(quick)
    n = seeds if seeds is not None else (QUICK_SEEDS if small else FULL_SEEDS)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--seeds must be a positive integer, got {n!r}")
    return tuple(range(n))


def configure(cls: Any, name: str, tier: str, overrides: dict[str, Any] | None, seeds: int | None,
              also_seeds: tuple[str, ...] = ()) -> Any:
    """The config of ``geomopt reproduce NAME --tier TIER [--seeds N] [--set key=value ...]``: the tier's config
    (:func:`tier_config`) with the overrides applied through its ``replace`` (type-checked), ``--seeds N``
    as ``seeds = (0, ..., N-1)`` (:func:`seed_list`), and the seeds reaching every other seeded field named in
    ``also_seeds`` (e.g. an experiment's regression seeds) that ``--set`` does not name itself."""
    overrides = dict(overrides or {})
    chosen = seed_list(seeds, tier, overrides)
    if chosen is not None:
        overrides["seeds"] = chosen
    for other in also_seeds:
        if "seeds" in overrides and other not in overrides:
            overrides[other] = overrides["seeds"]
    return tier_config(cls, tier, name).replace(overrides)

