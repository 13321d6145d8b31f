"""The targets of a geometry's implicit bias against independent references (float64): max margins against the
minimax dual (the dual-norm distance from 0 to the hull of the signed examples), the min-Bregman solution against
its closed form (p = 2) and a root solve of its dual (other potentials), and the runners against both."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import fsolve, minimize_scalar

from geomopt.implicit.geometry import (angle_degrees, bregman_kkt, dual_norm_of, log_steps, margin_gaps, max_margin,
                                       min_bregman, norm_of, normalized_margin, preconditioned_max_margin,
                                       run_adagrad, run_regression, run_separable, log_loss_terms)
from geomopt.optim import MirrorDescent, SteepestDescent
from geomopt.optim.mirror import inverse_mirror_map, mirror_map

pytestmark = pytest.mark.usefixtures("float64_default")


def _hull_distance(z1: torch.Tensor, z2: torch.Tensor, norm: str) -> float:
    """min_{lambda in [0, 1]} ||lambda z1 + (1 - lambda) z2||_*: by minimax duality the max margin of the two
    signed examples z1, z2 under ``norm`` (a convex function of lambda: a bounded scalar minimization)."""
    res = minimize_scalar(lambda t: float(dual_norm_of(t * z1 + (1 - t) * z2, norm)), bounds=(0, 1), method="bounded",
                          options={"xatol": 1e-12})
    return min(res.fun, float(dual_norm_of(z1, norm)), float(dual_norm_of(z2, norm)))


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(["l1", "l2", "linf", "spectral"]), st.integers(0, 10_000))
def test_max_margin_equals_the_dual_norm_distance_to_the_hull(norm, seed):
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(3, 2, generator=g)
    z = torch.stack([shift + 0.5 * torch.randn(3, 2, generator=g), shift + 0.5 * torch.randn(3, 2, generator=g)])
    y = torch.tensor([1.0, -1.0])
    x = z * y[:, None, None]  # y_n x_n = z_n
    reference = _hull_distance(z[0], z[1], norm)
    if reference < 1e-3:  # 0 is (nearly) in the hull: not separable
        return
    res = max_margin(x, y, norm)
    assert res.margin == pytest.approx(reference, rel=1e-5)
    assert float(norm_of(res.w, norm)) == pytest.approx(1.0, rel=1e-9)
    assert normalized_margin(res.w, x, y, norm) == pytest.approx(res.margin, rel=1e-12)
    assert margin_gaps(res.w, x, y, {norm: res.margin})[norm] == pytest.approx(0.0, abs=1e-12)


def test_max_margin_closed_forms_and_errors():
    x = torch.tensor([[2.0, 1.0], [-1.0, -2.0]])
    y = torch.tensor([1.0, -1.0])  # signed examples (2, 1) and (1, 2): l2 hull distance at (1.5, 1.5)
    assert max_margin(x, y, "l2").margin == pytest.approx(1.5 * math.sqrt(2), rel=1e-7)
    assert max_margin(x, y, "linf").margin == pytest.approx(3.0, rel=1e-7)  # ||(1.5, 1.5)||_1
    assert max_margin(x, y, "l1").margin == pytest.approx(1.5, rel=1e-7)  # ||(1.5, 1.5)||_inf
    with pytest.raises(ValueError, match="not linearly separable"):
        max_margin(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([1.0, -1.0]), "l2")
    with pytest.raises(ValueError, match="spectral norm needs matrix"):
        max_margin(x, y, "spectral")
    with pytest.raises(ValueError, match="labels y must be"):
        max_margin(x, torch.tensor([1.0, 0.0]), "l2")
    with pytest.raises(ValueError, match="norm must be one of"):
        max_margin(x, y, "l3")
    with pytest.raises(ValueError, match="NaN/inf"):
        max_margin(torch.tensor([[math.nan, 1.0], [1.0, 1.0]]), y, "l2")


def test_preconditioned_max_margin_is_the_l2_one_rescaled():
    """With d = 1 it is the l2 max margin; with d = s^2 it is the l2 max margin of x / s mapped back by 1 / s."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 5, generator=g)
    y = torch.sign(x @ torch.randn(5, generator=g))
    assert angle_degrees(preconditioned_max_margin(x, y, torch.ones(5)), max_margin(x, y, "l2").w) < 1e-5
    s = torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5])
    v = max_margin(x / s, y, "l2").w
    assert angle_degrees(preconditioned_max_margin(x, y, s ** 2), v / s) < 1e-2  # solver accuracy: 1e-5 rad
    with pytest.raises(ValueError, match="positive"):
        preconditioned_max_margin(x, y, -torch.ones(5))


