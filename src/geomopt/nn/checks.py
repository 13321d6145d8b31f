"""Checks on a model's parameters shared by the measures and the geometry (path norms, tangent kernels)."""

from __future__ import annotations

import torch
from torch import nn


def check_finite_parameters(model: nn.Module, what: str) -> None:
    """Raise ``ValueError`` naming the first parameter with a NaN or inf entry (and how many it has).

    Args:
        model: the network.
        what: the computation asked for, for the message (e.g. ``"path norm"``).
    """
    for name, p in model.named_parameters():
        bad = ~torch.isfinite(p.detach())
        if bool(bad.any()):
            raise ValueError(f"{what}: parameter '{name}' (shape {tuple(p.shape)}) has {int(bad.sum())} non-finite "
                             f"(NaN/inf) entries of {p.numel()}; a diverged model has no meaningful {what}")
