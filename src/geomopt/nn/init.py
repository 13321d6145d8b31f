"""Initializations, including the deliberately unbalanced ones of the Path-SGD paper.

Neyshabur, Salakhutdinov & Srebro (2015) compare optimizers from a *balanced* start (the
norms of the incoming weights of all units are about equal) and from an *unbalanced* one that
computes the same function with very different unit scales. Node rescaling leaves a ReLU
network's function unchanged: multiply the incoming weights and bias of a hidden unit by
c > 0 and divide its outgoing weights by c. With random factors, SGD sees a badly conditioned
problem while Path-SGD, being invariant to rescaling, follows exactly the same trajectory.

- ``"unbalanced"``: every hidden unit rescaled by its own factor, log-uniform in [1/u, u];
- ``"unbalanced-layer"``: every layer's weights multiplied by one random factor c_i
  (log-uniform in [1/u, u], renormalized so that prod c_i = 1; biases adjusted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from geomopt.nn.rescaling import random_node_rescaling

INITS = ("torch", "kaiming", "unbalanced", "unbalanced-layer")


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


@torch.no_grad()
def layerwise_rescale(layers: Sequence[nn.Module], factors: Sequence[float]) -> None:
    """Rescale consecutive layers without changing the network function.

    Layer i's weight is multiplied by ``factors[i]`` and its bias by the running product
    ``prod_{j<=i} factors[j]``. If the product of all factors is 1 the output is unchanged
    (ReLU, max/avg pooling and flatten are positively homogeneous).

    Args:
        layers: the weighted layers in forward order (Linear/Conv).
        factors: one positive factor per layer, with product 1.

    Raises:
        ValueError: on a length mismatch, a non-positive factor, or a product far from 1.
    """
    if len(layers) != len(factors):
        raise ValueError(f"layerwise_rescale: {len(layers)} layers but {len(factors)} factors")
    if any(c <= 0 for c in factors):
        raise ValueError("layerwise_rescale: factors must be positive (ReLU is only positively homogeneous)")
    if not math.isclose(math.prod(factors), 1.0, rel_tol=1e-9):
        raise ValueError(f"layerwise_rescale: the product of the factors must be 1, got {math.prod(factors)}")
    running = 1.0
    for layer, c in zip(layers, factors):
        running *= c
        layer.weight.mul_(c)
        if layer.bias is not None:
            layer.bias.mul_(running)


@torch.no_grad()
def initialize(model: nn.Module, init: str, generator: torch.Generator, unbalance: float = 10.0) -> nn.Module:
    """Initialize every Linear/Conv layer of ``model`` in place.

    Args:
        model: the network.
        init: ``"torch"`` (PyTorch's default), ``"kaiming"`` (He normal weights, zero biases),
            ``"unbalanced"`` (kaiming, then every hidden unit rescaled by a random factor,
            log-uniform in [1/u, u]) or ``"unbalanced-layer"`` (kaiming, then layer-wise factors
            with product 1). Both unbalanced inits compute the same function as kaiming.
        generator: the source of randomness (seeded by the caller).
        unbalance: u, the spread of the unbalanced factors.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    layers = _weighted_layers(model)
    for layer in layers:
        if init == "torch":
            bound = 1.0 / math.sqrt(layer.weight[0].numel())
            layer.weight.uniform_(-bound, bound, generator=generator)
            if layer.bias is not None:
                layer.bias.uniform_(-bound, bound, generator=generator)
        else:
            std = math.sqrt(2.0 / layer.weight[0].numel())
            layer.weight.normal_(0.0, std, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()
    if init.startswith("unbalanced") and unbalance < 1:
        raise ValueError(f"unbalance must be >= 1, got {unbalance}")
    if init == "unbalanced":
        random_node_rescaling(model, generator, 1.0 / unbalance, unbalance)
    if init == "unbalanced-layer" and len(layers) > 1:
        span = math.log(unbalance)
        logs = (torch.rand(len(layers), generator=generator, dtype=torch.float64) * 2 - 1) * span
        logs -= logs.mean()
        layerwise_rescale(layers, [math.exp(v) for v in logs.tolist()])
    return model
