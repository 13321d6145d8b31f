"""Geometry-aware optimizers, each a ``torch.optim.Optimizer``."""

from geomopt.optim.kfac import EKFAC, KFAC
from geomopt.optim.path_sgd import PathSGD, path_sgd_
from geomopt.optim.registry import OPTIMIZERS, build_optimizer

__all__ = ["KFAC", "EKFAC", "PathSGD", "path_sgd_", "OPTIMIZERS", "build_optimizer"]
