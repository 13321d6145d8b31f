"""Geometry-aware optimizers, each a ``torch.optim.Optimizer``: a geometry (:mod:`geomopt.optim.geometry`)
plus a step rule (:mod:`geomopt.optim.step_rule`); a geometry also works as a preconditioner in front of any
torch optimizer (:mod:`geomopt.optim.precond`)."""

from geomopt.optim.geometry import Block, Euclidean, Geometry
from geomopt.optim.kfac import EKFAC, KFAC
from geomopt.optim.kronecker_geometry import EigenKroneckerGeometry, KroneckerGeometry
from geomopt.optim.matrix_geometry import EigenAdamGeometry, ShampooGeometry, SpectralGeometry
from geomopt.optim.mirror import MirrorDescent
from geomopt.optim.muon import Muon
from geomopt.optim.natural import NaturalGradient, PotentialGeometry
from geomopt.optim.path_geometry import PathGeometry
from geomopt.optim.path_sgd import PathSGD, first_step_ratio, path_sgd_
from geomopt.optim.precond import EKFACPreconditioner, KFACPreconditioner, PathPreconditioner, Preconditioner
from geomopt.optim.registry import OPTIMIZERS, build_optimizer
from geomopt.optim.shampoo import Shampoo
from geomopt.optim.soap import SOAP
from geomopt.optim.steepest import SteepestDescent, SteepestGeometry

__all__ = ["KFAC", "EKFAC", "MirrorDescent", "Muon", "NaturalGradient", "Shampoo", "SOAP", "SteepestDescent",
           "PathSGD", "first_step_ratio", "path_sgd_", "OPTIMIZERS", "build_optimizer", "Geometry", "Block",
           "Euclidean", "KroneckerGeometry", "EigenKroneckerGeometry", "PathGeometry", "ShampooGeometry",
           "EigenAdamGeometry", "SpectralGeometry", "PotentialGeometry", "SteepestGeometry", "Preconditioner",
           "KFACPreconditioner", "EKFACPreconditioner", "PathPreconditioner"]
