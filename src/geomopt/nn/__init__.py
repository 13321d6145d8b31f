"""Models used across geomopt: ReLU MLPs and CNNs with balanced and unbalanced initializations."""

from geomopt.nn.cnn import CNN
from geomopt.nn.init import INITS, initialize, layerwise_rescale
from geomopt.nn.mlp import MLP
from geomopt.nn.registry import MODELS, build_model

__all__ = ["MLP", "CNN", "INITS", "initialize", "layerwise_rescale", "MODELS", "build_model"]
