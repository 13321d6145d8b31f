"""Fully connected ReLU network: flatten, then (Linear, ReLU[, Dropout]) x depth, then Linear."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from geomopt.nn.init import initialize


def relu_head(width: int, hidden: Sequence[int], num_outputs: int, bias: bool, dropout: float) -> list[nn.Module]:
    """(Linear, ReLU[, Dropout]) per hidden width, then the output Linear."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h, bias=bias), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_outputs, bias=bias))
    return layers


class MLP(nn.Sequential):
    """ReLU multilayer perceptron.

    Args:
        input_shape: per-example input shape, e.g. ``(1, 8, 8)`` or ``(784,)``; flattened first.
        hidden: hidden widths, e.g. ``(4000, 4000)`` for the Path-SGD paper's network.
        num_outputs: output dimension (number of classes).
        bias: whether the layers have biases.
        dropout: dropout probability after each hidden ReLU (0 = none).
        init: see :func:`geomopt.nn.initialize`.
        seed: seed of the initialization.
    """

    def __init__(self, input_shape: Sequence[int] | int, hidden: Sequence[int], num_outputs: int,
                 *, bias: bool = True, dropout: float = 0.0, init: str = "kaiming", seed: int = 0):
        input_shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        if any(w <= 0 for w in hidden) or num_outputs <= 0:
            raise ValueError(f"MLP widths must be positive, got hidden={tuple(hidden)}, num_outputs={num_outputs}")
        super().__init__(nn.Flatten(), *relu_head(math.prod(input_shape), hidden, num_outputs, bias, dropout))
        self.input_shape = input_shape
        initialize(self, init, torch.Generator().manual_seed(seed))
