"""ReLU RNN and LSTM baseline.

References: torch.nn.RNN(nonlinearity='relu') with copied weights (outputs and gradients, float64);
one-hot float input for token input; closed-form properties of the inits (identity, orthogonality,
positive definiteness with largest eigenvalue 1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geomopt.nn import RNN_INITS, LSTMBaseline, ReLURNN, build_model

DTYPE = torch.float64


def torch_reference(rnn: ReLURNN) -> torch.nn.RNN:
    ref = torch.nn.RNN(rnn.input_size, rnn.hidden_size, nonlinearity="relu", batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(rnn.input.weight)
        ref.bias_ih_l0.copy_(rnn.input.bias)
        ref.weight_hh_l0.copy_(rnn.recurrent.weight)
        ref.bias_hh_l0.zero_()
    return ref


@pytest.mark.parametrize("init", RNN_INITS)
@pytest.mark.parametrize("mode", ["last", "all"])
def test_equals_torch_rnn_relu(init, mode):
    rnn = ReLURNN(3, 5, 2, output=mode, init=init, seed=1).double()
    with torch.no_grad():
        rnn.input.bias.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    ref = torch_reference(rnn)
    x = torch.randn(4, 9, 3, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    hs, _ = ref(x)
    expected = rnn.output(hs[:, -1] if mode == "last" else hs)
    out = rnn(x)
    assert out.shape == ((4, 2) if mode == "last" else (4, 9, 2))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # gradients agree too
    g_ours = torch.autograd.grad(out.square().sum(), [rnn.recurrent.weight, rnn.input.weight])
    g_ref = torch.autograd.grad(expected.square().sum(), [ref.weight_hh_l0, ref.weight_ih_l0])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rnn.hidden_states(x).transpose(0, 1), hs, rtol=1e-12, atol=1e-12)


def test_token_input_equals_one_hot():
    rnn = ReLURNN(7, 4, 7, output="all", init="orthogonal", seed=0).double()
    tokens = torch.randint(0, 7, (3, 11), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rnn(tokens), rnn(F.one_hot(tokens, 7).double()), rtol=1e-12, atol=1e-12)
    lstm = LSTMBaseline(7, 4, 7, output="all", seed=0).double()
    torch.testing.assert_close(lstm(tokens), lstm(F.one_hot(tokens, 7).double()))


def test_inits():
    g = lambda init: ReLURNN(2, 16, 1, init=init, seed=3).recurrent.weight.detach().double()  # noqa: E731
    assert torch.equal(g("irnn"), torch.eye(16, dtype=DTYPE))
    q = g("orthogonal")
    torch.testing.assert_close(q @ q.T, torch.eye(16, dtype=DTYPE), atol=1e-6, rtol=0)
    w = g("np-rnn")
    torch.testing.assert_close(w, w.T)
    eig = torch.linalg.eigvalsh(w)
    assert float(eig.min()) > 0 and abs(float(eig.max()) - 1) < 1e-6
    assert not torch.equal(g("gaussian"), ReLURNN(2, 16, 1, init="gaussian", seed=4).recurrent.weight.detach().double())
    assert torch.equal(g("gaussian"), g("gaussian"))  # seeded


def test_lstm_baseline_shapes_and_forget_bias():
    lstm = LSTMBaseline(2, 8, 1, seed=0)
    assert lstm(torch.randn(5, 13, 2)).shape == (5, 1)
    assert float((lstm.lstm.bias_ih_l0 + lstm.lstm.bias_hh_l0).detach()[8:16].min()) == 1.0
    assert LSTMBaseline(2, 8, 3, output="all")(torch.randn(5, 13, 2)).shape == (5, 13, 3)
    assert torch.equal(LSTMBaseline(2, 8, 1, seed=1).lstm.weight_hh_l0, LSTMBaseline(2, 8, 1, seed=1).lstm.weight_hh_l0)


def test_build_model_recurrent():
    m = build_model("relu-rnn", (50, 2), 1, widths=(16,), init="kaiming")
    assert isinstance(m, ReLURNN) and m.seq_len == 50 and m.init_name == "irnn" and m.output_mode == "last"
    m = build_model("relu-rnn", (20, 10), 9, widths=(16,), init="np-rnn", task="sequence")
    assert m.output_mode == "all" and m.init_name == "np-rnn"
    assert isinstance(build_model("lstm", (20, 3), 4, widths=(8,)), LSTMBaseline)
    with pytest.raises(ValueError, match="--widths 100"):
        build_model("relu-rnn", (50, 2), 1, widths=(16, 16))
    with pytest.raises(ValueError, match=r"\(T, features\)"):
        build_model("relu-rnn", (1, 8, 8), 10, widths=(16,))
    with pytest.raises(ValueError, match="a recurrent model"):
        build_model("mlp", (20, 3), 4, widths=(8,), task="sequence")
    with pytest.raises(ValueError, match="unknown init"):
        build_model("relu-rnn", (50, 2), 1, widths=(16,), init="unbalanced")


def test_bad_input_errors():
    rnn = ReLURNN(3, 4, 1)
    with pytest.raises(ValueError, match=r"\(batch, T, 3\)"):
        rnn(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="no time steps"):
        rnn(torch.randn(2, 0, 3))
    with pytest.raises(ValueError, match="token input"):
        rnn(torch.zeros(2, 3, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="output must be"):
        ReLURNN(3, 4, 1, output="middle")
    with pytest.raises(ValueError, match="hidden_size"):
        ReLURNN(3, 0, 1)


def test_irnn_le_init_is_le_et_al():
    """Le et al. 2015 (as in Neyshabur et al. 2016): identity recurrence, non-recurrent weights U[-0.01, 0.01]."""
    import torch

    from geomopt.nn import ReLURNN
    m = ReLURNN(3, 50, 2, init="irnn-le", seed=3)
    torch.testing.assert_close(m.recurrent.weight, torch.eye(50))
    for w in (m.input.weight, m.output.weight):
        assert float(w.abs().max()) <= 0.01 and float(w.abs().max()) > 0.009  # uniform, fills the range
        assert abs(float(w.mean())) < 0.002
    assert float(m.input.bias.abs().sum()) == 0 and float(m.output.bias.abs().sum()) == 0
