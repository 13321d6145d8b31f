"""Two-layer capacity measures (Neyshabur et al. 2019) against hand computation in plain Python floats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from geomopt.measures.layers import MeasureError
from geomopt.measures.two_layer import BOUNDS, two_layer_measures, two_layer_weights
from geomopt.nn import CNN, MLP


def _net(U, b, V, c):
    net = nn.Sequential(nn.Flatten(), nn.Linear(len(U[0]), len(U)), nn.ReLU(), nn.Linear(len(U), len(V))).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(U, dtype=torch.float64)); net[1].bias.copy_(torch.tensor(b, dtype=torch.float64))
        net[3].weight.copy_(torch.tensor(V, dtype=torch.float64)); net[3].bias.copy_(torch.tensor(c, dtype=torch.float64))
    return net


U = [[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]]
U0 = [[0.5, -1.0], [0.0, 1.0], [-1.0, 2.0]]
V = [[1.0, 0.0, -1.0], [2.0, 1.0, 0.5]]
V0 = [[0.5, 0.5, -0.5], [1.0, 1.0, 1.0]]
b, b0, c = [0.1, -0.2, 0.3], [0.0, 0.1, -0.1], [0.0, 0.0]
X = [[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7], [2.0, 1.0]]
Y = [0, 1, 1, 0]


def _forward(Uw, bw, Vw, cw, x):
    h = [max(0.0, sum(u * xi for u, xi in zip(row, x)) + bb) for row, bb in zip(Uw, bw)]
    return [sum(v * hi for v, hi in zip(row, h)) + cc for row, cc in zip(Vw, cw)], h


def _fro(A):
    return math.sqrt(sum(a * a for row in A for a in row))


def test_ingredients_and_overparam_bound_against_hand_computation():
    model, init = _net(U, b, V, c), _net(U0, b0, V0, c)
    batches = [(torch.tensor(X, dtype=torch.float64), torch.tensor(Y))]
    r = two_layer_measures(model, init, batches, margin=0.5, delta=0.01)
    unit = [math.sqrt(sum((a - a0) ** 2 for a, a0 in zip(row, row0))) for row, row0 in zip(U, U0)]
    assert r["dist_U"] == pytest.approx(math.sqrt(sum(u * u for u in unit)), rel=1e-12)
    assert r["dist_U_21"] == pytest.approx(sum(unit), rel=1e-12)
    assert r["max_unit_dist"] == pytest.approx(max(unit), rel=1e-12)
    out_norms = [math.sqrt(sum(V[k][i] ** 2 for k in range(2))) for i in range(3)]
    assert r["fro_V"] == pytest.approx(math.sqrt(sum(o * o for o in out_norms)), rel=1e-12)
    assert r["max_out_norm"] == pytest.approx(max(out_norms), rel=1e-12)
    assert r["fro_U"] == pytest.approx(_fro(U), rel=1e-12)
    assert r["spec_U"] == pytest.approx(np.linalg.svd(np.array(U), compute_uv=False)[0], rel=1e-12)
    assert r["spec_V"] == pytest.approx(np.linalg.svd(np.array(V), compute_uv=False)[0], rel=1e-12)
    assert r["l1max_U"] == pytest.approx(max(sum(abs(a) for a in row) for row in U), rel=1e-12)
    assert r["num_params"] == 6 + 3 + 6 + 2
    # the bound: E||[U0 x + b0]_+||^2 and E||x||^2 by hand
    m = len(X)
    init_sq = sum(sum(h * h for h in _forward(U0, b0, V0, c, x)[1]) for x in X) / m
    mean_sq = sum(sum(xi * xi for xi in x) for x in X) / m
    R = 3 * math.sqrt(2) * (math.sqrt(4) + 1) * (_fro(V) + 1) * (math.sqrt(init_sq) + r["dist_U"] * math.sqrt(mean_sq) + 1) / 0.5
    expected = (R + 3 * math.sqrt(5 * 3 + math.log(max(1, 0.5 * math.sqrt(m)) / 0.01))) ** 2
    assert r["overparam_bound"] == pytest.approx(expected, rel=1e-12)
    R = 8 * math.sqrt(2) * _fro(U) * _fro(V) * math.sqrt(mean_sq) / 0.5
    assert r["frobenius_bound"] == pytest.approx((R + 3 * math.sqrt(math.log(m / 0.01))) ** 2, rel=1e-12)
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in BOUNDS)


def test_default_margin_is_the_5th_percentile_of_signed_margins():
    model, init = _net(U, b, V, c), _net(U0, b0, V0, c)
    batches = [(torch.tensor(X, dtype=torch.float64), torch.tensor(Y))]
    signed = []
    for x, y in zip(X, Y):
        f, _ = _forward(U, b, V, c, x)
        signed.append(f[y] - max(f[j] for j in range(2) if j != y))
    r = two_layer_measures(model, init, batches)
    assert r["margin"] == pytest.approx(float(np.percentile(signed, 5)), rel=1e-12)
    if r["margin"] <= 0:
        assert math.isinf(r["overparam_bound"])


def test_nonpositive_margin_makes_margin_bounds_infinite():
    model, init = _net(U, b, V, c), _net(U0, b0, V0, c)
    r = two_layer_measures(model, init, [(torch.tensor(X, dtype=torch.float64), torch.tensor(Y))], margin=0.0)
    assert all(math.isinf(r[k]) for k in BOUNDS[1:]) and math.isfinite(r["vc_bound"])


@pytest.mark.parametrize("model", [MLP((4,), (5, 5), 3), CNN((1, 6, 6), (2,), 3),
                                   nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))],
                         ids=["deeper-mlp", "cnn", "tanh"])
def test_other_architectures_are_refused_naming_their_layers(model):
    with pytest.raises(MeasureError, match="two-layer ReLU"):
        two_layer_weights(model)


def test_mlp_with_one_hidden_layer_is_accepted_and_nan_weights_refused():
    model, init = MLP((4,), (6,), 3, seed=1), MLP((4,), (6,), 3, seed=1)
    u, v = two_layer_weights(model)
    assert u.weight.shape == (6, 4) and v.weight.shape == (3, 6)
    with torch.no_grad():
        v.weight[0, 0] = float("nan")
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(MeasureError, match="output"):
        two_layer_measures(model, init, [(x, y)])
    with pytest.raises(MeasureError, match="shape"):
        two_layer_measures(MLP((4,), (7,), 3), init, [(x, y)])


def test_compute_group_two_layer():
    """geomopt.measures.compute: the group equals the direct call; refused by name on a CNN, skipped under 'all'."""
    from geomopt.measures import compute
    model, init = MLP((4,), (6,), 3, seed=1), MLP((4,), (6,), 3, seed=2)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g))]
    out = compute(model, batches, init_model=init, measures=["two_layer"], delta=0.01)
    direct = two_layer_measures(model, init, batches, delta=0.01)
    for key in BOUNDS + ("dist_U", "fro_V", "margin"):
        assert out[key] == pytest.approx(direct[key], rel=1e-12, nan_ok=True)
    cnn = CNN((1, 6, 6), (2,), 3)
    images = [(torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,)))]
    with pytest.raises(MeasureError, match="two_layer"):
        compute(cnn, images, init_model=CNN((1, 6, 6), (2,), 3), measures=["two_layer"])
    everything = compute(cnn, images, init_model=CNN((1, 6, 6), (2,), 3), measures="all", sharpness_steps=1,
                         sharpness_restarts=1, flatness_samples=1, hessian_examples=4)
    assert any(w.startswith("two_layer: skipped") for w in everything["warnings"])
