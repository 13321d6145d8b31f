"""The unitary RNN against dense matrices, a hand formula for modReLU and finite differences."""

from __future__ import annotations

import cmath
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from geomopt.nn import UnitaryRNN, build_model, mod_relu


def dense_operator(m: UnitaryRNN) -> torch.Tensor:
    """D3 R2 F^-1 D2 Pi R1 F D1 multiplied out from explicit matrices (the paper's definition)."""
    n = m.hidden_size
    theta = m.theta.detach().double()
    d = [torch.diag(torch.exp(1j * theta[k])) for k in range(3)]
    jk = torch.outer(torch.arange(n), torch.arange(n)).double()
    fourier = torch.exp(-2j * math.pi * jk / n) / math.sqrt(n)
    r = []
    for k in range(2):
        v = torch.complex(m.reflection[k, 0].detach().double(), m.reflection[k, 1].detach().double()).unsqueeze(1)
        r.append(torch.eye(n, dtype=torch.complex128) - 2 * (v @ v.conj().T) / (v.conj().T @ v))
    perm = torch.zeros(n, n, dtype=torch.complex128)
    perm[torch.arange(n), m.permutation] = 1  # (Pi h)_j = h_{perm[j]}
    return d[2] @ r[1] @ fourier.conj().T @ d[1] @ perm @ r[0] @ fourier @ d[0]


def test_operator_equals_its_dense_matrix():
    m = UnitaryRNN(2, 7, 1, seed=3).double()
    dense = dense_operator(m)
    torch.testing.assert_close(m.recurrent_matrix(), dense, rtol=1e-12, atol=1e-12)
    h = torch.randn(4, 7, dtype=torch.complex128)
    torch.testing.assert_close(m.apply_recurrent(h), h @ dense.T, rtol=1e-12, atol=1e-12)


def test_recurrent_matrix_stays_unitary_through_training():
    torch.manual_seed(0)
    m = UnitaryRNN(3, 16, 2, output="all", seed=1)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x, y = torch.randn(8, 12, 3), torch.randn(8, 12, 2)
    before = m.recurrent_matrix().detach()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
    w = m.recurrent_matrix().detach()
    assert (w - before).abs().max() > 1e-2  # training moved it
    eye = torch.eye(16, dtype=w.dtype)
    torch.testing.assert_close(w.conj().T @ w, eye, rtol=0, atol=5e-6)  # float32 precision
    torch.testing.assert_close(w @ w.conj().T, eye, rtol=0, atol=5e-6)


@settings(max_examples=30, deadline=None)
@given(re=st.floats(-3, 3), im=st.floats(-3, 3), b=st.floats(-2, 2))
@example(re=0.0, im=5e-324, b=1.0)  # subnormal moduli: the phase must survive
@example(re=0.0, im=5e-324, b=1.5)
def test_mod_relu_matches_hand_formula(re, im, b):
    z = complex(re, im)
    phase = complex(re / abs(z), im / abs(z)) if abs(z) > 0 else 0j  # real divisions: exact for subnormal |z|
    expected = 0j if abs(z) + b < 0 else (abs(z) + b) * phase
    got = complex(mod_relu(torch.tensor([z], dtype=torch.complex128), torch.tensor(b, dtype=torch.float64))[0])
    assert cmath.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-12)


def test_gradients_match_finite_differences():
    torch.manual_seed(2)
    m = UnitaryRNN(2, 5, 3, output="all", seed=4).double()
    with torch.no_grad():
        m.bias.fill_(-0.05)  # thresholds that do cut some moduli
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))

    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def test_norm_preserved_without_input_and_threshold():
    """With V = 0 and b = 0 (modReLU = identity), ||h_t|| = ||h_0|| for all t: W is unitary."""
    m = UnitaryRNN(2, 9, 1, seed=0).double()
    with torch.no_grad():
        m.input.weight.zero_()
    hs = m.hidden_states(torch.randn(2, 50, 2, dtype=torch.float64))
    norm0 = torch.linalg.vector_norm(torch.complex(m.h0[0], m.h0[1]))
    torch.testing.assert_close(torch.linalg.vector_norm(hs, dim=-1), norm0.expand(50, 2).detach(), rtol=1e-12,
                               atol=0)


def test_shapes_tokens_registry_and_errors():
    m = build_model("urnn", (6, 3), 2, widths=(8,))
    assert isinstance(m, UnitaryRNN) and m(torch.randn(4, 6, 3)).shape == (4, 2)
    seq = build_model("urnn", (6, 5), 5, widths=(8,), task="sequence")
    tokens = torch.randint(0, 5, (4, 6))
    assert seq(tokens).shape == (4, 6, 5)
    torch.testing.assert_close(seq(tokens), seq(torch.nn.functional.one_hot(tokens, 5).float()))
    with pytest.raises(ValueError, match=r"\(batch, T, 3\)"):
        m(torch.randn(4, 6, 2))
    with pytest.raises(ValueError, match="paper's initialization"):
        build_model("urnn", (6, 3), 2, widths=(8,), init="orthogonal")
    with pytest.raises(ValueError, match="output"):
        UnitaryRNN(3, 8, 2, output="mean")
