"""Loss and metric of each dataset task (``DatasetBundle.task``), for the training engine.

- ``"classification"``: cross-entropy (or, with ``TrainConfig.loss = "mse"``, the squared loss against
  one-hot labels, :func:`one_hot_mse`), top-1 accuracy;
- ``"regression"``: mean squared error (e.g. the adding problem, trivial baseline 1/6), no metric;
- ``"sequence"``: one label per step; cross-entropy averaged over every step of every sequence
  (in nats; bits per character = loss / ln 2), metric: per-step accuracy (each sequence counts
  as its fraction of correct steps, so the engine's mean over examples is the mean per-step accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from geomopt.train.engine import accuracy

__all__ = ["sequence_cross_entropy", "sequence_accuracy", "one_hot_mse", "task_objective", "bits"]


def sequence_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over all steps: ``output`` ``(batch, T, C)``, ``target`` ``(batch, T)``."""
    if output.dim() != 3 or output.shape[:2] != target.shape:
        raise ValueError(f"sequence loss: expected output (batch, T, classes) and target (batch, T), got "
                         f"{tuple(output.shape)} and {tuple(target.shape)}; a per-step task needs a many-to-many model")
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def sequence_accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Sum over the batch of each sequence's fraction of correctly predicted steps."""
    return (output.argmax(dim=-1) == target).float().mean(dim=1).sum()


def mse(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error; the shapes must agree (no silent broadcasting)."""
    if output.shape != target.shape:
        raise ValueError(f"regression loss: output shape {tuple(output.shape)} != target shape {tuple(target.shape)}")
    return F.mse_loss(output, target)


def one_hot_mse(output: Tensor, target: Tensor) -> Tensor:
    r"""Squared loss of a classifier against one-hot labels: ``(1/n) sum_i 1/2 ||f(x_i) - e_{y_i}||^2``
    (summed over classes, as Cohen et al. 2021 train classifiers with MSE); ``output`` ``(n, C)``, ``target``
    ``(n,)`` class indices."""
    if output.dim() != 2 or target.shape != output.shape[:1]:
        raise ValueError(f"mse loss for classification: expected output (batch, classes) and target (batch,), got "
                         f"{tuple(output.shape)} and {tuple(target.shape)}")
    return 0.5 * (output - F.one_hot(target, output.shape[1]).to(output.dtype)).pow(2).sum(1).mean()


def task_objective(task: str, loss: str = "task") -> tuple[Callable[[Tensor, Tensor], Tensor],
                                                           Callable[[Tensor, Tensor], Tensor] | None]:
    """``(loss_fn, metric)`` for ``fit`` given a dataset task and ``TrainConfig.loss`` (``"task"``: the task's
    own loss; ``"mse"``: :func:`one_hot_mse` for classification, with accuracy as the metric)."""
    if loss == "mse":
        if task != "classification":
            raise ValueError(f"TrainConfig.loss 'mse' is for classification data (one-hot targets); this data set's "
                             f"task is {task!r}: use loss 'task'")
        return one_hot_mse, accuracy
    if loss != "task":
        raise ValueError(f"unknown loss {loss!r}; choose task or mse")
    if task == "classification":
        return F.cross_entropy, accuracy
    if task == "regression":
        return mse, None
    if task == "sequence":
        return sequence_cross_entropy, sequence_accuracy
    raise ValueError(f"unknown task {task!r}; choose classification, regression or sequence")


def bits(nats: float) -> float:
    """Nats to bits (bits per character of a character-level cross-entropy)."""
    return nats / math.log(2)
