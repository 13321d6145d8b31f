"""Geometry-aware optimizers, each a ``torch.optim.Optimizer``."""

from geomopt.optim.kfac import EKFAC, KFAC
from geomopt.optim.mirror import MirrorDescent
from geomopt.optim.path_sgd import PathSGD, first_step_ratio, path_sgd_
from geomopt.optim.registry import OPTIMIZERS, build_optimizer
from geomopt.optim.steepest import SteepestDescent

__all__ = ["KFAC", "EKFAC", "MirrorDescent", "SteepestDescent", "PathSGD", "first_step_ratio", "path_sgd_", "OPTIMIZERS", "build_optimizer"]
