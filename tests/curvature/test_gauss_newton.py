"""Exact GGN diagonal and K-FAC factors from one capture against the dense GGN of the torch.func operator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomopt.curvature import GGNOperator, gauss_newton_statistics, supported_layers

pytestmark = pytest.mark.usefixtures("float64_default")


@pytest.mark.parametrize("conv", [False, True])
def test_captured_diagonal_equals_dense_ggn_diagonal(conv):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if conv:
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 3))
        batches = [(torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (5, 3)]
    else:
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        batches = [(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (5, 3)]
    layers = supported_layers(model)
    stats = gauss_newton_statistics(model, batches, layers, kronecker=True)
    dense = torch.diagonal(GGNOperator(model, batches).to_dense())
    ours = torch.cat([p.reshape(-1) for name, m, h in layers for p in h.from_matrix(m, stats[name]["diag"])])
    torch.testing.assert_close(ours, dense, atol=1e-12, rtol=1e-10)
    # the same capture's K-FAC factors: A = E[a a^T] of the last layer's (bias-augmented) inputs
    x = torch.cat([b[0] for b in batches])
    a = torch.cat([model[:-1](x), torch.ones(len(x), 1)], dim=1).detach()
    torch.testing.assert_close(stats[layers[-1][0]]["A"], a.T @ a / len(x))
