"""PathSGD as a torch.optim.Optimizer, checked against a hand-written dense update."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from geomopt.geometry import UnsupportedModuleError, path_scales
from geomopt.nn import CNN, MLP
from geomopt.optim import PathSGD


def _loss(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = model.input_shape
    x = torch.randn((8, *shape), generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    return nn.functional.cross_entropy(model(x), y)


def _grads(model):
    model.zero_grad()
    _loss(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("make", [lambda: MLP((5,), (4, 3), 3, seed=1).double(),
                                  lambda: CNN((1, 6, 6), (2, 3), 3, seed=1).double(),
                                  # a 520 x 510 weight exceeds one cache block: the blocked rank-one update
                                  lambda: MLP((5,), (510, 520), 3, seed=1).double()],
                         ids=["mlp", "cnn", "mlp-blocked"])
@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.01), (0.5, 0.1)])
def test_step_equals_dense_formula(make, momentum, weight_decay):
    """Two steps of PathSGD == w - lr * buf, buf = m * buf + (g + wd w) / gamma, gamma from path_scales."""
    model, ref = make(), make()
    opt = PathSGD(model, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    bufs = {}
    for _ in range(2):
        gamma = path_scales(ref)
        grads = _grads(ref)
        with torch.no_grad():
            for n, p in ref.named_parameters():
                d = (grads[n] + weight_decay * p) / gamma[n]
                bufs[n] = momentum * bufs[n] + d if n in bufs and momentum else d
                p -= 0.1 * bufs[n]
        model.zero_grad()
        _loss(model).backward()
        opt.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=n)


def test_scales_are_recomputed_not_accumulated():
    """Calling step twice with the same weights and gradients uses the same scales (the authors'
    script accumulated the squared copy's gradient across steps)."""
    model = MLP((5,), (4,), 3).double()
    opt = PathSGD(model, lr=0.0)
    first = opt.scales.dense()
    for _ in range(3):
        _loss(model).backward()
        opt.step()
    for n, g in opt.scales.dense().items():
        torch.testing.assert_close(g, first[n])


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a = MLP((5,), (4, 4), 3, seed=2).double()
    opt_a = PathSGD(a, lr=0.05, momentum=0.9)
    for _ in range(3):
        opt_a.zero_grad(); _loss(a).backward(); opt_a.step()
    b = MLP((5,), (4, 4), 3, seed=7).double()
    b.load_state_dict(a.state_dict())
    opt_b = PathSGD(b, lr=0.5, momentum=0.1)
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    opt_b.load_state_dict(torch.load(buffer))
    assert opt_b.param_groups[0]["lr"] == 0.05 and opt_b.param_groups[0]["momentum"] == 0.9
    for _ in range(2):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad(); _loss(m).backward(); o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_param_groups_and_scheduler():
    model = MLP((5,), (4,), 3).double()
    first, rest = model[1], model[3]
    opt = PathSGD(model, lr=0.1, param_groups=[{"params": first.parameters(), "lr": 0.0},
                                               {"params": rest.parameters()}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    before = first.weight.clone()
    _loss(model).backward()
    opt.step(); sched.step()
    assert torch.equal(first.weight, before)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.05)


def test_bad_hyperparameters_and_foreign_params():
    model = MLP((5,), (4,), 3)
    for kwargs in ({"lr": -1}, {"momentum": 1.0}, {"weight_decay": -1}, {"eps": 0}):
        with pytest.raises(ValueError):
            PathSGD(model, **{"lr": 0.1, **kwargs})
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not a parameter"):
        PathSGD(model, lr=0.1, param_groups=[{"params": other.parameters()}])


BAD_OPTIONS = [("lr", float("nan")), ("lr", float("inf")), ("lr", -0.1), ("weight_decay", float("nan")),
               ("weight_decay", -1e-3), ("weight_decay", float("inf")), ("eps", float("nan")), ("eps", 0.0),
               ("eps", float("-inf")), ("momentum", 1.0), ("momentum", float("nan")), ("momentum", -0.5)]


@pytest.mark.parametrize("key,bad", BAD_OPTIONS)
def test_options_are_validated_at_construction_in_groups_and_at_step(key, bad):
    """Like K-FAC: a NaN, infinite or out-of-range option is an error naming it and its group, never NaN weights."""
    model = MLP((5,), (4,), 3).double()
    with pytest.raises(ValueError, match=f"PathSGD: option: {key} must be"):
        PathSGD(model, **{"lr": 0.1, key: bad})
    with pytest.raises(ValueError, match=f"PathSGD: param group 1: {key} must be"):
        PathSGD(model, lr=0.1, param_groups=[{"params": [model[1].weight]},
                                             {"params": [model[1].bias], key: bad}])
    opt = PathSGD(model, lr=0.1, param_groups=[{"params": [model[1].weight]}])
    with pytest.raises(ValueError, match=f"PathSGD: param group 1: {key} must be"):
        opt.add_param_group({"params": [model[1].bias], key: bad})
    opt = PathSGD(model, lr=0.1, momentum=0.5)
    _loss(model).backward()
    opt.param_groups[0][key] = bad  # as a scheduler or a user might
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=f"PathSGD: param group 0: {key} must be"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("kwargs", [{"lr": "0.1"}, {"lr": None}, {"momentum": True}, {"p": "2"}, {"seq_len": 2.5}])
def test_options_of_the_wrong_type_are_type_errors(kwargs):
    with pytest.raises(TypeError, match=f"PathSGD: option: {next(iter(kwargs))} must be"):
        PathSGD(MLP((5,), (4,), 3), **{"lr": 0.1, **kwargs})


def test_non_homogeneous_model_rejected_at_construction():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModuleError, match=r"'1' \(BatchNorm1d\)"):
        PathSGD(model, lr=0.1)


def test_help_shows_formula():
    import geomopt
    assert "gamma_e" in geomopt.optim.PathSGD.__doc__ and "lr *" in geomopt.optim.PathSGD.__doc__
