"""Steepest and mirror descent against closed forms (Gunasekar, Lee, Soudry & Srebro 2018), in float64."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.optim.mirror import MirrorDescent, bregman, inverse_mirror_map, mirror_map
from geomopt.optim.steepest import SteepestDescent, steepest_direction


pytestmark = pytest.mark.usefixtures("float64_default")


def _norm(xs, norm):
    flat = torch.cat([x.reshape(-1) for x in xs])
    if norm == "l1":
        return flat.abs().sum()
    if norm == "l2":
        return flat.norm()
    if norm == "linf":
        return flat.abs().max()
    return max(torch.linalg.matrix_norm(x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(-1, 1), ord=2)
               for x in xs)


def _dual(xs, norm):
    flat = torch.cat([x.reshape(-1) for x in xs])
    if norm == "l1":
        return flat.abs().max()
    if norm == "l2":
        return flat.norm()
    if norm == "linf":
        return flat.abs().sum()
    return sum(torch.linalg.matrix_norm(x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(-1, 1), ord="nuc")
               for x in xs)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["l1", "l2", "linf", "spectral"]), st.integers(0, 10_000))
def test_direction_is_the_dual_norm_maximizer(norm, seed):
    """<g, u> = ||g||_* and ||u|| = 1: u attains the dual norm on the unit ball, for any gradient."""
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    units, dual = steepest_direction(grads, norm)
    inner = sum((g * u).sum() for g, u in zip(grads, units))
    assert dual == pytest.approx(float(_dual(grads, norm)), rel=1e-10)
    assert float(inner) == pytest.approx(float(dual), rel=1e-10)
    assert float(_norm(units, norm)) == pytest.approx(1.0, rel=1e-10)


def test_closed_form_directions():
    g = torch.tensor([[3.0, -1.0], [0.5, -4.0]])
    assert torch.equal(steepest_direction([g], "linf")[0][0], torch.sign(g))
    u1 = steepest_direction([g], "l1")[0][0]
    assert torch.equal(u1, torch.tensor([[0.0, 0.0], [0.0, -1.0]]))
    tie = steepest_direction([torch.tensor([2.0, -2.0, 1.0])], "l1")[0][0]
    assert torch.equal(tie, torch.tensor([0.5, -0.5, 0.0]))
    u, s, vh = torch.linalg.svd(g)
    assert torch.allclose(steepest_direction([g], "spectral")[0][0], u @ vh, atol=1e-12)
    with pytest.raises(ValueError, match="norm must be one of"):
        steepest_direction([g], "l3")


@pytest.mark.parametrize("norm", ["l1", "l2", "linf", "spectral"])
@pytest.mark.parametrize("normalized", [False, True])
def test_step_is_lr_times_direction(norm, normalized):
    w = torch.nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    w.grad = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    before = w.detach().clone()
    (u,), dual = steepest_direction([w.grad], norm)
    SteepestDescent([w], lr=0.1, norm=norm, normalized=normalized).step()
    expected = before - 0.1 * (1 if normalized else dual) * u
    assert torch.allclose(w.detach(), expected, atol=1e-14)


def test_l2_unnormalized_is_gradient_descent_and_momentum_is_heavy_ball():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5))
    b.data.copy_(a.data)
    opt_a = SteepestDescent([a], lr=0.05, norm="l2", momentum=0.9)
    opt_b = torch.optim.SGD([b], lr=0.05, momentum=0.9)
    target = torch.randn(5)
    for _ in range(5):
        for p, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            ((p - target) ** 2).sum().backward()
            o.step()
    assert torch.allclose(a, b, atol=1e-13)


def test_steepest_refuses_bad_options_and_non_finite_gradients():
    w = torch.nn.Parameter(torch.ones(3))
    for kw in ({"lr": math.nan}, {"lr": -1.0}, {"norm": "l0"}, {"momentum": 1.0}):
        with pytest.raises(ValueError):
            SteepestDescent([w], **{"lr": 0.1, **kw})
    opt = SteepestDescent([w], lr=0.1)
    w.grad = torch.tensor([1.0, math.inf, 0.0])
    with pytest.raises(FloatingPointError):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3))
    opt.param_groups[0]["lr"] = math.inf
    with pytest.raises(ValueError, match="lr"):
        opt.step()


@pytest.mark.parametrize("potential,opts", [("lp", {"p": 3.0}), ("lp", {"p": 1.5}), ("entropy", {}),
                                            ("hypentropy", {"beta": 0.3})])
def test_mirror_maps_invert(potential, opts):
    w = torch.rand(7) + 0.1 if potential == "entropy" else torch.randn(7)
    assert torch.allclose(inverse_mirror_map(mirror_map(w, potential, **opts), potential, **opts), w, atol=1e-12)


def _regression(seed: int, positive: bool):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 10, generator=gen)
    w_star = torch.rand(10, generator=gen) + 0.5 if positive else torch.randn(10, generator=gen)
    return x, x @ w_star


@pytest.mark.parametrize("potential,opts,lr,momentum", [
    ("lp", {"p": 3.0}, 0.02, 0.0), ("lp", {"p": 3.0}, 0.01, 0.5), ("entropy", {}, 0.01, 0.0),
    ("hypentropy", {"beta": 0.5}, 0.02, 0.0), ("hypentropy", {"beta": 0.5}, 0.005, 0.8)])
def test_mirror_descent_reaches_the_min_bregman_solution(potential, opts, lr, momentum):
    """The limit satisfies the KKT conditions of argmin_{Xw=y} D_psi(w, w0): Xw = y and
    grad psi(w) - grad psi(w0) in the row space of X (Gunasekar et al. 2018, Thm. 1), for any lr and momentum."""
    x, y = _regression(0, positive=potential == "entropy")
    w0 = torch.full((10,), 0.3) if potential == "entropy" else 0.3 * torch.randn(10, generator=torch.Generator().manual_seed(5))
    w = torch.nn.Parameter(w0.clone())
    opt = MirrorDescent([w], lr=lr, potential=potential, momentum=momentum, **opts)
    for _ in range(50000):
        residual = x @ w.detach() - y
        if residual.norm() < 1e-10:
            break
        w.grad = x.T @ residual  # the gradient of 1/2 ||Xw - y||^2
        opt.step()
    assert residual.norm() < 1e-10
    shift = mirror_map(w.detach(), potential, **opts) - mirror_map(w0, potential, **opts)
    proj = x.T @ torch.linalg.lstsq(x.T, shift.unsqueeze(1)).solution.squeeze(1)
    assert torch.linalg.vector_norm(shift - proj) < 1e-7 * max(1.0, float(shift.norm()))
    # and it is the closest: moving along the null space of X increases the divergence
    null = torch.linalg.svd(x).Vh[4:]
    for v in null[:3]:
        for eps in (1e-3, -1e-3):
            other = w.detach() + eps * v
            if potential == "entropy" and not (other > 0).all():
                continue
            assert bregman(other, w0, potential, **opts) > bregman(w.detach(), w0, potential, **opts)


def test_mirror_descent_with_p2_is_gradient_descent():
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(6))
    b = torch.nn.Parameter(a.detach().clone())
    oa, ob = MirrorDescent([a], lr=0.1, potential="lp", p=2.0), torch.optim.SGD([b], lr=0.1)
    for _ in range(3):
        for p, o in ((a, oa), (b, ob)):
            o.zero_grad()
            (p ** 4).sum().backward()
            o.step()
    assert torch.allclose(a, b, atol=1e-13)


def test_mirror_descent_refuses_bad_input():
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    for kw in ({"lr": math.inf}, {"potential": "kl"}, {"p": 1.0}, {"beta": 0.0}, {"momentum": -0.1}):
        with pytest.raises(ValueError):
            MirrorDescent([w], **{"lr": 0.1, **kw})
    opt = MirrorDescent([w], lr=0.1, potential="entropy")
    w.grad = torch.ones(2)
    with pytest.raises(ValueError, match="positive weights"):
        opt.step()
    opt = MirrorDescent([w], lr=1e6, potential="hypentropy", beta=1e-3)
    w.grad = torch.tensor([-1e3, 1e3])
    with pytest.raises(FloatingPointError):
        opt.step()
    assert torch.equal(w.detach(), torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("norm", ["l1", "l2", "linf", "spectral"])
@pytest.mark.parametrize("normalized", [False, True])
def test_steepest_geometry_in_front_of_sgd_is_steepest_descent(norm, normalized):
    """One tensor per group: the plug-in geometry's direction times SGD's lr is SteepestDescent's step; a group of
    two tensors is one vector for SteepestDescent, so the per-tensor geometry differs there (l1, linf)."""
    from geomopt.optim import Preconditioner, SteepestGeometry
    gen = torch.Generator().manual_seed(5)
    start = torch.randn(4, 3, generator=gen)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt = SteepestDescent([a], lr=0.05, norm=norm, normalized=normalized)
    precond, sgd = Preconditioner(SteepestGeometry([b], norm=norm, normalized=normalized)), torch.optim.SGD([b], lr=0.05)
    for _ in range(3):
        g = torch.randn(4, 3, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        precond.step()
        sgd.step()
    assert torch.allclose(a.detach(), b.detach(), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="SteepestGeometry: norm must be one of"):
        SteepestGeometry([b], norm="l3")
