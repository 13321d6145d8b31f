"""Geometry of ReLU networks: path norms, path scales (squared-network trick), node rescaling.

Neyshabur, Salakhutdinov & Srebro, "Path-SGD: Path-Normalized Optimization in Deep Neural
Networks", NeurIPS 2015.
"""

from geomopt.geometry.path_norm import (
    PathScales,
    RankOneScale,
    UnsupportedModuleError,
    path_norm,
    path_scales,
)
from geomopt.geometry.rescaling import random_node_rescaling, rescale_unit, weighted_layers

__all__ = [
    "PathScales",
    "RankOneScale",
    "UnsupportedModuleError",
    "path_norm",
    "path_scales",
    "rescale_unit",
    "random_node_rescaling",
    "weighted_layers",
]
