"""Global unstructured pruning masks, kept by ``torch.nn.utils.prune``.

Masks are applied with ``torch.nn.utils.prune.custom_from_mask``, so a pruned module has the
usual ``weight_orig`` parameter, ``weight_mask`` buffer and forward pre-hook: users inspect them
or make pruning permanent with ``torch.nn.utils.prune.remove`` as they already do. Since the
forward pass computes ``weight = weight_orig * weight_mask``, pruned weights stay exactly zero
during fine-tuning, whatever the optimizer does to ``weight_orig``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import prune


def _module_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name[:-len(".weight")]) if name.endswith(".weight") and name != "weight" else model


def sparsity(model: nn.Module) -> float:
    """Fraction of Linear/Conv weights that are exactly zero in the forward pass."""
    zeros, total = 0, 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total


def prune_lowest(model: nn.Module, scores: dict[str, Tensor], count: int) -> dict[str, Tensor]:
    """Mask the ``count`` weights with the lowest scores, globally over all layers.

    Scores of already-masked weights must be +inf (as :func:`geomopt.prune.scores` makes them).
    Returns the boolean masks of the weights removed by this call, by name.
    """
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    available = int(torch.isfinite(flat).sum())
    if count > available:
        raise ValueError(f"cannot prune {count} more weights: only {available} are left")
    removed_flat = torch.zeros_like(flat, dtype=torch.bool)
    if count > 0:
        removed_flat[torch.topk(flat, count, largest=False).indices] = True
    removed, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        rm = removed_flat[offset:offset + size].view_as(scores[n])
        offset += size
        removed[n] = rm
        prune.custom_from_mask(_module_of(model, n), "weight", ~rm)
    return removed


def schedule_counts(total: int, sparsity_target: float, steps: int) -> list[int]:
    """How many weights each of ``steps`` pruning steps removes so that step j leaves
    (1 - p)^(j/k) of the weights (r = 1 - (1 - p)^(1/k) of what is left each time) and the last
    step reaches exactly round(p * total)."""
    if not 0 <= sparsity_target < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity_target}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    pruned_after = [round(total * (1 - (1 - sparsity_target) ** (j / steps))) for j in range(steps + 1)]
    pruned_after[-1] = round(total * sparsity_target)
    return [b - a for a, b in zip(pruned_after[:-1], pruned_after[1:])]


def gradual_sparsity(step: int, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """Cubic gradual-pruning schedule (Zhu & Gupta 2017): sparsity at training step ``step``."""
    if step <= start:
        return initial
    if step >= end:
        return final
    frac = (step - start) / (end - start)
    return final + (initial - final) * (1 - frac) ** 3


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Attach masks (by weight name) with torch.nn.utils.prune, e.g. before loading a pruned
    state_dict into a fresh model."""
    for name, mask in masks.items():
        prune.custom_from_mask(_module_of(model, name), "weight", mask.bool())


def masks_from_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``weight_mask`` buffers of a pruned model's state_dict, by weight name."""
    return {k[:-len("_mask")]: v for k, v in state_dict.items() if k.endswith("weight_mask")}


def count_prunable(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)))


__all__ = ["sparsity", "prune_lowest", "schedule_counts", "gradual_sparsity", "apply_masks",
           "masks_from_state_dict", "count_prunable"]


def permanent_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of ``model`` with every pruning mask applied and removed (plain ``weight`` keys,
    pruned entries zero): loads into the unpruned architecture, e.g. for ``geomopt measure``."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            state[base] = value * model.state_dict()[base + "_mask"]
        else:
            state[key] = value
    return state
