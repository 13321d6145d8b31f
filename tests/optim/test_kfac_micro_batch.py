"""A model called twice for one loss (siamese): inside ``opt.micro_batch()`` the two forwards are one
micro-batch, the layer applied at two positions per example (KFC's shared weights). References: the
factors from autograd's output gradients of both calls (``A`` over all inputs, ``G`` summed over the calls
per example, output gradients times N), EKFAC's diagonal from per-example gradients of torch.func
(vmap of grad), in float64; without the context the forwards are two micro-batches (G differs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from geomopt.optim import EKFAC, KFAC

pytestmark = pytest.mark.usefixtures("float64_default")
N = 6


def siamese_loss(model, x1, x2, y):
    return F.cross_entropy(model(x1) - model(x2), y)


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 4, generator=g), torch.randn(N, 4, generator=g), torch.randint(0, 3, (N,), generator=g)


def step(cls, grouped: bool, **kw):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = cls(model, lr=0.0, momentum=0.0, kl_clip=None, damping=0.1, factor_decay=0.0, update_freq=1, inv_freq=1,
              **kw)
    x1, x2, y = data()
    opt.zero_grad()
    if grouped:
        with opt.micro_batch():
            loss = siamese_loss(model, x1, x2, y)
    else:
        loss = siamese_loss(model, x1, x2, y)
    loss.backward()
    opt.step()
    return model, opt.state[model.weight]


def test_kfac_factors_of_one_micro_batch_are_the_shared_weight_factors():
    model, state = step(KFAC, grouped=True)
    x1, x2, y = data()
    out1, out2 = model(x1), model(x2)
    g1, g2 = (N * g for g in torch.autograd.grad(F.cross_entropy(out1 - out2, y), [out1, out2]))
    a1, a2 = (torch.cat([x, torch.ones(N, 1)], 1) for x in (x1, x2))
    torch.testing.assert_close(state["A"], (a1.T @ a1 + a2.T @ a2) / (2 * N))
    torch.testing.assert_close(state["G"], (g1.T @ g1 + g2.T @ g2) / N)
    _, two = step(KFAC, grouped=False)  # the default: two micro-batches, each output gradient scaled by 2N
    torch.testing.assert_close(two["G"], 4 * (g1.T @ g1 + g2.T @ g2) / (2 * N))


def test_ekfac_diagonal_of_one_micro_batch_is_the_per_example_gradients():
    model, state = step(EKFAC, grouped=True, diag_decay=0.0)
    x1, x2, y = data()
    params = dict(model.named_parameters())

    def example_loss(p, a, b, t):
        return siamese_loss(lambda x: functional_call(model, p, (x,)), a[None], b[None], t[None])
    per = vmap(grad(example_loss), in_dims=(None, 0, 0, 0))({k: v.detach() for k, v in params.items()}, x1, x2, y)
    m = torch.cat([per["weight"], per["bias"][:, :, None]], 2)  # (N, d_out, d_in)
    ref = (state["U_G"].T @ m @ state["U_A"]).square().mean(0)
    torch.testing.assert_close(state["S"], ref)


def test_micro_batch_refuses_the_fisher_pass():
    model = nn.Linear(4, 3)
    opt = KFAC(model, fisher="true")
    with pytest.raises(ValueError, match="micro_batch"):
        with opt.micro_batch():
            pass