def _regression(seed=0, n=4, d=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) / math.sqrt(d)
    return x, x @ (0.5 + torch.rand(d, generator=g)), 0.5 + torch.rand(d, generator=g)


def _dual_root(x, y, w0, potential, p):
    """argmin D_psi(w, w0) s.t. xw = y from its optimality condition w = grad psi*(grad psi(w0) + x^T lam)
    (scipy's root finder on lam; independent of cvxpy)."""
    theta0 = mirror_map(w0, potential, p=p)

    def w_of(lam):
        return inverse_mirror_map(theta0 + x.T @ torch.as_tensor(lam), potential, p=p)
    lam = fsolve(lambda lam: (x @ w_of(lam) - y).numpy(), np.zeros(x.shape[0]), xtol=1e-14)
    return w_of(lam)


@pytest.mark.parametrize("potential, p", [("lp", 2.0), ("lp", 1.5), ("lp", 3.0), ("entropy", 2.0)])
def test_min_bregman_against_its_dual_root(potential, p):
    x, y, w0 = _regression()
    w = min_bregman(x, y, w0, potential, p)
    reference = _dual_root(x, y, w0, potential, p)
    assert torch.allclose(x @ reference, y, atol=1e-10)
    assert float(torch.linalg.vector_norm(w - reference) / torch.linalg.vector_norm(reference - w0)) < 1e-5
    assert bregman_kkt(x, reference, w0, potential, p) < 1e-10
    if p == 2.0 and potential == "lp":  # the Euclidean projection of w0
        projection = w0 + x.T @ torch.linalg.solve(x @ x.T, y - x @ w0)
        assert torch.allclose(w, projection, atol=1e-6)


def test_min_bregman_refuses_bad_input():
    x, y, w0 = _regression()
    with pytest.raises(ValueError, match="potential must be 'lp' or 'entropy'"):
        min_bregman(x, y, w0, "hypentropy")
    with pytest.raises(ValueError, match="p must be"):
        min_bregman(x, y, w0, "lp", p=1.0)
    with pytest.raises(ValueError, match="positive w0"):
        min_bregman(x, y, -w0, "entropy")
    with pytest.raises(ValueError, match="do not match"):
        min_bregman(x, y[:2], w0, "lp")


@settings(max_examples=4, deadline=None)
@given(st.sampled_from([("lp", 1.25), ("lp", 1.5), ("entropy", 2.0)]), st.sampled_from([0.3, 0.6]),
       st.sampled_from([0.0, 0.5]), st.integers(0, 1000))
def test_mirror_descent_limit_is_the_bregman_projection(potential_p, lr, momentum, seed):
    """The paper's Sec. 2 result on small problems, against the dual root (not cvxpy): any step size, momentum, for
    strongly convex potentials (steps scaled by the l_p potential's modulus p - 1; 1/2 ||w||_3^2, not strongly
    convex, can cycle at such steps)."""
    potential, p = potential_p
    x, y, w0 = _regression(seed)
    smooth = float(torch.linalg.matrix_norm(x, ord=2)) ** 2 / (p - 1 if potential == "lp" else 1.0)
    r = run_regression(x, y, w0, lambda ps: MirrorDescent(ps, lr=lr / smooth, potential=potential, p=p,
                                                          momentum=momentum), steps=20000, tol=1e-12)
    assert not r["diverged"] and r["residual"] <= 1e-12
    reference = _dual_root(x, y, w0, potential, p)
    assert float(torch.linalg.vector_norm(r["w"] - reference) / torch.linalg.vector_norm(reference - w0)) < 1e-8


