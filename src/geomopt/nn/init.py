"""Initializations, including the deliberately unbalanced one of the Path-SGD paper.

Neyshabur, Salakhutdinov & Srebro (2015) compare optimizers from a *balanced* start and
from an *unbalanced* one that computes the same function but whose layers have very
different scales. Node rescaling leaves a ReLU network's function unchanged: multiply the
incoming weights and bias of every unit of layer i by c_i and divide the next layer's
weights by c_i. Applied layer-wise with random factors c_i, SGD sees a badly conditioned
problem while Path-SGD, being invariant to rescaling, follows exactly the same trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

INITS = ("torch", "kaiming", "unbalanced")


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
        init: ``"torch"`` (PyTorch's default), ``"kaiming"`` (He normal weights, zero biases), or
            ``"unbalanced"`` (kaiming, then layer-wise rescaling by factors c_i with
            log10 c_i ~ U(-log10 u, log10 u), renormalized to product 1: same function, badly
            scaled layers).
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
    if init == "unbalanced" and len(layers) > 1:
        if unbalance < 1:
            raise ValueError(f"unbalance must be >= 1, got {unbalance}")
        span = math.log(unbalance)
        logs = (torch.rand(len(layers), generator=generator, dtype=torch.float64) * 2 - 1) * span
        logs -= logs.mean()
        layerwise_rescale(layers, [math.exp(v) for v in logs.tolist()])
    return model
