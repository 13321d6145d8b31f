"""Node rescaling: the symmetry of ReLU networks that Path-SGD is invariant to.

For a hidden ReLU unit (or conv channel) v and c > 0, multiplying the incoming weights and
bias of v by c and dividing its outgoing weights by c leaves the network function unchanged,
since relu(c z) = c relu(z); max and average pooling commute with it too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear/Conv layers of ``model`` in registration (forward) order."""
    return [m for m in model.modules() if isinstance(m, _WEIGHTED)]


@torch.no_grad()
def rescale_units(layer_in: nn.Module, layer_out: nn.Module, factors: torch.Tensor) -> None:
    """Rescale every output unit (or channel) i of ``layer_in`` by ``factors[i] > 0``.

    ``layer_in``'s output row/channel i and its bias are multiplied by ``factors[i]``;
    ``layer_out``'s input column/channel i is divided by it. A Linear after a conv + flatten
    consumes each channel as a block of ``in_features // out_channels`` consecutive columns,
    all of which are divided.

    Raises:
        ValueError: for a non-positive factor, a wrong number of factors, or layers that do
            not connect.
    """
    units = layer_in.weight.shape[0]
    factors = torch.as_tensor(factors, dtype=layer_in.weight.dtype, device=layer_in.weight.device)
    if factors.shape != (units,):
        raise ValueError(f"rescale_units: {type(layer_in).__name__} has {units} outputs but {tuple(factors.shape)} "
                         "factors were given")
    if not bool((factors > 0).all()):
        raise ValueError("rescale_units: factors must be positive (ReLU is only positively homogeneous)")
    fan_in = layer_out.weight.shape[1]
    if fan_in == units:
        divide = factors
    elif isinstance(layer_out, nn.Linear) and fan_in % units == 0:
        divide = factors.repeat_interleave(fan_in // units)
    else:
        raise ValueError(f"rescale_units: {type(layer_in).__name__} has {units} outputs but the next layer "
                         f"{type(layer_out).__name__} takes {fan_in} inputs")
    trailing = (1,) * (layer_in.weight.dim() - 1)
    layer_in.weight.mul_(factors.view(units, *trailing))
    if layer_in.bias is not None:
        layer_in.bias.mul_(factors)
    layer_out.weight.div_(divide.view(1, fan_in, *((1,) * (layer_out.weight.dim() - 2))))


def rescale_unit(layer_in: nn.Module, layer_out: nn.Module, index: int, c: float) -> None:
    """Rescale the single hidden unit (or channel) ``index`` between two consecutive layers by ``c > 0``.

    Raises:
        ValueError: for ``c <= 0``, an index out of range, or layers that do not connect.
    """
    if c <= 0:
        raise ValueError(f"rescale_unit: c must be positive (ReLU is positively homogeneous), got {c}")
    units = layer_in.weight.shape[0]
    if not 0 <= index < units:
        raise ValueError(f"rescale_unit: unit {index} out of range for {type(layer_in).__name__} with {units} outputs")
    factors = torch.ones(units, dtype=layer_in.weight.dtype, device=layer_in.weight.device)
    factors[index] = c
    rescale_units(layer_in, layer_out, factors)


@torch.no_grad()
def random_node_rescaling(model: nn.Module, generator: torch.Generator, low: float = 0.25,
                          high: float = 4.0) -> None:
    """Rescale every hidden unit of a feedforward chain by an independent factor in [low, high].

    Factors are log-uniform. The model must be a chain (each weighted layer feeds the next),
    as :class:`geomopt.nn.MLP` and :class:`geomopt.nn.CNN` are.
    """
    if not 0 < low <= high:
        raise ValueError(f"random_node_rescaling: need 0 < low <= high, got {low}, {high}")
    layers = weighted_layers(model)
    for layer_in, layer_out in zip(layers[:-1], layers[1:]):
        logs = torch.empty(layer_in.weight.shape[0], dtype=torch.float64).uniform_(
            math.log(low), math.log(high), generator=generator)
        rescale_units(layer_in, layer_out, logs.exp())
