"""Model factories for the ``--model MODULE:FACTORY`` tests (imported only when trusted)."""

import math

from torch import nn


def small_mlp(input_shape, num_classes, hidden=16):
    """A two-layer ReLU network on flattened inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def not_a_module(input_shape, num_classes):
    return [input_shape, num_classes]


NOT_CALLABLE = 3
