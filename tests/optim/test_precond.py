"""A geometry as a preconditioner in front of a torch optimizer: ``precond.step(); opt.step()``.

Reference: the composed optimizers themselves. KFAC/EKFAC without momentum and KL clip apply
``w += -lr D``, SGD ``w.add_(D, alpha=-lr)`` (one fused multiply-add): equal to 1e-12 relative in float64
over several steps with every schedule; PathSGD's small-weight path applies the same multi-tensor
addition as SGD: bit-identical. Plain SGD is far from each (the comparison can fail)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomopt.nn import ReLURNN
from geomopt.optim import (EKFAC, KFAC, EKFACPreconditioner, Euclidean, Geometry, KFACPreconditioner,
                           PathPreconditioner, PathSGD, Preconditioner)

pytestmark = pytest.mark.usefixtures("float64_default")
STEPS = 5


def mlp(seed=0, norm=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7), nn.ReLU()] + ([nn.LayerNorm(7)] if norm else []) + [nn.Linear(7, 3)]
    return nn.Sequential(*layers)


def batches(shape=(5,), n=6, steps=STEPS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(steps)]


def run_optimizer(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def run_preconditioned(model, precond, lr, data):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if precond is not None:
            precond.step()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


KRONECKER = [dict(update_freq=1, inv_freq=1), dict(update_freq=2, inv_freq=3), dict(fisher="true", seed=4),
             dict(fisher="ggn", update_freq=1, inv_freq=2)]


@pytest.mark.parametrize("options", KRONECKER)
@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_kronecker_preconditioner_with_sgd_takes_the_optimizers_steps(kind, options):
    optimizer, precond = (KFAC, KFACPreconditioner) if kind == "kfac" else (EKFAC, EKFACPreconditioner)
    data, lr = batches(), 0.1
    ref = run_optimizer(m := mlp(norm=True), optimizer(m, lr=lr, momentum=0.0, kl_clip=None, damping=0.05, **options),
                        data)
    got = run_preconditioned(m := mlp(norm=True), precond(m, damping=0.05, **options), lr, data)
    assert rel(got, ref) < 1e-12
    sgd = run_preconditioned(mlp(norm=True), None, lr, data)
    assert rel(sgd, ref) > 1e-3  # preconditioning matters here: the comparison can fail


def test_kl_clip_of_the_preconditioner_is_the_optimizers():
    data, lr = batches(), 0.5
    ref = run_optimizer(m := mlp(), KFAC(m, lr=lr, momentum=0.0, kl_clip=1e-4, update_freq=1, inv_freq=1), data)
    got = run_preconditioned(m := mlp(), KFACPreconditioner(m, kl_clip=1e-4, lr=lr, update_freq=1, inv_freq=1), lr,
                             data)
    unclipped = run_preconditioned(m := mlp(), KFACPreconditioner(m, update_freq=1, inv_freq=1), lr, data)
    assert rel(got, ref) < 1e-12 and rel(unclipped, ref) > 1e-3


@given(damping=st.floats(1e-3, 1.0), update_freq=st.integers(1, 3), inv_freq=st.integers(1, 3),
       seed=st.integers(0, 2 ** 16))
@settings(max_examples=8, deadline=None)
def test_kfac_preconditioner_matches_kfac_for_any_schedule(damping, update_freq, inv_freq, seed):
    data, lr = batches(steps=4, seed=seed), 0.05
    options = dict(damping=damping, update_freq=update_freq, inv_freq=inv_freq)
    ref = run_optimizer(m := mlp(seed), KFAC(m, lr=lr, momentum=0.0, kl_clip=None, **options), data)
    got = run_preconditioned(m := mlp(seed), KFACPreconditioner(m, **options), lr, data)
    assert rel(got, ref) < 1e-12


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 3))


@pytest.mark.parametrize("case", ["mlp", "cnn", "rnn", "rnn-k12"])
def test_path_preconditioner_with_sgd_is_path_sgd_bit_for_bit(case):
    lr = 0.05
    if case == "mlp":
        make, shape, extra = mlp, (5,), {}
    elif case == "cnn":
        make, shape, extra = cnn, (1, 4, 4), dict(input_shape=(1, 4, 4))
    else:
        make, shape = (lambda: ReLURNN(2, 4, 3, init="irnn", seed=0, seq_len=3).double()), (3, 2)
        extra = dict(include_kappa2=case == "rnn-k12")
    data = batches(shape)
    ref = run_optimizer(m := make(), PathSGD(m, lr=lr, **extra), data)
    got = run_preconditioned(m := make(), PathPreconditioner(m, **extra), lr, data)
    assert torch.equal(got, ref)
    assert rel(run_preconditioned(make(), None, lr, data), ref) > 1e-4


def test_euclidean_preconditioner_leaves_gradients_alone():
    model = mlp()
    x, y = batches(steps=1)[0]
    F.cross_entropy(model(x), y).backward()
    before = [p.grad.clone() for p in model.parameters()]
    Preconditioner(Euclidean(list(model.parameters()))).step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))


class Annealed(Geometry):
    """A user's geometry: ``P = (1 + step) / scale I`` (``scale`` a per-group option)."""

    def update(self, step, groups):
        self.factor = 1.0 / (1.0 + step)

    def direction(self, block, grad, group):
        return grad * (self.factor * group["scale"])


