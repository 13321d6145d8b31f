"""RNN path norms and Path-SGD scales (Neyshabur, Wu, Salakhutdinov & Srebro 2016).

References (all independent of geomopt's scale code, float64, tiny RNNs):
- explicit enumeration of the unrolled paths, each time copy of a shared weight counted separately
  (tests/geometry/rnn_reference.py): pi, kappa1, kappa2;
- finite differences of pi computed by the model's own forward pass on squared weights:
  kappa1 = d pi / d(w^2) (central first difference in w^2) and
  kappa1 + kappa2 = 1/2 d^2 pi / d w^2 (central second difference in w);
- node rescaling of hidden units (same factor at every step): the function and pi are unchanged,
  kappa transforms covariantly.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.geometry import (
    RNNPathScales,
    UnsupportedModuleError,
    is_relu_rnn,
    random_rnn_rescaling,
    rescale_rnn_units,
    rnn_path_norm,
    rnn_path_scales,
)
from geomopt.nn import ReLURNN
from tests.geometry.rnn_reference import brute_force, squared_network_pi, unrolled_paths

DTYPE = torch.float64


def tiny_rnn(n: int, d_in: int, d_out: int, mode: str, seed: int) -> ReLURNN:
    rnn = ReLURNN(d_in, n, d_out, output=mode, init="gaussian", seed=seed).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in rnn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE))
    return rnn


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-10) -> None:
    scale = max(float(b.abs().max()), 1e-300)
    assert float((a - b).abs().max()) <= rtol * scale, (a, b)


def test_enumeration_hand_computed():
    # n = 1, d_in = 1, d_out = 1, T = 2, many-to-one. Paths: b_out; (x or b) at step 1 -> rec -> out;
    # (x or b) at step 2 -> out.  pi = o2^2 + (a^2 + b^2) r^2 u^2 + (a^2 + b^2) u^2
    rnn = tiny_rnn(1, 1, 1, "last", 0)
    a, b, r, u, o = 2.0, 3.0, 5.0, 7.0, 11.0
    with torch.no_grad():
        rnn.input.weight.fill_(a), rnn.input.bias.fill_(b), rnn.recurrent.weight.fill_(r)
        rnn.output.weight.fill_(u), rnn.output.bias.fill_(o)
    assert len(unrolled_paths(rnn, 2)) == 5
    pi, k1, k2 = brute_force(rnn, 2)
    assert pi == o ** 2 + (a * a + b * b) * r * r * u * u + (a * a + b * b) * u * u
    assert float(k1["recurrent.weight"]) == (a * a + b * b) * u * u
    assert float(k1["input.weight"]) == r * r * u * u + u * u
    assert float(k2["recurrent.weight"]) == 0.0  # no path uses r twice at T = 2
    scales = RNNPathScales(rnn, 2)
    assert math.isclose(float(scales.path_norm()) ** 2, pi, rel_tol=1e-13)
    # T = 3, n = 1: the path x1 -> r -> r -> out uses r twice: kappa2 = 2 r r (a^2 + b^2) u^2 * 2 (ordered pairs)
    _, _, k2 = brute_force(rnn, 3)
    assert float(k2["recurrent.weight"]) == 4 * r * r * (a * a + b * b) * u * u


@settings(max_examples=12, deadline=None, database=None)
@given(n=st.integers(1, 3), d_in=st.integers(1, 2), d_out=st.integers(1, 2), T=st.integers(1, 4),
       mode=st.sampled_from(["last", "all"]), seed=st.integers(0, 2**20))
def test_kappa_matches_enumeration(n, d_in, d_out, T, mode, seed):
    rnn = tiny_rnn(n, d_in, d_out, mode, seed)
    pi, k1, k2 = brute_force(rnn, T)
    for method in ("fast", "autograd"):
        scales = RNNPathScales(rnn, T, method=method)
        assert math.isclose(float(scales.path_norm()) ** 2, pi, rel_tol=1e-11)
        dense = scales.dense()
        for name in k1:
            assert_close(dense[name], k1[name])
        full = RNNPathScales(rnn, T, include_kappa2=True, method=method).dense()
        for name in k1:
            assert_close(full[name], k1[name] + k2[name])
    assert_close(RNNPathScales(rnn, T).kappa2(), k2["recurrent.weight"])
    assert math.isclose(squared_network_pi(rnn, T), pi, rel_tol=1e-11)


@pytest.mark.parametrize("mode", ["last", "all"])
@pytest.mark.parametrize("T", [2, 3, 4])
def test_kappa_by_finite_differences(mode, T):
    """kappa1 = d pi/d(w^2); kappa1 + kappa2 = 1/2 d^2 pi/d w^2, for every parameter entry (n = 2, 3)."""
    n = 3 if T < 4 else 2
    rnn = tiny_rnn(n, 2, 2, mode, seed=10 * T + (mode == "all"))
    k1 = RNNPathScales(rnn, T).dense()
    k12 = RNNPathScales(rnn, T, include_kappa2=True).dense()
    saw_kappa2 = False
    for name, p in rnn.named_parameters():
        for idx in [tuple(i) for i in torch.cartesian_prod(*[torch.arange(s) for s in p.shape]).view(-1, p.dim()).tolist()]:
            w0 = float(p.detach()[idx])
            with torch.no_grad():
                hv = 1e-5 * max(1.0, w0 * w0)  # first difference in v = w^2 (w = sign * sqrt(v))
                p[idx] = math.copysign(math.sqrt(w0 * w0 + hv), w0)
                plus = squared_network_pi(rnn, T)
                p[idx] = math.copysign(math.sqrt(w0 * w0 - hv), w0)
                minus = squared_network_pi(rnn, T)
                hw = 1e-3
                p[idx] = w0 + hw
                wplus = squared_network_pi(rnn, T)
                p[idx] = w0 - hw
                wminus = squared_network_pi(rnn, T)
                p[idx] = w0
            mid = squared_network_pi(rnn, T)
            fd1 = (plus - minus) / (2 * hv)
            fd2 = 0.5 * (wplus - 2 * mid + wminus) / hw ** 2
            assert math.isclose(float(k1[name][idx]), fd1, rel_tol=1e-6, abs_tol=1e-8 * mid)
            assert math.isclose(float(k12[name][idx]), fd2, rel_tol=1e-5, abs_tol=1e-7 * mid)
            saw_kappa2 |= not math.isclose(float(k12[name][idx]), float(k1[name][idx]), rel_tol=1e-6)
    assert saw_kappa2 or T < 3  # kappa2 is not identically zero once a path can reuse an edge


@pytest.mark.parametrize("mode", ["last", "all"])
def test_fast_doubling_matches_autograd_long_sequence(mode):
    rnn = ReLURNN(3, 6, 2, output=mode, init="orthogonal", seed=3).double()
    for T in (1, 2, 7, 37, 64, 100):
        fast = RNNPathScales(rnn, T).dense()
        ref = RNNPathScales(rnn, T, method="autograd").dense()
        for name in ref:
            assert_close(fast[name], ref[name], 1e-9)
        assert math.isclose(float(RNNPathScales(rnn, T).path_norm()),
                            float(RNNPathScales(rnn, T, method="autograd").path_norm()), rel_tol=1e-10)


def test_float32_model_gets_scales_in_its_dtype():
    rnn = ReLURNN(2, 5, 1, init="irnn", seed=0)
    scales = RNNPathScales(rnn, 20).compute()
    assert all(t.dtype == torch.float32 for v in scales.values()
               for t in ((v.out_scale, v.in_scale) if hasattr(v, "out_scale") else (v,)))
    ref = RNNPathScales(rnn.double(), 20).dense()
    for name, v in rnn_path_scales(rnn.float(), 20).items():
        assert_close(v.double(), ref[name], 1e-5)
    # near the top of float32's range (rho(W_rec^2)^T = 1.96^100 ~ 2e29): still finite and accurate
    big = ReLURNN(2, 3, 1, init="irnn", seed=0)
    with torch.no_grad():
        big.recurrent.weight.mul_(1.4)
    k32 = RNNPathScales(big, 100).dense()
    k64 = RNNPathScales(big, 100, dtype=torch.float64).dense()
    for name in k64:
        assert bool(torch.isfinite(k32[name]).all())
        assert_close(k32[name].double(), k64[name].double(), 1e-4)


@pytest.mark.parametrize("include_kappa2", [False, True])
def test_node_rescaling_invariance(include_kappa2):
    """h'_t = c h_t at every step: same outputs, same pi; kappa'_ij = kappa_ij c_j^2 / c_i^2 on W_rec."""
    rnn = tiny_rnn(3, 2, 2, "all", seed=5)
    T = 4
    x = torch.randn(4, T, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    before_out, before_pi = rnn(x), rnn_path_norm(rnn, T)
    before = RNNPathScales(rnn, T, include_kappa2=include_kappa2).dense()
    c = random_rnn_rescaling(rnn, torch.Generator().manual_seed(1), 0.2, 5.0).to(DTYPE)
    assert torch.allclose(rnn(x), before_out, rtol=1e-12, atol=1e-12)
    assert math.isclose(float(rnn_path_norm(rnn, T)), float(before_pi), rel_tol=1e-12)
    after = RNNPathScales(rnn, T, include_kappa2=include_kappa2).dense()
    assert_close(after["recurrent.weight"], before["recurrent.weight"] * c.unsqueeze(0) ** 2 / c.unsqueeze(1) ** 2)
    assert_close(after["input.weight"], before["input.weight"] / c.unsqueeze(1) ** 2)
    assert_close(after["input.bias"], before["input.bias"] / c ** 2)
    assert_close(after["output.weight"], before["output.weight"] * c.unsqueeze(0) ** 2)
    assert_close(after["output.bias"], before["output.bias"])


def test_rescaling_changes_the_scales_of_plain_weights():
    """Contrast that shows the invariance test can fail: kappa itself is not invariant."""
    rnn = tiny_rnn(3, 2, 1, "last", seed=2)
    before = RNNPathScales(rnn, 3).dense()["recurrent.weight"].clone()
    rescale_rnn_units(rnn, torch.tensor([1.0, 2.0, 0.5], dtype=DTYPE))
    assert not torch.allclose(RNNPathScales(rnn, 3).dense()["recurrent.weight"], before)


def test_errors():
    rnn = ReLURNN(2, 3, 1)
    with pytest.raises(ValueError, match="positive integer"):
        RNNPathScales(rnn, 0)
    with pytest.raises(ValueError, match="method"):
        RNNPathScales(rnn, 3, method="magic")
    lstm_like = torch.nn.Sequential(torch.nn.Linear(2, 3))
    assert not is_relu_rnn(lstm_like)
    with pytest.raises(UnsupportedModuleError, match="not a ReLU RNN"):
        RNNPathScales(lstm_like, 3)
    with pytest.raises(ValueError, match="3 hidden units"):
        rescale_rnn_units(rnn, torch.ones(4))
    with pytest.raises(ValueError, match="positive"):
        rescale_rnn_units(rnn, torch.tensor([1.0, -1.0, 1.0]))
