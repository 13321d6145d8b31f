"""Adaptive damping (Levenberg-Marquardt, Martens & Grosse 2015 sec. 6.5) and the automatic step size and
momentum of the exact 2x2 quadratic model (sec. 7), against independent references: on a quadratic
(linear model, Gaussian likelihood, exact GGN = Hessian) the model is exact, so rho = 1 and the damping
shrinks by omega = 0.95^T1 every T1 steps; on a tanh network rho equals the ratio computed from the
loss before/after and the dense GGN by torch.func; the automatic step satisfies the optimality
conditions of the quadratic model built from the dense Hessian."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from geomopt.optim import EKFAC, KFAC

pytestmark = pytest.mark.usefixtures("float64_default")


def gaussian_loss(out, y):
    return 0.5 * (out - y).square().sum(1).mean()


def quadratic_case(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    data = [(torch.randn(8, 3), torch.randn(8, 2)) for _ in range(4)]
    return model, data


def closure_for(opt, model, x, y, loss_fn):
    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    return closure


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
@pytest.mark.parametrize("interval", [1, 2])
def test_rho_is_one_on_a_quadratic_and_damping_shrinks_by_omega(cls, interval):
    model, data = quadratic_case()
    opt = cls(model, kl_clip=None, lr=0.7, damping=0.3, momentum=0.5, weight_decay=0.01, factor_decay=0.5,
              update_freq=1,
              inv_freq=1, fisher="ggn", likelihood="gaussian", adaptive_damping=True, damping_interval=interval)
    damping = 0.3
    for k, (x, y) in enumerate(data):
        opt.step(closure_for(opt, model, x, y, gaussian_loss))
        if (k + 1) % interval == 0:
            assert opt.last_rho == pytest.approx(1.0, rel=1e-9)
            damping *= 0.95 ** interval  # rho > 3/4: lambda <- omega lambda, omega = (19/20)^T1
        assert opt.param_groups[0]["damping"] == pytest.approx(damping, rel=1e-12)
    if cls is KFAC:  # the inverses follow the new damping at the next step
        x, y = data[0]
        opt.step(closure_for(opt, model, x, y, gaussian_loss))
        assert float(opt.state[model.weight]["inv_damping"]) == pytest.approx(damping, rel=1e-12)


def tanh_case(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    return model, x, y


def dense_ggn(model, x):
    """(1/N) sum_n J_n^T (diag(p) - p p^T) J_n in parameter order, by torch.func.jacrev."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)  # (N, C, *shape)
    j = torch.cat([jac[k].reshape(x.shape[0], 3, -1) for k in params], 2)  # (N, C, P)
    prob = torch.softmax(model(x).detach(), -1)
    h = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", j, h, j) / x.shape[0]


@pytest.mark.parametrize("fisher", ["ggn", "empirical"])
@pytest.mark.parametrize("lr", [0.05, 3.0, 10.0])
def test_rho_and_damping_rule_match_a_dense_reference_on_a_tanh_net(fisher, lr):
    """The quadratic model's curvature is the exact GGN whatever the factors' Fisher (Martens & Grosse's exact
    F). lr 0.05 and 3: rho > 3/4, the damping shrinks; lr 10: the model predicts an increase (M(delta) >
    M(0)), rho is taken as -inf and the damping grows."""
    model, x, y = tanh_case()
    opt = KFAC(model, momentum=0.0, kl_clip=None, lr=lr, damping=0.1, update_freq=1, inv_freq=1, fisher=fisher,
               adaptive_damping=True,
               damping_interval=1)
    theta = flat(model)
    curvature = dense_ggn(model, x)
    g = torch.cat([p.reshape(-1) for p in torch.autograd.grad(F.cross_entropy(model(x), y), model.parameters())])
    h0 = float(F.cross_entropy(model(x), y))
    opt.step(closure_for(opt, model, x, y, F.cross_entropy))
    delta = flat(model) - theta
    h1 = float(F.cross_entropy(model(x), y))
    predicted = float(g @ delta + 0.5 * delta @ curvature @ delta)
    if predicted < 0:
        assert opt.last_rho == pytest.approx((h1 - h0) / predicted, rel=1e-8)
    else:
        assert lr == 10.0 and opt.last_rho == -math.inf
    factor = 0.95 if opt.last_rho > 0.75 else 1 / 0.95 if opt.last_rho < 0.25 else 1.0
    assert (factor < 1) == (lr < 10.0)
    assert opt.param_groups[0]["damping"] == pytest.approx(0.1 * factor, rel=1e-12)