def test_a_users_geometry_plugs_into_the_preconditioner():
    data, lr = batches(steps=3), 0.1
    model, ref = mlp(), mlp()
    got = run_preconditioned(model, Preconditioner(Annealed(list(model.parameters())), {"scale": 2.0}), lr, data)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    for k, (x, y) in enumerate(data):
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        for p in ref.parameters():
            p.grad.mul_(2.0 / (1.0 + k))
        opt.step()
    assert torch.equal(got, torch.cat([p.detach().reshape(-1) for p in ref.parameters()]))


@pytest.mark.parametrize("precond_class", [KFACPreconditioner, EKFACPreconditioner])
def test_state_dict_resumes_the_same_trajectory(precond_class):
    data, lr = batches(steps=6), 0.1
    model = mlp()
    precond = precond_class(model, update_freq=1, inv_freq=2, fisher="true", seed=3)
    run_preconditioned(model, precond, lr, data[:3])
    copy_model = copy.deepcopy(model)
    resumed = precond_class(copy_model, update_freq=1, inv_freq=2, fisher="true", seed=99)
    resumed.load_state_dict(precond.state_dict())
    a = run_preconditioned(model, precond, lr, data[3:])
    b = run_preconditioned(copy_model, resumed, lr, data[3:])
    assert torch.equal(a, b)
    assert precond.state_dict()["geometry"]["state"]  # the factors are in it


def test_bad_options_and_non_finite_gradients_are_errors():
    model = mlp()
    with pytest.raises(ValueError, match="kl_clip needs lr"):
        KFACPreconditioner(model, kl_clip=1e-3)
    with pytest.raises(ValueError, match="damping"):
        KFACPreconditioner(model, damping=-1.0)
    with pytest.raises(ValueError, match="update_freq"):
        KFACPreconditioner(model, update_freq=0)
    with pytest.raises(ValueError, match="diag_freq"):
        EKFACPreconditioner(model, diag_freq=0)
    with pytest.raises(ValueError, match="eps"):
        PathPreconditioner(model, eps=0.0)
    precond = KFACPreconditioner(model)
    x, y = batches(steps=1)[0]
    F.cross_entropy(model(x), y).backward()
    model[0].weight.grad[0, 0] = float("nan")
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="0.weight"):
        precond.step()
    for p, g in zip(model.parameters(), before):  # no gradient changed
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0, equal_nan=True)


def test_discard_forgets_a_thrown_away_batch():
    data, lr = batches(steps=2), 0.1
    ref = run_preconditioned(m := mlp(), KFACPreconditioner(m, update_freq=1, inv_freq=1), lr, data)
    model = mlp()
    precond = KFACPreconditioner(model, update_freq=1, inv_freq=1)
    x, y = batches(steps=1, seed=9)[0]
    F.cross_entropy(model(x), y).backward()  # a batch whose gradients are thrown away
    precond.discard()
    assert torch.equal(run_preconditioned(model, precond, lr, data), ref)


@given(damping=st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf"))),
       kind=st.sampled_from([KFACPreconditioner, EKFACPreconditioner]))
@settings(max_examples=12, deadline=None)
def test_a_damping_that_is_not_finite_and_positive_is_refused(damping, kind):
    model = mlp()
    with pytest.raises(ValueError, match=f"{kind.__name__}: option.*damping"):
        kind(model, damping=damping)
    assert not model[0]._forward_hooks  # refused before any hook was registered
