"""Small convolutional ReLU network: (Conv, ReLU, Pool) blocks, flatten, ReLU MLP head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from geomopt.nn.init import initialize
from geomopt.nn.mlp import relu_head


class CNN(nn.Sequential):
    """Conv-ReLU-pool blocks followed by a fully connected head.

    Uses ``Conv1d``/``MaxPool1d`` for inputs of shape ``(C, L)`` (MNIST-1D) and
    ``Conv2d``/``MaxPool2d`` for ``(C, H, W)`` (digits, MNIST, CIFAR-10). Every block is
    positively homogeneous, so path norms and Path-SGD apply.

    Args:
        input_shape: per-example input shape.
        channels: output channels of each conv block.
        num_outputs: number of classes.
        hidden: widths of the fully connected layers after the conv blocks.
        kernel_size: convolution kernel size (padding keeps the size: ``kernel_size // 2``).
        pool: ``"max"`` or ``"avg"``, window 2 (skipped where the size is already 1).
        bias, dropout, init, seed: as in :class:`geomopt.nn.MLP`.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], num_outputs: int, *,
                 hidden: Sequence[int] = (), kernel_size: int = 3, pool: str = "max", bias: bool = True,
                 dropout: float = 0.0, init: str = "kaiming", seed: int = 0):
        input_shape = tuple(input_shape)
        if len(input_shape) not in (2, 3):
            raise ValueError(f"CNN input_shape must be (C, L) or (C, H, W), got {input_shape}")
        if pool not in ("max", "avg"):
            raise ValueError(f"CNN pool must be 'max' or 'avg', got {pool!r}")
        dims = len(input_shape) - 1
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        pools = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d, ("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d}
        layers: list[nn.Module] = []
        c, size = input_shape[0], list(input_shape[1:])
        for out in channels:
            layers += [conv(c, out, kernel_size, padding=kernel_size // 2, bias=bias), nn.ReLU()]
            if min(size) >= 2:
                layers.append(pools[pool, dims](2))
                size = [s // 2 for s in size]
            c = out
        layers.append(nn.Flatten())
        width = c
        for s in size:
            width *= s
        super().__init__(*layers, *relu_head(width, hidden, num_outputs, bias, dropout))
        self.input_shape = input_shape
        initialize(self, init, torch.Generator().manual_seed(seed))
