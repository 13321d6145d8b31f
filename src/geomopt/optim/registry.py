"""Optimizers by name, for the training engine and the command line."""

from __future__ import annotations

import torch
from torch import nn

from geomopt.optim.path_sgd import PathSGD

OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad", "path-sgd")


def build_optimizer(name: str, model: nn.Module, *, lr: float, momentum: float | None = None,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Build an optimizer by name.

    ``momentum``: for ``momentum`` (SGD with heavy ball) default 0.9; for ``sgd`` and
    ``path-sgd`` default 0 (``path-sgd`` takes any value in [0, 1)); ``adam``/``adagrad`` reject it.
    """
    if momentum is not None and name in ("adam", "adagrad"):
        raise ValueError(f"optimizer {name!r} takes no momentum; drop --momentum")
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9 if momentum is None else momentum,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "path-sgd":
        return PathSGD(model, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
