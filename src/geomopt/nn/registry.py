"""Models by name, for the training engine and the command line."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from geomopt.nn.cnn import CNN
from geomopt.nn.mlp import MLP

MODELS = ("mlp", "cnn")


def build_model(name: str, input_shape: Sequence[int], num_outputs: int, *, widths: Sequence[int],
                bias: bool = True, dropout: float = 0.0, init: str = "kaiming", seed: int = 0) -> nn.Module:
    """Build a model by name.

    ``widths`` are the hidden widths of an ``mlp`` and the conv channels of a ``cnn``.
    """
    if name == "mlp":
        return MLP(input_shape, widths, num_outputs, bias=bias, dropout=dropout, init=init, seed=seed)
    if name == "cnn":
        return CNN(input_shape, widths, num_outputs, bias=bias, dropout=dropout, init=init, seed=seed)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
