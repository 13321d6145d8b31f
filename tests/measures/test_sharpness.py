"""Worst-case sharpness (ascent, box, analytic maximum) and the PAC-Bayes sigma search."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from geomopt.measures import (DatasetObjective, bisection_sigma, function_objective, kl_term, sample_perturbation,
                              search_sigma, worst_case_sharpness)
from geomopt.nn import MLP


def test_ascent_reaches_the_analytic_maximum_of_a_quadratic():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, generator=g, dtype=torch.float64)
    c = torch.randn(20, generator=g, dtype=torch.float64)
    a = torch.rand(20, generator=g, dtype=torch.float64) + 0.1
    obj = function_objective(lambda p: 0.5 * (a * (p["w"] - c) ** 2).sum())
    alpha = 0.05
    box = alpha * (w.abs() + 1)
    best = w + box * torch.sign(w - c)  # each coordinate moves away from c: the vertex maximizing the convex loss
    loss = lambda v: float(0.5 * (a * (v - c) ** 2).sum())  # noqa: E731
    ref = (loss(best) - loss(w)) / (1 + loss(w))
    res = worst_case_sharpness(obj, {"w": w}, alpha=alpha, steps=10, restarts=2)
    assert res.sharpness == pytest.approx(ref, rel=1e-9)
    assert (res.nu["w"].abs() <= box + 1e-15).all()


def _trained(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = MLP((6,), (16,), 3, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, DataLoader(TensorDataset(x, y), batch_size=32)


def test_sharpness_ascends_stays_in_box_and_beats_random_perturbations():
    model, loader = _trained()
    obj = DatasetObjective(model, loader)
    params = obj.params()
    alpha = 1e-2
    res = worst_case_sharpness(obj, params, alpha=alpha, steps=10, restarts=2)
    base = obj(params)[0]
    perturbed = obj({k: params[k] + res.nu[k] for k in params})[0]
    assert res.sharpness > 0 and perturbed > base  # ASCENT: the loss increases (a descent would lower it)
    assert perturbed == pytest.approx(res.max_loss, rel=1e-6)
    for k in params:
        assert (res.nu[k].abs() <= alpha * (params[k].abs() + 1) * (1 + 1e-6)).all()
    g = torch.Generator().manual_seed(1)
    random_best = max(obj({k: params[k] + (torch.rand(v.shape, generator=g) * 2 - 1) * alpha * (v.abs() + 1)
                           for k, v in params.items()})[0] for _ in range(20))
    assert res.max_loss > random_best
    assert model.training  # the caller's mode is restored; parameters untouched
    torch.testing.assert_close(dict(model.named_parameters())["1.weight"].detach(), params["1.weight"])


def test_perturbation_uses_a_standard_deviation_not_a_variance():
    params = {"w": torch.zeros(200_000, dtype=torch.float64)}
    u = sample_perturbation(params, 0.1, "isotropic", seed=0)["w"]
    assert float(u.std()) == pytest.approx(0.1, rel=0.01)  # 0.01 if sigma**2 were passed as the std
    params = {"w": torch.full((200_000,), 2.0, dtype=torch.float64)}
    u = sample_perturbation(params, 0.1, "magnitude", seed=0, eps=1e-3)["w"]
    assert float(u.std()) == pytest.approx(0.1 * 2 + 1e-3, rel=0.01)


def _linear_regression(n=50, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    return x, y, w


def test_sigma_search_finds_the_analytic_sigma_of_linear_regression():
    """E_u mean (x^T (w+u) - y)^2 - L(w) = sigma^2 mean ||x||^2 at the least-squares w (cross term 0)."""
    x, y, w = _linear_regression()
    obj = function_objective(lambda p: ((x @ p["w"] - y) ** 2).mean())
    thr = 0.2
    exact = math.sqrt(thr / float((x ** 2).sum(1).mean()))
    res = search_sigma(obj, {"w": w}, threshold=thr, samples=400, seed=0)
    assert res.sigma == pytest.approx(exact, rel=0.05)  # Monte-Carlo error of 400 draws
    assert res.increase <= thr


def test_sigma_search_matches_a_slow_reference_bisection_with_fewer_evaluations():
    model, loader = _trained(1)
    obj = DatasetObjective(model, loader)
    params = obj.params()
    for mode in ("isotropic", "magnitude"):
        fast = search_sigma(obj, params, threshold=0.1, samples=4, mode=mode, seed=3)
        # reference: plain bisection on the same Monte-Carlo draws, 15 steps on [0, 2]
        ref = bisection_sigma(obj, params, threshold=0.1, samples=4, mode=mode, seed=3, common_noise=True)
        assert abs(fast.sigma - ref.sigma) <= 2 * 2 / 2 ** 15
        assert fast.evaluations < ref.evaluations
        assert fast.increase <= 0.1


def test_kl_term():
    w = {"a": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    w0 = {"a": torch.tensor([0.5, 0.0], dtype=torch.float64)}
    assert kl_term(w, w0, 0.5, "isotropic") == pytest.approx((0.25 + 4) / (2 * 0.25))
    s = [0.5 * 1 + 1e-3, 0.5 * 2 + 1e-3]
    assert kl_term(w, w0, 0.5, "magnitude") == pytest.approx(0.25 / (2 * s[0] ** 2) + 4 / (2 * s[1] ** 2))
