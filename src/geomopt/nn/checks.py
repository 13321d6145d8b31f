"""Checks shared by the measures, the geometry and the curvature tools: a model's parameters (and any
tensors) finite, counts and tolerances valid."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def first_non_finite(named: Iterable[tuple[str, Tensor]]) -> str | None:
    """``"NAME (shape S) has K non-finite (NaN/inf) entries of N"`` for the first floating-point tensor of
    ``(NAME, tensor)`` pairs with a NaN or inf entry, or None when all are finite."""
    for name, t in named:
        if t.is_floating_point() or t.is_complex():
            bad = ~torch.isfinite(t.detach())
            if bool(bad.any()):
                return f"{name} (shape {tuple(t.shape)}) has {int(bad.sum())} non-finite (NaN/inf) entries of {t.numel()}"
    return None


def check_finite_parameters(model: nn.Module, what: str) -> None:
    """Raise ``ValueError`` naming the first parameter with a NaN or inf entry (and how many it has).

    Args:
        model: the network.
        what: the computation asked for, for the message (e.g. ``"path norm"``).
    """
    bad = first_non_finite((f"parameter '{name}'", p) for name, p in model.named_parameters())
    if bad is not None:
        raise ValueError(f"{what}: {bad}; a diverged model has no meaningful {what}")


def check_count(value, name: str, where: str, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) ``>= minimum``, else ``ValueError`` naming ``where`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(value, name: str, where: str) -> float:
    """``value`` as a float if it is a finite number > 0, else ``ValueError`` naming ``where`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: {name} must be a finite number > 0, got {value!r}")
    return float(value)
