"""Deep linear regression: balancedness, deficiency margin and the convergence guarantee.

References: the definitions (a hand-built unbalanced pair, the margin of a diagonal target
computed by hand); Theorem 1 of Arora, Cohen, Golowich & Hu (2019) as an inequality the measured
loss of balanced-init GD must satisfy (a bound, not our own output); the l_p gradient against
autograd in float64.
"""

from __future__ import annotations

import math

import torch

from geomopt.implicit import (
    RegressionObjective,
    balanced_factors,
    balancedness,
    convergence_bound,
    deficiency_margin,
    run_factorized,
    synthetic_regression,
)


def test_lp_gradient_equals_autograd():
    X, Y, _ = synthetic_regression(15, 4, k=2, seed=0)
    W = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    for p in (2.0, 3.0, 4.0):
        loss, G = RegressionObjective(X, Y, p).loss_and_grad(W.detach())
        W.grad = None
        RegressionObjective(X, Y, p).loss_and_grad(W)[0].sum().backward()
        torch.testing.assert_close(G, W.grad)
        ref = ((X @ W.detach()[0].T - Y).abs() ** p).sum() / (p * 15)
        torch.testing.assert_close(loss[0], ref)


def test_balancedness_and_margin_by_hand():
    a = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    b = torch.eye(2, dtype=torch.float64)[None]
    # ||b^T b - a a^T||_F = ||diag(1-4, 1-1)||_F = 3
    assert math.isclose(float(balancedness([a, b])), 3.0)
    Phi = torch.diag(torch.tensor([3.0, 2.0], dtype=torch.float64))
    W = torch.diag(torch.tensor([2.5, 2.0], dtype=torch.float64))
    assert math.isclose(float(deficiency_margin(W, Phi)), 2.0 - 0.5)


def test_gd_from_balanced_init_with_positive_margin_obeys_the_linear_rate():
    """Whitened data (X^T X / n = I) makes the l2 loss 0.5 ||W - Phi||_F^2 / k-scaled: use Phi directly."""
    n, d = 64, 3
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    X = q * math.sqrt(n)  # X^T X / n = I
    Phi = torch.diag(torch.tensor([2.0, 1.5, 1.0], dtype=torch.float64))
    objective = RegressionObjective(X, X @ Phi.T, p=2)  # L = 0.5 ||W - Phi||_F^2
    W0 = Phi + 0.2 * torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = float(deficiency_margin(W0, Phi))
    assert c > 0
    for depth in (2, 3):
        factors = [f[None] for f in balanced_factors(W0, depth, seed=0)]
        lr = 1e-3
        res = run_factorized(objective, factors, lr=lr, steps=400, log_every=100)
        loss0 = float(res.history["loss"][0, 0])
        for step, loss in zip(res.steps.tolist(), res.history["loss"][:, 0].tolist()):
            assert loss <= convergence_bound(loss0, lr, c, depth, step) * (1 + 1e-9)
        assert float(balancedness(res.factors)) < 1e-3
    assert convergence_bound(1.0, 0.1, -0.5, 2, 10) == math.inf


def test_scaled_gd_is_the_single_output_end_to_end_rule_without_the_projection():
    """Reference: end_to_end_vector_step minus its (N-1) Pr_w g term, step by step; depth 1 = plain GD."""
    from geomopt.implicit import end_to_end_vector_step, run_scaled_gd
    X, Y, _ = synthetic_regression(30, 4, seed=1)
    obj = RegressionObjective(X, Y, p=4)
    w0 = 0.3 * torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lr = torch.tensor([1e-3, 1e9], dtype=torch.float64)  # the second run diverges and is frozen
    W, losses, diverged = run_scaled_gd(obj, w0, 3, lr=lr, steps=5)
    assert diverged.tolist() == [False, True] and torch.isfinite(losses).all()
    w = w0[:1]
    for _ in range(5):
        g = obj.loss_and_grad(w)[1]
        proj = (w * g).sum(-1, keepdim=True) * w / (w * w).sum(-1, keepdim=True)
        w = end_to_end_vector_step(w, g, 3, 1e-3) + 1e-3 * (w * w).sum(-1, keepdim=True) ** (2 / 3) * 2 * proj
    torch.testing.assert_close(W[:1], w)
    W1, _, _ = run_scaled_gd(obj, w0[:1], 1, lr=1e-3, steps=2)
    w = w0[:1]
    for _ in range(2):
        w = w - 1e-3 * obj.loss_and_grad(w)[1]
    torch.testing.assert_close(W1, w)
