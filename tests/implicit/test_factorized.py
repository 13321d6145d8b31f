"""Factorized gradient descent and the end-to-end dynamics.

References: central finite differences in float64 for the factor gradients (sensing, completion,
l_p regression; any depth; symmetric U U^T); autograd through the product as a second reference;
the closed form of depth-1 GD from zero on completion (observed entries follow
y (1 - (1 - lr/m)^t), unobserved stay 0); the same runs done one by one (batching); the
product of per-factor updates under balanced init to first order in the step; the single-output
closed form of Arora, Cohen & Hazan 2018 for the end-to-end rule.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.implicit import (
    Completion,
    GaussianSensing,
    RegressionObjective,
    SensingObjective,
    balanced_factors,
    balancedness,
    end_to_end,
    end_to_end_direction,
    end_to_end_vector_step,
    factor_grads,
    init_factors,
    random_low_rank,
    run_end_to_end,
    run_factorized,
    run_sweep,
)


def _fd_grads(objective, factors, symmetric, eps=1e-6):
    out = []
    for j, f in enumerate(factors):
        g = torch.zeros_like(f)
        for idx in range(f.numel()):
            plus = [x.clone() for x in factors]
            minus = [x.clone() for x in factors]
            plus[j].view(-1)[idx] += eps
            minus[j].view(-1)[idx] -= eps
            lp = objective.loss_and_grad(end_to_end(plus, symmetric))[0].sum()
            lm = objective.loss_and_grad(end_to_end(minus, symmetric))[0].sum()
            g.view(-1)[idx] = (lp - lm) / (2 * eps)
        out.append(g)
    return out


def _objective(kind, n1, n2, seed):
    if kind == "sensing":
        op = GaussianSensing(n1, n2, 7, seed=seed)
    elif kind == "completion":
        op = Completion.random(n1, n2, max(1, n1 * n2 // 2), seed=seed)
    else:
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(9, n2, generator=g, dtype=torch.float64)
        Y = torch.randn(9, n1, generator=g, dtype=torch.float64)
        return RegressionObjective(X, Y, p=4 if kind == "l4" else 2)
    return SensingObjective(op, op(random_low_rank(n1, n2, 1, seed=seed)))


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(["sensing", "completion", "l2", "l4"]), depth=st.integers(1, 4),
       n1=st.integers(1, 4), n2=st.integers(1, 4), width=st.integers(1, 4), seed=st.integers(0, 100))
def test_factor_gradients_equal_finite_differences(kind, depth, n1, n2, width, seed):
    objective = _objective(kind, n1, n2, seed)
    factors = init_factors((n1, n2), depth, alphas=[1.0, 0.5], seeds=[seed, seed + 1], width=width)
    W = end_to_end(factors)
    loss, grad_w = objective.loss_and_grad(W)
    grads = factor_grads(factors, grad_w)
    # central differences with step 1e-6 carry a rounding error of about eps_64 |loss| / 1e-6 (the l4 loss
    # reaches 1e4 at depth 3, where that is ~1e-5 in every entry)
    atol = 1e-7 + 10 * torch.finfo(torch.float64).eps * float(loss.abs().sum()) / 1e-6
    for g, fd in zip(grads, _fd_grads(objective, factors, False)):
        torch.testing.assert_close(g, fd, rtol=1e-5, atol=atol)


def test_symmetric_gradient_equals_finite_differences_and_autograd():
    op = GaussianSensing(4, 4, 6, seed=0, symmetric=True)
    objective = SensingObjective(op, torch.randn(6, dtype=torch.float64))
    (U,) = init_factors((4, 4), 2, alphas=[1.0], seeds=[0], symmetric=True, width=3)
    (g,) = factor_grads([U], objective.loss_and_grad(end_to_end([U], True))[1], symmetric=True)
    torch.testing.assert_close(g, _fd_grads(objective, [U], True)[0], rtol=1e-6, atol=1e-8)
    U_ = U.clone().requires_grad_(True)
    objective.loss_and_grad(U_ @ U_.transpose(1, 2))[0].sum().backward()
    torch.testing.assert_close(g, U_.grad)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_run_factorized_steps_equal_autograd_gradient_descent(depth):
    """run_factorized (prefix products shared by W and the gradients) vs plain GD with autograd."""
    objective = _objective("completion", 4, 3, seed=3)
    factors = init_factors((4, 3), depth, alphas=[0.7], seeds=[5], width=3)
    lr, steps = 0.3, 4
    result = run_factorized(objective, factors, lr=lr, steps=steps)
    ref = [f.clone().requires_grad_(True) for f in factors]
    for _ in range(steps):
        W = ref[0]
        for f in ref[1:]:
            W = f @ W
        grads = torch.autograd.grad(objective.loss_and_grad(W)[0].sum(), ref)
        with torch.no_grad():
            for f, g in zip(ref, grads):
                f -= lr * g
    for got, want in zip(result.factors, ref):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


def test_depth1_completion_from_zero_matches_closed_form():
    n, m, lr, steps = 6, 14, 0.9, 25
    op = Completion.random(n, n, m, seed=4)
    y = torch.randn(m, dtype=torch.float64)
    factors = init_factors((n, n), 1, alphas=[0.0], seeds=[0])
    res = run_factorized(SensingObjective(op, y), factors, lr=lr * m, steps=steps, log_every=5)
    expected = op.adjoint(y * (1 - (1 - lr) ** steps))  # grad of 1/(2m)||.||^2 is r/m on observed entries
    torch.testing.assert_close(res.W[0], expected, rtol=1e-12, atol=1e-12)
    assert float(res.W[0][op.mask() == 0].abs().max()) == 0.0


@pytest.mark.parametrize("depth,symmetric,adaptive", [(1, False, False), (2, True, False), (3, False, True),
                                                      (4, False, False)])
def test_batched_runs_equal_one_by_one(depth, symmetric, adaptive):
    n = 6
    op = GaussianSensing(n, n, 20, seed=0, symmetric=symmetric)
    target = random_low_rank(n, n, 2, seed=1, fro_norm=1.0) if not symmetric else torch.eye(n, dtype=torch.float64) * 0.3
    objective = SensingObjective(op, op(target))
    alphas, seeds = [1e-2, 1e-1, 0.5], [0, 1, 2]
    lrs = torch.tensor([0.05, 0.1, 0.02], dtype=torch.float64)
    kw = dict(steps=60, symmetric=symmetric, adaptive=adaptive, rel_step=0.05, log_every=7, track_sv=3,
              reference=torch.eye(n, dtype=torch.float64), tol=1e-6)
    batch = run_factorized(objective, init_factors((n, n), depth, alphas=alphas, seeds=seeds, symmetric=symmetric),
                           lr=lrs, **kw)
    assert not batch.diverged.any() and float(batch.final_loss.max()) < float(batch.history["loss"][0].min())
    for b in range(3):
        one = run_factorized(objective, init_factors((n, n), depth, alphas=[alphas[b]], seeds=[seeds[b]],
                                                     symmetric=symmetric), lr=lrs[b:b + 1], **kw)
        torch.testing.assert_close(batch.W[b], one.W[0], rtol=1e-9, atol=1e-12)
        assert int(batch.steps_taken[b]) == int(one.steps_taken[0])
        T = one.history["loss"].shape[0]
        for key in ("loss", "nuclear", "erank", "dist", "time"):
            torch.testing.assert_close(batch.history[key][:T, b], one.history[key][:, 0], rtol=1e-9, atol=1e-12)


def test_sweep_orders_runs_and_flags_divergence():
    op = GaussianSensing(5, 5, 12, seed=0)
    objective = SensingObjective(op, op(random_low_rank(5, 5, 1, seed=0)))
    out = run_sweep(objective, depths=[1, 3], alphas=[0.1, 1.0], seeds=[0, 1], lr=torch.tensor([1e-3, 1e-3, 1e-3, 50.0]),
                    steps=200, log_every=50)
    runs, res = out[3]
    assert runs == [(0.1, 0), (0.1, 1), (1.0, 0), (1.0, 1)]
    assert res.diverged.tolist() == [False, False, False, True]
    assert torch.isfinite(res.history["loss"][-1, :3]).all()


def test_balanced_factors_multiply_back_and_are_balanced():
    W = random_low_rank(5, 4, 4, seed=0)
    for depth in (2, 3, 4):
        fs = balanced_factors(W, depth, width=6, seed=1)
        torch.testing.assert_close(end_to_end([f[None] for f in fs])[0], W)
        assert float(balancedness([f[None] for f in fs])) < 1e-10
    fs = init_factors((5, 4), 3, alphas=[0.3], seeds=[0], init="balanced")
    assert float(balancedness(fs)) < 1e-10
    assert float(balancedness(init_factors((5, 4), 3, alphas=[0.3], seeds=[0], init="gaussian"))) > 1e-3


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_end_to_end_rule_equals_product_of_factor_updates_to_first_order(depth):
    """W' = prod_j (W_j - eta g_j) = W - eta * direction + O(eta^2): the gap divided by eta is O(eta)."""
    g = torch.Generator().manual_seed(depth)
    X = torch.randn(20, 4, generator=g, dtype=torch.float64)
    objective = RegressionObjective(X, torch.randn(20, 3, generator=g, dtype=torch.float64), p=4)
    W0 = random_low_rank(3, 4, 3, seed=depth)
    factors = [f[None] for f in balanced_factors(W0, depth, width=5, seed=0)]
    G = objective.loss_and_grad(W0[None])[1]
    direction = end_to_end_direction(W0[None], G, depth)
    gaps = []
    for eta in (1e-5, 1e-6, 1e-7):
        stepped = [f - eta * gr for f, gr in zip(factors, factor_grads(factors, G))]
        gaps.append(float(torch.linalg.matrix_norm((end_to_end(stepped) - W0) / eta + direction)))
    assert gaps[1] < 0.2 * gaps[0] and gaps[2] < 0.2 * gaps[1]
    assert gaps[2] < 1e-4 * float(torch.linalg.matrix_norm(direction))


