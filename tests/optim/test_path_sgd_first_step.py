"""PathSGD(normalize="first-step"): the ratio (sum ||g|| / sum ||g/gamma||^2)^(1/2) of the first step against the
formula with dense reference scales (geometry.path_scales / rnn_path_scales), kept fixed afterwards and across
a state_dict round trip."""

import pytest
import torch

from geomopt.geometry import path_scales, rnn_path_scales
from geomopt.nn import MLP, ReLURNN
from geomopt.optim import PathSGD, first_step_ratio


def _rnn():
    return ReLURNN(2, 6, 1, init="irnn", seq_len=5, seed=1).double()


def _mlp():
    return MLP((4,), (5, 3), 3, seed=0).double()


def _grads(model, seed):
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, ReLURNN):
        x = torch.randn(8, 5, 2, generator=g, dtype=torch.float64)
        loss = ((model(x) - 1.0) ** 2).mean()
    else:
        x = torch.randn(8, 4, generator=g, dtype=torch.float64)
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(3, (8,), generator=g))
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _scales(model):
    return rnn_path_scales(model, 5) if isinstance(model, ReLURNN) else path_scales(model, 2.0, (4,))


def _formula(grads, scales):
    num = sum(float(g.norm()) for g in grads.values())
    den = sum(float((grads[n] / scales[n]).norm()) ** 2 for n in grads)
    return (num / den) ** 0.5


@pytest.mark.parametrize("make", [_rnn, _mlp])
def test_first_step_ratio_matches_the_formula_and_stays_fixed(make):
    model = make()
    opt = PathSGD(model, lr=0.1, normalize="first-step")
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    g1, k1 = _grads(model, 0), _scales(model)
    ratio = _formula(g1, k1)
    opt.step()
    assert opt.param_groups[0]["ratio"] == pytest.approx(ratio, rel=1e-10)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w0[n] - 0.1 * ratio * g1[n] / k1[n], rtol=1e-10, atol=1e-12)
    # second step: new gradient and scales, the same ratio (a fresh formula value would differ)
    w1 = {n: p.detach().clone() for n, p in model.named_parameters()}
    g2, k2 = _grads(model, 1), _scales(model)
    assert _formula(g2, k2) != pytest.approx(ratio, rel=1e-6)
    opt.step()
    assert opt.param_groups[0]["ratio"] == ratio
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w1[n] - 0.1 * ratio * g2[n] / k2[n], rtol=1e-10, atol=1e-12)
    # a resumed optimizer keeps the saved ratio instead of computing a new one at its first step
    fresh = PathSGD(model, lr=0.1, normalize="first-step")
    fresh.load_state_dict(opt.state_dict())
    _grads(model, 2)
    fresh.step()
    assert fresh.param_groups[0]["ratio"] == ratio


def test_default_has_no_ratio_and_bad_option_or_zero_gradient_raise():
    model = _rnn()
    opt = PathSGD(model, lr=0.1)
    _grads(model, 0)
    opt.step()
    assert opt.param_groups[0]["ratio"] is None
    with pytest.raises(ValueError, match="normalize must be one of"):
        PathSGD(model, lr=0.1, normalize="first")
    with pytest.raises(ValueError, match="first gradient must be finite and non-zero"):
        first_step_ratio([torch.zeros(3)], [torch.ones(3)], 1e-12)
    opt = PathSGD(model, lr=0.1, normalize="first-step")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(ValueError, match="first-step ratio"):
        opt.step()
