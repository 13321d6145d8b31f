"""Geometry-aware optimizers, each a ``torch.optim.Optimizer``."""

from geomopt.optim.kfac import EKFAC, KFAC
from geomopt.optim.path_sgd import PathSGD, first_step_ratio, path_sgd_
from geomopt.optim.registry import OPTIMIZERS, build_optimizer

__all__ = ["KFAC", "EKFAC", "PathSGD", "first_step_ratio", "path_sgd_", "OPTIMIZERS", "build_optimizer"]
