"""PathSGD on ReLU RNNs (Neyshabur, Wu, Salakhutdinov & Srebro 2016).

References: the update rule w - lr * grad / kappa with kappa from explicit path enumeration
(tests/geometry/rnn_reference.py); node rescaling of hidden units (same factor at every step):
the RNN-Path trajectory of a rescaled network is the rescaling of the original trajectory, and
plain SGD's is not (the contrast that shows the test can fail).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomopt.geometry import UnsupportedModuleError, rescale_rnn_units
from geomopt.nn import LSTMBaseline, ReLURNN
from geomopt.optim import PathSGD
from tests.geometry.rnn_reference import brute_force

DTYPE = torch.float64
T = 4


def make(mode: str = "last", seed: int = 0) -> ReLURNN:
    rnn = ReLURNN(2, 3, 2, output=mode, init="orthogonal", seed=seed, seq_len=T).double()
    with torch.no_grad():
        rnn.input.bias.uniform_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
    return rnn


def batches(mode: str, steps: int = 3):
    g = torch.Generator().manual_seed(7)
    shape = (6, T, 2) if mode == "all" else (6, 2)
    return [(torch.randn(6, T, 2, generator=g, dtype=DTYPE), torch.randn(shape, generator=g, dtype=DTYPE))
            for _ in range(steps)]


def run(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("include_kappa2", [False, True])
@pytest.mark.parametrize("mode", ["last", "all"])
def test_single_step_matches_enumeration(mode, include_kappa2):
    model = make(mode)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, k1, k2 = brute_force(model, T)
    opt = PathSGD(model, lr=0.01, include_kappa2=include_kappa2)
    x, y = batches(mode, 1)[0]
    F.mse_loss(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        kappa = k1[n] + (k2[n] if include_kappa2 else 0)
        torch.testing.assert_close(p.detach(), before[n] - 0.01 * grads[n] / kappa, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("include_kappa2", [False, True])
@pytest.mark.parametrize("mode", ["last", "all"])
def test_commutes_with_node_rescaling(mode, include_kappa2):
    c = torch.tensor([0.3, 2.0, 5.0], dtype=DTYPE)
    a = make(mode, 1)
    b = copy.deepcopy(a)
    rescale_rnn_units(b, c)
    data = batches(mode)
    run(a, PathSGD(a, lr=0.01, momentum=0.5, include_kappa2=include_kappa2), data)
    run(b, PathSGD(b, lr=0.01, momentum=0.5, include_kappa2=include_kappa2), data)
    rescale_rnn_units(a, c)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-12, msg=n)
    # contrast: SGD does not commute
    a, b = make(mode, 1), make(mode, 1)
    rescale_rnn_units(b, c)
    run(a, torch.optim.SGD(a.parameters(), lr=0.01), data)
    run(b, torch.optim.SGD(b.parameters(), lr=0.01), data)
    rescale_rnn_units(a, c)
    assert not torch.allclose(a.recurrent.weight, b.recurrent.weight, rtol=1e-6)


def test_seq_len_from_model_or_argument():
    model = make()
    assert PathSGD(model, lr=0.1).scales.seq_len == T
    assert PathSGD(model, lr=0.1, seq_len=9).scales.seq_len == 9
    bare = ReLURNN(2, 3, 1)
    with pytest.raises(ValueError, match="seq_len"):
        PathSGD(bare, lr=0.1)
    assert PathSGD(bare, lr=0.1, seq_len=5).scales.seq_len == 5
    with pytest.raises(ValueError, match="ReLU RNNs only"):
        PathSGD(nn.Sequential(nn.Linear(3, 2)), lr=0.1, seq_len=5)


@pytest.mark.parametrize("cell", [nn.LSTM(2, 3), nn.GRU(2, 3), nn.RNN(2, 3), nn.RNN(2, 3, nonlinearity="relu"),
                                  nn.LSTMCell(2, 3)])
def test_rejects_recurrent_cells_that_are_not_relu_rnns(cell):
    model = nn.Sequential()
    model.add_module("cell", cell)
    with pytest.raises(UnsupportedModuleError, match="module 'cell' is a .* recurrent cell, not a ReLU RNN"):
        PathSGD(model, lr=0.1)
    with pytest.raises(UnsupportedModuleError, match="LSTM"):
        PathSGD(LSTMBaseline(2, 3, 1, seq_len=5), lr=0.1)


def test_state_dict_round_trip():
    model = make()
    opt = PathSGD(model, lr=0.01, momentum=0.9)
    run(model, opt, batches("last", 2))
    clone = copy.deepcopy(model)
    opt2 = PathSGD(clone, lr=0.5, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # (load_state_dict keeps same-dtype tensors)
    data = batches("last", 1)
    run(model, opt, data)
    run(clone, opt2, data)
    for pa, pb in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(pa, pb)
