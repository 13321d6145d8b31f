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
from geomopt.nn.rescaling import random_node_rescaling, rescale_unit, weighted_layers
from geomopt.geometry.rnn_path import (
    RNNPathScales,
    is_relu_rnn,
    random_rnn_rescaling,
    rescale_rnn_units,
    rnn_path_norm,
    rnn_path_scales,
)

__all__ = [
    "PathScales",
    "RankOneScale",
    "UnsupportedModuleError",
    "path_norm",
    "path_scales",
    "rescale_unit",
    "random_node_rescaling",
    "weighted_layers",
    "RNNPathScales",
    "is_relu_rnn",
    "rnn_path_scales",
    "rnn_path_norm",
    "rescale_rnn_units",
    "random_rnn_rescaling",
]
