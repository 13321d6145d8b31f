"""Opt-in: the pruning Gauss-Newton diagonal (from geomopt.curvature's capture) against BackPACK's
``DiagGGNExact`` (runs only where backpack-for-pytorch is installed: benchmarks/requirements-peers.txt)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomopt.nn import CNN, MLP
from geomopt.prune import loss_statistics

backpack = pytest.importorskip("backpack")


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_ggn_diagonal_equals_backpack_diag_ggn_exact(kind):
    from backpack.extensions import DiagGGNExact
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        model = MLP((6,), (5, 4), 3, seed=0).double()
        x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    else:
        model = CNN((1, 6, 6), (2,), 3, hidden=(4,), seed=0).double()
        x = torch.randn(16, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    ours = loss_statistics(model, [(x, y)], n_examples=16, method="hooks", gradient=False)["ggn_diag"]
    extended = backpack.extend(model)
    loss_fn = backpack.extend(nn.CrossEntropyLoss())
    with backpack.backpack(DiagGGNExact()):
        loss_fn(extended(x), y).backward()
    params = dict(model.named_parameters())
    for name, diag in ours.items():
        torch.testing.assert_close(diag, params[name].diag_ggn_exact, rtol=1e-10, atol=1e-14)
