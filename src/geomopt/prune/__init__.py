"""Pruning by loss modelling (Laurent et al. 2020): MP, LM, QM, OBD scores with locality,
step schedules, and masks kept by ``torch.nn.utils.prune``."""

from geomopt.prune.masks import (
    apply_masks,
    count_prunable,
    gradual_sparsity,
    masks_from_state_dict,
    prune_lowest,
    schedule_counts,
    sparsity,
)
from geomopt.prune.run import GradualPruner, PruneStep, prune_model
from geomopt.prune.scores import CRITERIA, loss_statistics, predicted_loss_change, prunable_parameters, scores

__all__ = ["CRITERIA", "loss_statistics", "scores", "predicted_loss_change", "prunable_parameters", "prune_lowest",
           "schedule_counts", "gradual_sparsity", "apply_masks", "masks_from_state_dict", "count_prunable",
           "sparsity", "PruneStep", "prune_model", "GradualPruner"]