def test_run_regression_reports_divergence_and_limits():
    x, y, w0 = _regression()
    r = run_regression(x, y, w0, lambda ps: SteepestDescent(ps, lr=100.0, norm="l2"), steps=500, tol=1e-10)
    assert r["diverged"] and r["steps"] < 500
    r = run_regression(x, y, w0, lambda ps: SteepestDescent(ps, lr=0.01, norm="l2"), steps=3, tol=1e-10)
    assert not r["diverged"] and r["steps"] == 3 and r["residual"] > 1e-10
    with pytest.raises(ValueError, match="tol"):
        run_regression(x, y, w0, lambda ps: SteepestDescent(ps, lr=0.01), steps=3, tol=0)


def test_steepest_descent_on_separable_data_approaches_its_max_margin():
    """Two signed examples in R^2: every norm's gap falls along the run and ends small; the l2 run's direction
    tends to the l2 max-margin direction (unique)."""
    x = torch.tensor([[2.0, 1.0], [-1.0, -2.0], [3.0, 0.5]])
    y = torch.tensor([1.0, -1.0, 1.0])
    targets = {n: max_margin(x, y, n) for n in ("l1", "l2", "linf")}
    gammas = {n: t.margin for n, t in targets.items()}
    for norm in gammas:
        r = run_separable(x, y, norm, eta=1.0, steps=400, targets=gammas, reference=targets[norm].w, points=10)
        gaps = [c[f"gap_{norm}"] for c in r["curve"]]
        assert not r["diverged"] and gaps[-1] < 0.05 and gaps[-1] <= min(gaps[:len(gaps) // 2]) + 1e-9
        assert [c["step"] for c in r["curve"]] == log_steps(400, 10)
    assert r["curve"][-1]["log_loss"] < r["curve"][0]["log_loss"]
    l2 = run_separable(x, y, "l2", eta=1.0, steps=400, targets=gammas, reference=targets["l2"].w)
    assert l2["curve"][-1]["angle"] < 2.0


def test_log_loss_terms_are_stable_and_match_the_losses():
    m = torch.tensor([-5.0, 0.0, 3.0, 29.0, 31.0, 800.0], requires_grad=True)
    logistic = log_loss_terms(m, "logistic")
    exact = torch.log(torch.log1p(torch.exp(-m.detach()[:5])))
    assert torch.allclose(logistic.detach()[:5], exact, rtol=1e-12)
    assert logistic.detach()[5] == -800.0  # log1p(e^-800) underflows; the tail is -m
    logistic.sum().backward()
    assert torch.isfinite(m.grad).all() and m.grad[5] == -1.0
    assert torch.equal(log_loss_terms(m.detach(), "exponential"), -m.detach())
    with pytest.raises(ValueError, match="loss must be one of"):
        log_loss_terms(m, "hinge")


def test_logistic_loss_also_reaches_the_max_margin():
    """The logistic loss has an exponential tail: l2 steepest descent (gradient descent) on it approaches the
    l2 max margin too, and its log L starts at log(n log 2)."""
    x = torch.tensor([[2.0, 1.0], [-1.0, -2.0], [3.0, 0.5]])
    y = torch.tensor([1.0, -1.0, 1.0])
    target = max_margin(x, y, "l2")
    r = run_separable(x, y, "l2", eta=1.0, steps=400, targets={"l2": target.margin}, reference=target.w, points=10,
                      loss="logistic")
    gaps = [c["gap_l2"] for c in r["curve"]]
    assert not r["diverged"] and gaps[-1] < 0.05 and gaps[-1] < gaps[0]
    assert r["curve"][-1]["log_loss"] < math.log(3 * math.log(2)) - 3
    with pytest.raises(ValueError, match="loss must be one of"):
        run_separable(x, y, "l2", eta=1.0, steps=2, targets={}, reference=target.w, loss="square")


def test_adagrad_matches_its_update_rule_and_freezes():
    """Three steps against AdaGrad written out (G += g^2, w -= lr g / (sqrt(G) + eps)); on data with a wide margin
    the accumulator stops moving (the gradients vanish)."""
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([1.0, -1.0] * 5)
    x = torch.randn(10, 4, generator=g) + 3.0 * y[:, None] * torch.tensor([1.0, 0.5, 0.0, 0.0])
    w0 = 0.1 * torch.randn(4, generator=g)
    w, acc = w0.clone(), torch.zeros(4)
    for _ in range(3):
        grad = -(y[:, None] * x * torch.exp(-y * (x @ w))[:, None]).sum(0)
        acc = acc + grad ** 2
        w = w - 0.5 * grad / (acc.sqrt() + 1e-10)
    r = run_adagrad(x, y, w0, lr=0.5, steps=3)
    assert torch.allclose(r["w"], w, atol=1e-12) and torch.allclose(r["accumulator"], acc, atol=1e-12)
    r = run_adagrad(x, y, w0, lr=0.5, steps=1000)
    assert not r["diverged"] and r["loss"] < 0.01 * r["loss0"]
    assert float(torch.linalg.vector_norm(r["accumulator"] - r["accumulator_half"])
                 / torch.linalg.vector_norm(r["accumulator"])) < 0.01


def test_norms_and_log_steps():
    w = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    assert float(norm_of(w, "l1")) == 7.0 and float(norm_of(w, "linf")) == 4.0 and float(norm_of(w, "l2")) == 5.0
    assert float(norm_of(w, "spectral")) == pytest.approx(5.0)
    assert float(dual_norm_of(w, "spectral")) == pytest.approx(5.0)  # rank one: nuclear = spectral
    with pytest.raises(ValueError, match="spectral norm needs a matrix"):
        norm_of(torch.ones(3), "spectral")
    steps = log_steps(1000, 4)
    assert steps == [1, 10, 100, 1000]
    assert normalized_margin(torch.zeros(2), torch.ones(1, 2), torch.ones(1), "l2") == -math.inf
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == pytest.approx(90.0)


def test_factorized_sensing_takes_the_closed_form_step_and_stops_at_tol():
    """One l2 steepest step on U is U - lr (G + G^T) U with G = A*(A(U U^T) - y) / m; a run stops at tol or at a
    divergence."""
    from geomopt.implicit.factorized import SensingObjective, _orthogonal
    from geomopt.implicit.geometry import run_factorized_sensing
    from geomopt.implicit.operators import GaussianSensing, random_psd
    target = random_psd(5, 1, seed=0, fro_norm=1.0)
    op = GaussianSensing(5, 5, 12, seed=1, symmetric=True)
    objective = SensingObjective(op, op.forward(target))
    u0 = math.sqrt(0.1) * _orthogonal(5, 5, torch.Generator().manual_seed(3))
    grad_x = op.adjoint(op.forward(u0 @ u0.T) - op.forward(target)) / op.m
    u1 = u0 - 0.2 * (grad_x + grad_x.T) @ u0
    one = run_factorized_sensing(objective, lambda ps: SteepestDescent(ps, lr=0.2, norm="l2"), n=5, alpha=0.1,
                                 steps=1, seed=3)
    assert torch.allclose(one["X"], u1 @ u1.T, atol=1e-12) and one["steps"] == 1 and not one["diverged"]
    run = run_factorized_sensing(objective, lambda ps: SteepestDescent(ps, lr=0.3, norm="l2"), n=5, alpha=0.1,
                                 steps=2000, tol=0.1, seed=3)
    assert run["loss_ratio"] <= 0.1 and 1 < run["steps"] < 2000  # one step leaves 0.24
    bad = run_factorized_sensing(objective, lambda ps: SteepestDescent(ps, lr=1e6, norm="l2"), n=5, alpha=1.0,
                                 steps=100)
    assert bad["diverged"] and bad["steps"] < 100
    with pytest.raises(ValueError, match="alpha"):
        run_factorized_sensing(objective, lambda ps: SteepestDescent(ps, lr=0.1), n=5, alpha=0.0, steps=1)
