"""Natural gradient in a potential's Hessian metric: the metric solve against a dense float64 Hessian, the step,
the plug-in geometry, the refusals, and the small-step limit that is mirror descent's (Gunasekar et al. 2018)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.implicit.geometry import run_regression
from geomopt.optim import MirrorDescent, NaturalGradient, PotentialGeometry, Preconditioner
from geomopt.optim.mirror import _psi
from geomopt.optim.natural import metric_solve

pytestmark = pytest.mark.usefixtures("float64_default")


def _dense_solve(w, g, potential, p, beta):
    hessian = torch.func.hessian(lambda v: _psi(v, potential, p, beta))(w)
    return torch.linalg.solve(hessian, g)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["lp", "entropy", "hypentropy"]), st.floats(1.1, 4.0), st.floats(0.01, 3.0),
       st.integers(0, 10_000), st.integers(1, 7))
def test_metric_solve_is_the_dense_hessian_solve(potential, p, beta, seed, d):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=gen)
    if potential == "entropy":
        w = w.abs() + 0.1
    elif potential == "lp":
        w = torch.sign(w) * (w.abs() + 0.1)  # no zero coordinate: the lp metric is singular there for p > 2
    g = torch.randn(d, generator=gen)
    expected = _dense_solve(w, g, potential, p, beta)
    assert torch.allclose(metric_solve(w, g, potential, p, beta), expected, rtol=1e-9, atol=1e-11)


def test_metric_solve_closed_forms_and_refusals():
    w, g = torch.tensor([0.5, 2.0, 1.0]), torch.tensor([1.0, -1.0, 3.0])
    assert torch.equal(metric_solve(w, g, "entropy"), w * g)
    assert torch.equal(metric_solve(w, g, "lp", p=2.0), g)
    assert torch.allclose(metric_solve(w, g, "hypentropy", beta=0.5), torch.sqrt(w ** 2 + 0.25) * g)
    with pytest.raises(ValueError, match="positive weights"):
        metric_solve(-w, g, "entropy")
    with pytest.raises(ValueError, match="singular where a weight is 0"):
        metric_solve(torch.tensor([0.0, 1.0, 1.0]), g, "lp", p=3.0)
    with pytest.raises(ValueError, match="singular at w = 0"):
        metric_solve(torch.zeros(3), g, "lp", p=1.5)
    with pytest.raises(ValueError, match="potential must be one of"):
        metric_solve(w, g, "l3")
    with pytest.raises(ValueError, match=r"w \(3,\) and g \(2,\)"):
        metric_solve(w, g[:2], "entropy")
    # lp with p < 2 is fine at a zero coordinate (|w|^{2-p} = 0 there)
    assert torch.isfinite(metric_solve(torch.tensor([0.0, 1.0, -2.0]), g, "lp", p=1.5)).all()


@pytest.mark.parametrize("potential,p", [("lp", 1.5), ("lp", 3.0), ("entropy", 2.0), ("hypentropy", 2.0)])
def test_step_with_momentum_over_a_group_of_tensors(potential, p):
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.rand(2, 3, generator=gen) + 0.5)
    b = torch.nn.Parameter(torch.rand(4, generator=gen) + 0.5)
    opt = NaturalGradient([a, b], lr=0.1, potential=potential, p=p, beta=0.3, momentum=0.5)
    previous = None
    for _ in range(3):
        a.grad, b.grad = torch.randn(2, 3, generator=gen), torch.randn(4, generator=gen)
        w = torch.cat([a.detach().reshape(-1), b.detach()])
        d = metric_solve(w, torch.cat([a.grad.reshape(-1), b.grad]), potential, p, 0.3)
        d = d if previous is None else d + 0.5 * previous
        opt.step()
        assert torch.allclose(torch.cat([a.detach().reshape(-1), b.detach()]), w - 0.1 * d, atol=1e-14)
        previous = d


def test_plug_in_geometry_with_sgd_takes_the_same_steps():
    gen = torch.Generator().manual_seed(1)
    start = torch.rand(5, generator=gen) + 0.5
    w1, w2 = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt = NaturalGradient([w1], lr=0.05, potential="entropy")
    precond = Preconditioner(PotentialGeometry([w2], potential="entropy"))
    sgd = torch.optim.SGD([w2], lr=0.05)
    for _ in range(4):
        g = torch.randn(5, generator=gen)
        w1.grad, w2.grad = g.clone(), g.clone()
        opt.step()
        precond.step()
        sgd.step()
    assert torch.allclose(w1.detach(), w2.detach(), rtol=0, atol=1e-15)


def test_bad_options_and_non_finite_gradients_change_nothing():
    with pytest.raises(ValueError, match="NaturalGradient: potential must be one of"):
        NaturalGradient([torch.nn.Parameter(torch.ones(2))], potential="l2")
    with pytest.raises(ValueError, match="momentum"):
        NaturalGradient([torch.nn.Parameter(torch.ones(2))], momentum=1.0)
    with pytest.raises(ValueError, match="PotentialGeometry: potential"):
        PotentialGeometry([torch.nn.Parameter(torch.ones(2))], potential="x")
    w = torch.nn.Parameter(torch.ones(3))
    opt = NaturalGradient([w], lr=0.1, potential="entropy")
    w.grad = torch.tensor([1.0, math.nan, 0.0])
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3))
    w.grad = torch.ones(3)
    w.data[0] = -1.0
    with pytest.raises(ValueError, match="positive weights"):
        opt.step()
    assert torch.equal(w.detach(), torch.tensor([-1.0, 1.0, 1.0]))


def test_the_limit_approaches_mirror_descents_only_as_the_step_goes_to_zero():
    """On underdetermined least squares, mirror descent's limit (the Bregman projection of the start) is the same
    at every step size; natural gradient's is off by an amount first order in the step."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 12, generator=gen) / math.sqrt(12)
    y = x @ (0.5 + torch.rand(12, generator=gen))
    w0 = 0.5 + torch.rand(12, generator=gen)
    lr0 = 1.0 / float(torch.linalg.matrix_norm(x, ord=2)) ** 2

    def limit(cls, lr):
        out = run_regression(x, y, w0, lambda ps: cls(ps, lr=lr * lr0, potential="entropy"), steps=200_000, tol=1e-13)
        assert not out["diverged"] and out["residual"] <= 1e-13
        return out["w"]

    bregman = limit(MirrorDescent, 0.8)
    assert torch.allclose(limit(MirrorDescent, 0.05), bregman, atol=1e-10)
    scale = torch.linalg.vector_norm(bregman - w0)
    dist = [float(torch.linalg.vector_norm(limit(NaturalGradient, lr) - bregman) / scale) for lr in (0.8, 0.2, 0.05)]
    assert dist[0] > 1e-3  # a finite step leaves the mirror-descent limit ...
    for big, small in zip(dist, dist[1:]):
        assert 0.15 < small / big < 0.35  # ... by an amount proportional to the step (1/4 per quarter step)
