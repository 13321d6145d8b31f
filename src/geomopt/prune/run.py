"""Prune a network step by step, measuring each loss model against the real loss change
(:func:`prune_model`), or gradually during training (:class:`GradualPruner`). Pruning a run directory
(and fine-tuning it) is :func:`geomopt.runs.prune_run`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from geomopt.prune.masks import count_prunable, prune_lowest, schedule_counts, sparsity
from geomopt.prune.scores import loss_statistics, predicted_loss_change, scores


@dataclass
class PruneStep:
    """One pruning step: what the loss model predicted and what happened (on the score examples)."""

    step: int
    removed: int
    sparsity: float
    loss_before: float
    loss_after: float
    predicted_change: float | None

    @property
    def actual_change(self) -> float:
        return self.loss_after - self.loss_before


def prune_model(model: nn.Module, loader: Iterable, *, criterion: str, target_sparsity: float, steps: int = 1,
                n_examples: int = 1000, locality: float = 0.0, compensate: bool = False,
                progress: bool = True) -> list[PruneStep]:
    """Globally prune ``target_sparsity`` of the Linear/Conv weights of ``model`` in ``steps`` steps.

    Each step recomputes the loss statistics (mean gradient, Gauss-Newton diagonal) on the
    masked network from the first ``n_examples`` of ``loader``, scores the remaining weights
    with ``criterion`` (see :mod:`geomopt.prune.scores`) and removes
    r = 1 - (1 - p)^(1/steps) of what is left; the last step reaches exactly the target.

    ``compensate`` (kobs only): after each step, move the remaining weights by the sum of the
    single-weight OBS compensations of the removed ones. Summing them ignores the interactions
    between removals; with hundreds of removals per step it can hurt (see the pruning docs), so it
    is off by default.
    """
    counts = schedule_counts(count_prunable(model), target_sparsity, steps)
    need_curvature = criterion in ("qm", "obd", "kobs")
    history = []
    for j, count in enumerate(tqdm(counts, desc=f"prune {criterion}", disable=not progress, leave=False), start=1):
        stats = loss_statistics(model, loader, n_examples=n_examples, gradient=criterion != "mp",
                                curvature=need_curvature, kronecker=criterion == "kobs")
        weights = {k: v.detach().clone() for k, v in _effective(model).items()}
        removed = prune_lowest(model, scores(model, criterion, stats if criterion != "mp" else None,
                                             locality=locality), count)
        if criterion == "kobs" and compensate:
            _compensate(model, stats, weights, removed)
        after = loss_statistics(model, loader, n_examples=n_examples, gradient=False, curvature=False)["loss"]
        predicted = predicted_loss_change(criterion, stats, removed, weights) if criterion != "mp" else None
        history.append(PruneStep(j, count, sparsity(model), stats["loss"], after, predicted))
    return history


@torch.no_grad()
def _compensate(model: nn.Module, stats: dict[str, Any], weights: dict[str, torch.Tensor],
                removed: dict[str, torch.Tensor]) -> None:
    """Kronecker OBS: move the remaining weights by the sum of the single-weight compensations of
    the removed ones (the mask keeps removed and earlier-pruned weights at zero)."""
    from geomopt.prune.scores import kfac_inverses, kronecker_obs_update
    for name, rm in removed.items():
        if not bool(rm.any()):
            continue
        a_inv, g_inv = kfac_inverses(stats["kfac"][name], 1e-3)
        module = model.get_submodule(name[:-len(".weight")]) if name != "weight" else model
        getattr(module, "weight_orig", module.weight).add_(kronecker_obs_update(weights[name], rm, a_inv, g_inv))


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    from geomopt.prune.scores import _effective_weights
    return _effective_weights(model)


class GradualPruner:
    """Gradual pruning during training (Zhu & Gupta 2017): a ``step_callback`` for
    :func:`geomopt.train.fit` that, every ``every`` steps between ``start_step`` and ``end_step``,
    removes weights by ``criterion`` until the sparsity follows the cubic schedule
    s(t) = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3 (:func:`gradual_sparsity`).

    The masks are torch.nn.utils.prune masks, so the optimizer keeps updating ``weight_orig`` while
    pruned weights stay zero. Resuming such a run needs the masks attached before loading
    (:func:`geomopt.prune.apply_masks`); ``fit(resume=True)`` does not do it.
    """

    def __init__(self, loader: Iterable, *, criterion: str, final_sparsity: float, start_step: int, end_step: int,
                 every: int = 100, n_examples: int = 1000, locality: float = 0.0):
        if not 0 <= start_step < end_step or every < 1:
            raise ValueError(f"GradualPruner: need 0 <= start_step < end_step and every >= 1, got "
                             f"{start_step}, {end_step}, {every}")
        self.loader, self.criterion, self.final = loader, criterion, final_sparsity
        self.start, self.end, self.every, self.n_examples, self.locality = start_step, end_step, every, n_examples, \
            locality

    def __call__(self, step: int, model: nn.Module) -> dict[str, Any] | None:
        due = step == self.end or (self.start <= step < self.end and (step - self.start) % self.every == 0)
        if not due:
            return None
        from geomopt.prune.masks import gradual_sparsity, masks_from_state_dict
        total = count_prunable(model)
        pruned = sum(int((m == 0).sum()) for m in masks_from_state_dict(model.state_dict()).values())
        count = round(total * gradual_sparsity(step, self.start, self.end, self.final)) - pruned
        if count <= 0:
            return None
        stats = None
        if self.criterion != "mp":
            stats = loss_statistics(model, self.loader, n_examples=self.n_examples,
                                    curvature=self.criterion in ("qm", "obd", "kobs"),
                                    kronecker=self.criterion == "kobs")
        prune_lowest(model, scores(model, self.criterion, stats, locality=self.locality), count)
        model.train()
        return {"pruned": count, "sparsity": (pruned + count) / total}
