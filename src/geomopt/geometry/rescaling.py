"""Node rescaling: the symmetry of ReLU networks that Path-SGD is invariant to.

For a hidden ReLU unit (or conv channel) v and c > 0, multiplying the incoming weights and
bias of v by c and dividing its outgoing weights by c leaves the network function unchanged,
since relu(c z) = c relu(z); max and average pooling commute with it too.
"""

from __future__ import annotations

import torch
from torch import nn

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear/Conv layers of ``model`` in registration (forward) order."""
    return [m for m in model.modules() if isinstance(m, _WEIGHTED)]


@torch.no_grad()
def rescale_unit(layer_in: nn.Module, layer_out: nn.Module, index: int, c: float) -> None:
    """Rescale hidden unit (or channel) ``index`` between two consecutive layers by ``c > 0``.

    ``layer_in``'s output row/channel ``index`` and its bias are multiplied by ``c``;
    ``layer_out``'s input column/channel ``index`` is divided by ``c``. A Linear after a
    conv + flatten consumes each channel as a block of ``in_features // out_channels``
    consecutive columns, all of which are divided.

    Raises:
        ValueError: for ``c <= 0``, an index out of range, or layers that do not connect.
    """
    if c <= 0:
        raise ValueError(f"rescale_unit: c must be positive (ReLU is positively homogeneous), got {c}")
    units = layer_in.weight.shape[0]
    if not 0 <= index < units:
        raise ValueError(f"rescale_unit: unit {index} out of range for {type(layer_in).__name__} with {units} outputs")
    layer_in.weight[index] *= c
    if layer_in.bias is not None:
        layer_in.bias[index] *= c
    fan_in = layer_out.weight.shape[1]
    if fan_in == units:
        layer_out.weight[:, index] /= c
    elif isinstance(layer_out, nn.Linear) and fan_in % units == 0:
        block = fan_in // units
        layer_out.weight[:, index * block:(index + 1) * block] /= c
    else:
        raise ValueError(f"rescale_unit: {type(layer_in).__name__} has {units} outputs but the next layer "
                         f"{type(layer_out).__name__} takes {fan_in} inputs")


@torch.no_grad()
def random_node_rescaling(model: nn.Module, generator: torch.Generator, low: float = 0.25,
                          high: float = 4.0) -> None:
    """Rescale every hidden unit of a feedforward chain by an independent factor in [low, high].

    Factors are log-uniform. The model must be a chain (each weighted layer feeds the next),
    as :class:`geomopt.nn.MLP` and :class:`geomopt.nn.CNN` are.
    """
    layers = weighted_layers(model)
    for layer_in, layer_out in zip(layers[:-1], layers[1:]):
        units = layer_in.weight.shape[0]
        logs = torch.empty(units, dtype=torch.float64).uniform_(
            torch.log(torch.tensor(low)).item(), torch.log(torch.tensor(high)).item(), generator=generator)
        for i, v in enumerate(logs.exp().tolist()):
            rescale_unit(layer_in, layer_out, i, v)
