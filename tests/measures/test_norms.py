"""Norm products, path norms and margins vs hand / brute-force computations; rescaling invariance."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset, DataLoader

from geomopt.geometry import random_node_rescaling
from geomopt.measures import MeasureError, compute, margin_quantile, margins
from geomopt.nn import MLP
from tests.geometry.reference import brute_force_pi


def _data(n=40, d=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(k, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _mlp(seed=0):
    return MLP((4,), (5, 3), 3, seed=seed).double()


def test_norm_products_by_hand():
    model, init = _mlp(0), _mlp(1)
    out = compute(model, _data(), init_model=init, measures=["norms"])
    ws = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    w0 = [m.weight.detach() for m in init.modules() if isinstance(m, nn.Linear)]
    fro = math.prod(float(w.norm()) ** 2 for w in ws)
    spec = math.prod(float(torch.linalg.svdvals(w)[0]) ** 2 for w in ws)
    assert out["frobenius_product"] == pytest.approx(fro, rel=1e-10)
    assert out["spectral_product"] == pytest.approx(spec, rel=1e-10)
    dist = math.sqrt(sum(float((p - q).detach().pow(2).sum()) for p, q in zip(model.parameters(), init.parameters())))
    assert out["dist_init"] == pytest.approx(dist, rel=1e-12)
    assert out["dist_init_frobenius_sum"] == pytest.approx(sum(float((w - v).norm()) ** 2 for w, v in zip(ws, w0)))


def test_path_norms_equal_brute_force_enumeration():
    model = _mlp(2)
    layers = [(m.weight.detach(), m.bias.detach()) for m in model.modules() if isinstance(m, nn.Linear)]
    out = compute(model, _data(), measures=["path"])
    assert out["l2_path"] == pytest.approx(brute_force_pi(layers, 2.0), rel=1e-10)
    assert out["l1_path"] == pytest.approx(brute_force_pi(layers, 1.0) ** 2, rel=1e-10)


def test_margins_equal_direct_computation_and_are_signed():
    model = _mlp(3)
    loader = _data()
    got = margins(model, loader)
    ref = []
    for x, y in loader:
        out = model(x).detach()
        for o, t in zip(out, y):
            others = [float(o[j]) for j in range(len(o)) if j != int(t)]
            ref.append(float(o[t]) - max(others))
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))
    assert (got < 0).any()  # an untrained net misclassifies: margins are NOT absolute values
    q = margin_quantile(got, 0.05)
    srt = sorted(ref)
    pos = 0.05 * (len(srt) - 1)
    lo = math.floor(pos)
    assert q == pytest.approx(srt[lo] + (pos - lo) * (srt[lo + 1] - srt[lo]))  # the 5th percentile, signed
    assert q < 0
    out = compute(model, loader, measures=["margin", "norms", "bounds"])
    assert out["margin"] == pytest.approx(q)
    assert math.isnan(out["l2_path_over_margin" if "l2_path_over_margin" in out else "frobenius_over_margin"])
    assert any("margin" in w for w in out["warnings"])


def _separable(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    model = _mlp(seed)
    out = model(x).detach()
    y = out.argmax(1)  # labels the model classifies correctly: positive margins
    top2 = out.topk(2, dim=1).values
    keep = top2[:, 0] - top2[:, 1] > 1e-3
    x, y = x[keep][:60], y[keep][:60]
    return model, DataLoader(TensorDataset(x, y), batch_size=32)


def test_rescaling_invariance_of_path_and_margin_measures():
    model, loader = _separable(4)
    before = compute(model, loader, measures=["margin", "norms", "path", "bounds"])
    random_node_rescaling(model, torch.Generator().manual_seed(0), 0.2, 5.0)
    after = compute(model, loader, measures=["margin", "norms", "path", "bounds"])
    assert before["margin"] > 0
    for key in ["margin", "l1_path_over_margin", "l2_path_over_margin", "l2_path", "l1_path"]:
        assert after[key] == pytest.approx(before[key], rel=1e-8), key
    # sanity check: the Frobenius product is not invariant
    assert abs(after["frobenius_product"] / before["frobenius_product"] - 1) > 0.05


def test_bounds_by_hand():
    model, loader = _separable(5)
    out = compute(model, loader, measures=["margin", "norms", "bounds"])
    ws = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    s = [float(torch.linalg.svdvals(w)[0]) for w in ws]
    f = [float(w.norm()) for w in ws]
    g = out["margin"]
    cplx = math.prod(v ** 2 for v in s) * sum(a ** 2 / b ** 2 for a, b in zip(f, s)) / g ** 2
    assert out["spectral_complexity_over_margin"] == pytest.approx(cplx, rel=1e-9)
    x = torch.cat([b[0] for b in loader])
    r = math.prod(s) * sum((float(w.norm(dim=1).sum()) / v) ** (2 / 3) for w, v in zip(ws, s)) ** 1.5
    width = max(4, 5, 3, 3)
    assert out["bartlett_bound"] == pytest.approx(float(x.norm()) * r * math.log(width) / (g * len(x)), rel=1e-9)


def test_unsupported_module_raises_when_asked_and_is_skipped_under_all():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with pytest.raises(MeasureError, match="path"):
        compute(model, _data(), measures=["path"])
    out = compute(model, _data(), measures="all", sharpness_steps=2, sharpness_restarts=1, flatness_samples=2)
    assert "l2_path" not in out and any(w.startswith("path") for w in out["warnings"])
    with pytest.raises(ValueError, match="unknown measure group"):
        compute(model, _data(), measures=["nope"])


@pytest.mark.parametrize("group", ["margin", "norms", "path", "bounds", "sharpness", "flatness"])
def test_nan_weights_raise_naming_the_parameter_in_every_group(group):
    model = _mlp()
    with torch.no_grad():
        model[3].bias[1] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '3.bias' \(shape \(3,\)\) has 1 non-finite"):
        compute(model, _data(), measures=[group], sharpness_steps=2, sharpness_restarts=1, flatness_samples=2)


def test_path_norms_of_nan_weights_name_the_parameter():
    from geomopt.geometry import path_norm, path_scales, rnn_path_norm, rnn_path_scales
    from geomopt.nn import ReLURNN
    model = _mlp()
    with torch.no_grad():
        model[1].weight[0, 0] = float("-inf")
    for fn in (path_norm, path_scales):
        with pytest.raises(ValueError, match="parameter '1.weight'"):
            fn(model, 2.0, (4,))
    rnn = ReLURNN(2, 4, 1)
    with torch.no_grad():
        rnn.recurrent.weight[1, 1] = float("nan")
    for fn in (rnn_path_norm, rnn_path_scales):
        with pytest.raises(ValueError, match="parameter 'recurrent.weight'"):
            fn(rnn, 5)


def test_loss_is_evaluated_only_for_the_groups_that_need_it():
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        return nn.functional.cross_entropy(out, y)

    out = compute(_mlp(), _data(), measures=["norms", "path", "bounds"], loss_fn=loss_fn)
    assert not calls and "train_loss" not in out and out["l2_path"] > 0
    out = compute(_mlp(), _data(), measures=["margin"], loss_fn=loss_fn)
    assert calls and out["train_loss"] > 0
