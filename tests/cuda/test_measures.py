"""Generalization measures, curvature operators, spectral estimators, the NTK and path norms on CUDA
against the CPU, in float64.

Reference: the CPU value of the same function on the same model and data (the CPU tests check each
against dense matrices, enumeration of paths or closed forms). Random probes and restarts are drawn
from CPU generators, so both devices see the same draws and must agree to rounding.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from geomopt.curvature import curvature_operator, hutchinson_trace, lanczos_top_eigenvalues
from geomopt.geometry import path_norm, rnn_path_norm
from geomopt.measures import compute, ntk_gram
from geomopt.nn import ReLURNN

pytestmark = pytest.mark.cuda

RTOL = 1e-8


def _mlp(hidden: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def _small_mlp() -> nn.Module:
    return _mlp(hidden=4)


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8, 3)).double()


def _data(shape: tuple[int, ...], n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return [(x[:25], torch.randint(0, 3, (25,), generator=g)), (x[25:], torch.randint(0, 3, (n - 25,), generator=g))]


def _on(batches, device):
    return [(x.to(device), y.to(device)) for x, y in batches]


def _assert_same_numbers(got, reference, where: str = "") -> None:
    if isinstance(reference, dict):
        assert got.keys() == reference.keys(), where
        for k in reference:
            _assert_same_numbers(got[k], reference[k], f"{where}.{k}")
    elif isinstance(reference, float) and not math.isnan(reference):
        assert math.isclose(got, reference, rel_tol=1e-6, abs_tol=1e-10), (where, got, reference)
    elif isinstance(reference, float):
        assert math.isnan(got), where
    else:
        assert got == reference, (where, got, reference)


def test_generalization_measures_on_cuda_equal_cpu(cuda_device):
    """Every group of :func:`geomopt.measures.compute` for an MLP (margins, norms, path norms, bounds,
    worst-case sharpness, flatness, Hessian) on both devices: the same numbers to 1e-6 relative."""
    init = _mlp()
    trained = copy.deepcopy(init)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=p.dtype))
    options = dict(measures=["margin", "norms", "path", "bounds", "sharpness", "flatness", "hessian"],
                   sharpness_steps=5, sharpness_restarts=2, flatness_samples=4, hessian_examples=None, seed=4)
    with torch.no_grad():  # labels the network fits: positive margins, finite margin-normalized bounds
        data = [(x, trained(x).argmax(1)) for x, _ in _data((6,))]
    got, reference = (compute(copy.deepcopy(trained), data, copy.deepcopy(init), device=d, **options)
                      for d in (cuda_device, "cpu"))
    assert got.pop("settings") == reference.pop("settings")
    _assert_same_numbers(got, reference)


@pytest.mark.parametrize("make, shape", [(_small_mlp, (6,)), (_cnn, (1, 4, 4))])
@pytest.mark.parametrize("kind, options", [("hessian", {}), ("ggn", {}), ("fisher", {"fisher_kind": "true"}),
                                           ("fisher", {"fisher_kind": "empirical"})])
def test_curvature_operators_on_cuda_equal_cpu(cuda_device, make, shape, kind, options):
    model, data = make(), _data(shape)
    reference = curvature_operator(kind, model, data, **options)
    op = curvature_operator(kind, copy.deepcopy(model).to(cuda_device), _on(data, cuda_device), **options)
    dense = reference.to_dense()
    got = op.to_dense()
    assert got.device.type == cuda_device.type
    torch.testing.assert_close(got.cpu(), dense, rtol=RTOL, atol=RTOL * float(dense.abs().max()))
    top = lanczos_top_eigenvalues(op, 2, tol=1e-10, generator=torch.Generator().manual_seed(5))
    assert top.converged
    torch.testing.assert_close(top.values.cpu(), torch.linalg.eigvalsh(dense).flip(0)[:2], rtol=1e-7, atol=1e-10)
    trace = hutchinson_trace(op, tol=1e-2, max_samples=30, generator=torch.Generator().manual_seed(6))
    trace_cpu = hutchinson_trace(reference, tol=1e-2, max_samples=30, generator=torch.Generator().manual_seed(6))
    assert trace.samples == trace_cpu.samples
    assert math.isclose(trace.estimate, trace_cpu.estimate, rel_tol=1e-7, abs_tol=1e-10)


def test_ntk_and_path_norms_on_cuda_equal_cpu(cuda_device):
    mlp, cnn = _mlp(), _cnn()
    x = _data((6,))[0][0]
    reference = ntk_gram(mlp, x)
    got = ntk_gram(copy.deepcopy(mlp).to(cuda_device), x.to(cuda_device))
    torch.testing.assert_close(got.cpu(), reference, rtol=RTOL, atol=RTOL * float(reference.abs().max()))
    for model, shape in ((mlp, None), (cnn, (1, 4, 4))):
        reference = path_norm(model, input_shape=shape)
        got = path_norm(copy.deepcopy(model).to(cuda_device), input_shape=shape)
        torch.testing.assert_close(got.cpu(), reference, rtol=1e-10, atol=0)
    rnn = ReLURNN(3, 6, 2, init="orthogonal", seed=1).double()
    torch.testing.assert_close(rnn_path_norm(copy.deepcopy(rnn).to(cuda_device), 7).cpu(), rnn_path_norm(rnn, 7),
                               rtol=1e-10, atol=0)
