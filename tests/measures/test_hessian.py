"""Hessian measures against the dense Hessian (float64), and the normalized forms' invariance to
rescaling a ReLU network's layers (which changes the plain ones)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomopt.curvature import HessianOperator
from geomopt.measures import compute
from geomopt.measures.hessian import hessian_measures

pytestmark = pytest.mark.usefixtures("float64_default")


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(seed)
    return model, [(torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g))]


def test_hessian_measures_equal_dense_values():
    model, batches = _setup()
    dense = HessianOperator(model, batches).to_dense()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    scaled = theta.abs()[:, None] * dense * theta.abs()[None, :]
    res = hessian_measures(model, batches, eig_tol=1e-8, trace_tol=0.1, max_probes=2000)
    assert res["hessian_converged"]
    assert res["hessian_top_eigenvalue"] == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-6)
    assert res["hessian_top_eigenvalue_normalized"] == pytest.approx(float(torch.linalg.eigvalsh(scaled)[-1]), rel=1e-6)
    assert res["hessian_trace"] == pytest.approx(float(torch.trace(dense)), rel=0.2)  # 2 x the stated tolerance
    # within 2 x the stated tolerance
    assert res["hessian_trace_normalized"] == pytest.approx(float(torch.trace(scaled)), rel=0.2)


def test_normalized_measures_are_invariant_to_layer_rescaling():
    model, batches = _setup(1)
    before = hessian_measures(model, batches, eig_tol=1e-10, trace_tol=0.1, max_probes=2000)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
        model[0].bias.mul_(3.0)
        model[2].weight.div_(3.0)
    after = hessian_measures(model, batches, eig_tol=1e-10, trace_tol=0.1, max_probes=2000)
    assert after["hessian_top_eigenvalue_normalized"] == pytest.approx(before["hessian_top_eigenvalue_normalized"],
                                                                       rel=1e-6)
    # the same probes on the same matrix (up to rounding)
    assert after["hessian_trace_normalized"] == pytest.approx(before["hessian_trace_normalized"], rel=1e-8)
    assert after["hessian_top_eigenvalue"] > 2 * before["hessian_top_eigenvalue"]  # the plain one is not invariant


def test_compute_hessian_group():
    model, batches = _setup(2)
    out = compute(model, batches, measures=["hessian"], hessian_examples=20)
    assert {"hessian_top_eigenvalue", "hessian_trace", "hessian_top_eigenvalue_normalized",
            "hessian_trace_normalized"} <= set(out)
    direct = hessian_measures(model, batches, max_examples=20)
    assert out["hessian_top_eigenvalue"] == pytest.approx(direct["hessian_top_eigenvalue"], rel=1e-3)