def test_re_evaluation_is_invisible():
    """The closure's second evaluation (at the new parameters, with the first one's dropout masks) leaves the
    user's RNG stream, the BatchNorm buffers and the gradients as the first evaluation left them: reference,
    a twin model on which only the closure ran."""
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 3))
        with pytest.warns(UserWarning, match="plain gradient"):
            opt = KFAC(model, momentum=0.0, kl_clip=None, lr=0.05, damping=0.1, update_freq=1, inv_freq=1,
                       adaptive_damping=True,
                       damping_interval=1)
        return model, opt
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    twin, twin_opt = build()
    torch.manual_seed(1)
    closure_for(twin_opt, twin, x, y, F.cross_entropy)()
    after_closure = torch.get_rng_state()
    model, opt = build()
    torch.manual_seed(1)
    opt.step(closure_for(opt, model, x, y, F.cross_entropy))
    assert torch.equal(torch.get_rng_state(), after_closure)
    for (k, v), (_, w) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(v, w), k
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad)
    assert math.isfinite(opt.last_rho)


def test_adaptive_step_minimizes_the_exact_quadratic_model():
    """On the quadratic, with C = H + (lambda + eta) I from the dense Hessian: the first update delta minimizes
    M along itself ((g + C delta)^T delta = 0); later ones over span{Delta, delta_0}, so g + C delta is
    orthogonal to delta and to the previous update."""
    model, data = quadratic_case(1)
    opt = KFAC(model, lr=123.0, momentum=0.0, damping=0.2, weight_decay=0.01, update_freq=1, inv_freq=1,
               fisher="ggn", likelihood="gaussian", adaptive_step=True)
    prev = None
    for x, y in data[:3]:
        theta = flat(model)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        names = list(params)

        def h(flat_p):
            ps, i = {}, 0
            for k in names:
                ps[k] = flat_p[i:i + params[k].numel()].reshape(params[k].shape)
                i += params[k].numel()
            return gaussian_loss(functional_call(model, ps, (x,)), y) + 0.005 * flat_p.square().sum()
        c = hessian(h)(theta) + 0.2 * torch.eye(len(theta))
        g = torch.func.grad(h)(theta)
        opt.step(closure_for(opt, model, x, y, gaussian_loss))
        delta = flat(model) - theta
        residual = g + c @ delta
        scale = float(g.norm() * delta.norm())
        assert abs(float(residual @ delta)) < 1e-9 * scale
        if prev is not None:
            assert abs(float(residual @ prev)) < 1e-9 * float(g.norm() * prev.norm())
            assert opt.last_momentum != 0.0
        prev = delta
    assert opt.last_step_size > 0


def test_errors():
    model, data = quadratic_case()
    opt = KFAC(model, adaptive_damping=True)
    x, y = data[0]
    gaussian_loss(model(x), y).backward()
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="adaptive_step"):
        KFAC(model, kl_clip=0.01, adaptive_step=True)
    with pytest.raises(ValueError, match="damping_decay"):
        EKFAC(model, damping_decay=1.0)
    with pytest.raises(ValueError, match="damping_interval"):
        EKFAC(model, damping_interval=0)
    with pytest.raises(ValueError, match="max_damping"):
        KFAC(model, min_damping=1.0, max_damping=0.5)
