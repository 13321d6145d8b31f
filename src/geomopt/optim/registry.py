"""Optimizers by name, for the training engine and the command line."""

from __future__ import annotations

import torch
from torch import nn

from geomopt.optim.path_sgd import PathSGD

OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad", "path-sgd")


def build_optimizer(name: str, model: nn.Module, *, lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Build an optimizer by name. ``momentum`` is used by ``momentum`` (SGD with momentum) and
    by ``path-sgd`` only when it is given as nonzero through ``path-sgd`` with momentum."""
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "path-sgd":
        return PathSGD(model, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