def test_end_to_end_dynamics_track_factorized_gd_from_balanced_init():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    objective = RegressionObjective(X, X @ torch.randn(4, 2, generator=g, dtype=torch.float64), p=2)
    W0 = 0.5 * random_low_rank(2, 4, 2, seed=3)
    factors = [f[None] for f in balanced_factors(W0, 3, width=4, seed=2)]
    res = run_factorized(objective, factors, lr=1e-3, steps=300, log_every=300)
    W_e2e, _ = run_end_to_end(objective, W0[None], 3, lr=1e-3, steps=300, log_every=300)
    assert float(torch.linalg.matrix_norm(res.W - W_e2e) / torch.linalg.matrix_norm(W_e2e - W0)) < 1e-2


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_end_to_end_rule_matches_single_output_closed_form(depth):
    g = torch.Generator().manual_seed(depth)
    w = torch.randn(1, 6, generator=g, dtype=torch.float64)
    grad = torch.randn(1, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(w - 0.1 * end_to_end_direction(w, grad, depth),
                               end_to_end_vector_step(w, grad, depth, 0.1))


def test_bad_arguments_raise():
    op = GaussianSensing(3, 3, 4, seed=0)
    objective = SensingObjective(op, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="init"):
        init_factors((3, 3), 2, alphas=[1.0], seeds=[0], init="nope")
    with pytest.raises(ValueError, match="symmetric"):
        init_factors((3, 3), 3, alphas=[1.0], seeds=[0], symmetric=True)
    with pytest.raises(ValueError, match="lr"):
        run_factorized(objective, init_factors((3, 3), 2, alphas=[1.0], seeds=[0]), lr=-1.0, steps=3)
    with pytest.raises(ValueError, match="expects"):
        run_factorized(objective, init_factors((3, 2), 2, alphas=[1.0], seeds=[0]), lr=0.1, steps=3)
    with pytest.raises(ValueError, match="NaN"):
        SensingObjective(op, torch.tensor([math.nan, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("depth,lr", [(2, 0.1), (3, 0.03)])
def test_a_diverging_run_is_frozen_and_flagged_beside_a_good_one(depth, lr):
    """lr 50 beside a stable lr in one batch (the SVD of the logging step used to raise LinAlgError on the
    diverged run and crash both); references: the good run beside a second good one (same batch shape, so the
    same kernels), and the good run alone (batched matmuls round differently: 1e-7 after 300 steps)."""
    op = GaussianSensing(5, 5, 20, seed=0)
    objective = SensingObjective(op, op(random_low_rank(5, 5, 1, seed=0)))
    factors = init_factors((5, 5), depth, alphas=[1.0, 1.0], seeds=[0, 0])
    both = run_factorized(objective, factors, lr=torch.tensor([lr, 50.0]), steps=300, log_every=7, track_sv=2)
    good = run_factorized(objective, factors, lr=torch.tensor([lr, lr]), steps=300, log_every=7, track_sv=2)
    alone = run_factorized(objective, [f[:1] for f in factors], lr=lr, steps=300, log_every=7, track_sv=2)
    assert both.diverged.tolist() == [False, True] and not good.diverged.any()
    for key in ("loss", "nuclear", "erank", "sv"):
        torch.testing.assert_close(both.history[key][:, 0], good.history[key][:, 0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(both.history[key][:, 0], alone.history[key][:, 0], rtol=1e-6, atol=1e-12)
        assert torch.isfinite(both.history[key][:, 1]).all()
    # frozen at its last finite iterate: factors, W and final loss agree with each other
    assert int(both.steps_taken[1]) < 300 and all(torch.isfinite(f[1]).all() for f in both.factors)
    torch.testing.assert_close(both.W[1], end_to_end([f[1:] for f in both.factors])[0])
    torch.testing.assert_close(both.final_loss[1], objective.loss_and_grad(both.W[1:])[0][0])


def test_alpha_zero_at_depth_two_or_more_is_refused():
    with pytest.raises(ValueError, match="alpha = 0 at depth 2 .* saddle"):
        init_factors((3, 3), 2, alphas=[0.1, 0.0], seeds=[0, 1])
    with pytest.raises(ValueError, match="saddle"):
        init_factors((3, 3), 2, alphas=[0.0], seeds=[0], symmetric=True)
    assert init_factors((3, 3), 1, alphas=[0.0], seeds=[0])[0].abs().sum() == 0  # depth 1 from zero is fine
    op = GaussianSensing(3, 3, 4, seed=0)
    objective = SensingObjective(op, torch.ones(4, dtype=torch.float64))
    zeros = [torch.zeros(1, 3, 3, dtype=torch.float64) for _ in range(3)]
    with pytest.raises(ValueError, match=r"run\(s\) \[0\] start at a saddle"):
        run_factorized(objective, zeros, lr=0.1, steps=3)
    one_zero = [torch.zeros(1, 3, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)[None]]
    assert run_factorized(objective, one_zero, lr=0.1, steps=3).steps_taken.tolist() == [3]
    with pytest.raises(ValueError, match="NaN/inf"):
        run_factorized(objective, [torch.full((1, 3, 3), math.nan, dtype=torch.float64)], lr=0.1, steps=3)
