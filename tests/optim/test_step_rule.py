"""The step rule alone (geomopt.optim.step_rule), against closed forms in float64: heavy ball as
torch.optim.SGD takes it, the KL clip's factor, block momentum over several steps, the Euclidean
fallback with weight decay, and the checks of group options and gradients."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.optim.geometry import Block, Euclidean
from geomopt.optim.step_rule import (BlockStep, block_steps, check_gradients, check_group, euclidean_deltas,
                                     heavy_ball_, kl_clip_factor, momentum_deltas)

pytestmark = pytest.mark.usefixtures("float64_default")


@given(lr=st.floats(1e-4, 1.0), momentum=st.sampled_from([0.0, 0.5, 0.9]), seed=st.integers(0, 1000))
@settings(max_examples=15, deadline=None)
def test_heavy_ball_is_torch_sgd(lr, momentum, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    sgd = torch.optim.SGD(ref, lr=lr, momentum=momentum, foreach=True)
    bufs: list = [None, None]
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        heavy_ball_(params, grads, bufs, lr=lr, momentum=momentum)
        for p, d in zip(ref, grads):
            p.grad = d.clone()
        sgd.step()
    for p, r in zip(params, ref):
        assert torch.equal(p, r.detach())


def test_kl_clip_factor_closed_form():
    d, g = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 1.0])]  # <d, g> = 5
    assert kl_clip_factor(d, g, [0.1], 1.0) == 1.0  # lr^2 <d, g> = 0.05 < 1
    assert kl_clip_factor(d, g, [1.0], 0.2) == pytest.approx(math.sqrt(0.2 / 5), rel=1e-15)
    assert kl_clip_factor([-d[0]], g, [1.0], 0.2) == 1.0  # not positive: no clip
    with pytest.raises(FloatingPointError, match="KL clipping"):
        kl_clip_factor([torch.tensor([math.inf, 0.0])], g, [1.0], 0.2)


def test_block_momentum_over_a_weight_and_bias_block():
    """buf_1 = nu D_1, buf_2 = m buf_1 + nu D_2, delta = -lr buf, stored per parameter."""
    w, b = torch.zeros(2, 3), torch.zeros(2)
    block = Block("layer", (w, b), lambda t: torch.cat([t[0], t[1][:, None]], 1), lambda m: [m[:, :3], m[:, 3]])
    group = {"lr": 0.5, "momentum": 0.9}
    state: dict = {w: {}, b: {}}
    d1, d2 = torch.ones(2, 4), torch.full((2, 4), 2.0)
    momentum_deltas([BlockStep(block, group, d1, d1)], state)
    (delta,) = momentum_deltas([BlockStep(block, group, d2, d2)], state)
    assert torch.equal(delta, -0.5 * (0.9 * d1 + d2))
    assert torch.equal(state[b]["momentum_buffer"], (0.9 * d1 + d2)[:, 3])


def test_euclidean_deltas_and_block_steps_of_the_euclidean_geometry():
    p, q = torch.nn.Parameter(torch.tensor([1.0, -2.0])), torch.nn.Parameter(torch.tensor([3.0]))
    p.grad, q.grad = torch.tensor([0.5, 0.5]), None
    group = {"params": [p, q], "lr": 0.1, "momentum": 0.0, "weight_decay": 0.2}
    ((param, delta),) = euclidean_deltas([group], set(), {})
    assert param is p and torch.allclose(delta, -0.1 * (p.grad + 0.2 * p.detach()), rtol=1e-15, atol=0)
    steps, covered = block_steps(Euclidean([p, q]), {p: group, q: group})
    assert covered == {p, q} and len(steps) == 1  # q has no gradient
    assert torch.allclose(steps[0].direction, p.grad + 0.2 * p.detach(), rtol=1e-15, atol=0)


@given(value=st.one_of(st.floats(max_value=-1e-12), st.just(math.nan), st.just(math.inf)),
       key=st.sampled_from(["lr", "weight_decay", "momentum"]))
@settings(max_examples=15, deadline=None)
def test_bad_group_options_are_named(value, key):
    group = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, key: value}
    with pytest.raises(ValueError, match=f"group 3.*{key}|{key}.*group 3"):
        check_group("X: param group 3", group)


def test_non_finite_gradient_is_named():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([0.0, math.nan])
    with pytest.raises(FloatingPointError, match="'fc.weight' has NaN/inf"):
        check_gradients("X", [{"params": [p]}], {p: "fc.weight"})
