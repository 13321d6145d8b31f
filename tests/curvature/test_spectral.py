"""Lanczos, power iteration, Hutchinson and stochastic Lanczos quadrature against dense
``torch.linalg.eigvalsh`` / exact traces and moments (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomopt.curvature import (GGNOperator, HessianOperator, hutchinson_diagonal, hutchinson_trace, lanczos,
                               lanczos_top_eigenvalues, power_iteration, slq_density)

pytestmark = pytest.mark.usefixtures("float64_default")


def _symmetric(d, seed, spectrum=None):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    lam = spectrum if spectrum is not None else torch.randn(d, generator=g) * 3
    return (q * lam) @ q.T, lam


def _hessian(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(20, 5, generator=g), torch.randint(0, 3, (20,), generator=g)) for _ in range(2)]
    return HessianOperator(model, data), GGNOperator(model, data)


def test_lanczos_is_orthonormal_and_tridiagonalizes():
    A, _ = _symmetric(30, 0)
    run = lanczos(A, 12, generator=torch.Generator().manual_seed(0))
    Q, T = run.Q, run.tridiagonal()
    torch.testing.assert_close(Q.T @ Q, torch.eye(12), atol=1e-12, rtol=0)
    torch.testing.assert_close(Q.T @ A @ Q, T, atol=1e-10, rtol=0)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(8, 40), k=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_lanczos_top_k_equals_eigvalsh(d, k, seed):
    k = min(k, d)
    A, _ = _symmetric(d, seed)
    res = lanczos_top_eigenvalues(A, k, tol=1e-10, max_steps=d, generator=torch.Generator().manual_seed(seed))
    expected = torch.linalg.eigvalsh(A).flip(0)[:k]
    assert res.converged
    torch.testing.assert_close(res.values, expected, atol=1e-8 * float(expected.abs().max()), rtol=1e-8)
    # Ritz vectors are eigenvectors: ||A u - theta u|| small
    resid = torch.linalg.vector_norm(A @ res.vectors - res.vectors * res.values, dim=0)
    assert float(resid.max()) < 1e-6 * float(expected.abs().max())


def test_lanczos_top_k_of_a_network_hessian_and_largest_magnitude():
    H, _ = _hessian()
    dense = H.to_dense()
    evals = torch.linalg.eigvalsh(dense)
    res = lanczos_top_eigenvalues(H, 3, tol=1e-9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(res.values, evals.flip(0)[:3], atol=1e-9, rtol=1e-7)
    lm = lanczos_top_eigenvalues(dense, 2, which="LM", tol=1e-9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(lm.values.abs(), evals.abs().sort(descending=True).values[:2], atol=1e-9, rtol=1e-7)


def test_lanczos_stops_early_on_well_separated_top_eigenvalue():
    lam = torch.cat([torch.tensor([10.0]), torch.linspace(0, 1, 199)])
    A, _ = _symmetric(200, 3, lam)
    res = lanczos_top_eigenvalues(A, 1, tol=1e-8, generator=torch.Generator().manual_seed(0))
    assert res.converged and res.products < 40
    assert float(res.values[0]) == pytest.approx(10.0, rel=1e-8)


def test_power_iteration_finds_dominant_eigenvalue():
    lam = torch.tensor([5.0, -2.0, 1.0, 0.5, 0.1, 0.0])
    A, _ = _symmetric(6, 4, lam)
    res = power_iteration(A, tol=1e-10, max_iter=500, generator=torch.Generator().manual_seed(0))
    assert res.converged and float(res.values[0]) == pytest.approx(5.0, rel=1e-8)
    _, ggn = _hessian(2)
    top = float(torch.linalg.eigvalsh(ggn.to_dense())[-1])
    assert float(power_iteration(ggn, tol=1e-9, max_iter=1000).values[0]) == pytest.approx(top, rel=1e-5)


def test_hutchinson_trace_within_stated_tolerance():
    """Stop rule: stderr <= tol |estimate| / 2, so |error| <= tol |trace| with ~95% probability; over 20
    seeds at least 16 must be within tol (a binomial tail of < 1e-3 if the rule holds), all within 2 tol."""
    _, ggn = _hessian(1)
    exact = float(torch.trace(ggn.to_dense()))
    dense = ggn.to_dense()
    tol = 0.05
    errors = []
    for seed in range(20):
        res = hutchinson_trace(dense, tol=tol, max_samples=20_000, generator=torch.Generator().manual_seed(seed))
        assert res.converged
        errors.append(abs(res.estimate - exact) / exact)
    assert sum(e <= tol for e in errors) >= 16 and max(errors) <= 2 * tol
    res = hutchinson_trace(ggn, tol=0.1, generator=torch.Generator().manual_seed(0))  # on the operator itself
    assert res.converged and abs(res.estimate - exact) <= 0.2 * exact


def test_hutchinson_is_exact_for_diagonal_matrices_and_estimates_diagonal():
    D = torch.diag(torch.arange(1.0, 9.0))
    res = hutchinson_trace(D, tol=1e-3, generator=torch.Generator().manual_seed(0))
    assert res.estimate == pytest.approx(36.0, rel=1e-12) and res.samples == 10  # z_i^2 = 1: zero variance
    A, _ = _symmetric(10, 5, torch.linspace(1, 3, 10))
    est = hutchinson_diagonal(A, tol=0.05, max_samples=50_000, generator=torch.Generator().manual_seed(0))
    assert est.converged
    assert float(torch.linalg.vector_norm(est.estimate - torch.diagonal(A))) <= 0.1 * float(
        torch.linalg.vector_norm(torch.diagonal(A)))


def test_slq_density_integrates_to_one_and_quadrature_is_exact_for_low_moments():
    H, _ = _hessian(3)
    dense = H.to_dense()
    d = dense.shape[0]
    evals = torch.linalg.eigvalsh(dense)
    dens = slq_density(H, steps=12, probes=8, generator=torch.Generator().manual_seed(0))
    sigma = 0.05 * float(evals.max() - evals.min())
    grid = dens.grid(2000, sigma=sigma)
    assert float(torch.trapezoid(dens.density(grid, sigma), grid)) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(dens.weights.sum(1), torch.ones(8))
    # Gauss quadrature with m nodes is exact for degree < 2m: reproduce v^T A^k v with the same start vectors
    gen = torch.Generator().manual_seed(0)
    starts = [torch.randn(d, generator=gen) for _ in range(8)]
    for k in (1, 2, 3, 5):
        exact = sum(float(v @ torch.linalg.matrix_power(dense, k) @ v / (v @ v)) for v in starts) / 8
        assert dens.moment(k) == pytest.approx(exact, rel=1e-8, abs=1e-12)


def test_slq_moments_approach_the_dense_spectrum():
    A, lam = _symmetric(60, 6)
    dens = slq_density(A, steps=20, probes=200, generator=torch.Generator().manual_seed(0))
    for k in (1, 2, 3):
        exact = float((lam ** k).mean())
        spread = float((lam ** k).std()) * math.sqrt(2 / 60)  # std of v^T A^k v / |v|^2 for Gaussian v
        assert abs(dens.moment(k) - exact) <= 4 * spread / math.sqrt(200) + 1e-10


def test_spectral_tools_reject_bad_input():
    A, _ = _symmetric(5, 0)
    with pytest.raises(ValueError, match="k=6"):
        lanczos_top_eigenvalues(A, 6)
    with pytest.raises(ValueError, match="which"):
        lanczos_top_eigenvalues(A, 1, which="SA")
    with pytest.raises(ValueError, match="square"):
        lanczos(torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="min_samples"):
        hutchinson_trace(A, min_samples=1)
    with pytest.raises(ValueError, match="neither"):
        slq_density([1, 2])


def test_hutchpp_is_exact_on_low_rank_and_needs_fewer_probes_with_outliers():
    A, _ = _symmetric(50, 8, torch.cat([torch.tensor([9.0, 7.0, 5.0]), torch.zeros(47)]))
    res = hutchinson_trace(A, deflate=3, tol=1e-3, generator=torch.Generator().manual_seed(0))
    assert res.estimate == pytest.approx(21.0, rel=1e-10) and res.samples == 10 and res.products == 16
    lam = torch.cat([torch.tensor([40.0, 30.0, 20.0, 10.0]), torch.rand(196, generator=torch.Generator().manual_seed(1))])
    B, _ = _symmetric(200, 9, lam)
    exact = float(lam.sum())
    plain = hutchinson_trace(B, tol=0.02, max_samples=50_000, generator=torch.Generator().manual_seed(2))
    pp = hutchinson_trace(B, tol=0.02, deflate=8, max_samples=50_000, generator=torch.Generator().manual_seed(2))
    assert plain.converged and pp.converged and pp.products < plain.products / 3
    assert abs(pp.estimate - exact) <= 0.04 * exact and abs(plain.estimate - exact) <= 0.04 * exact


def test_spectral_tools_on_kfac_match_its_dense_form():
    from geomopt.curvature import compute_kfac
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(0)
    F = compute_kfac(model, (torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g)), fisher="ggn")
    dense = F.to_dense()
    res = lanczos_top_eigenvalues(F, 2, tol=1e-10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.values, torch.linalg.eigvalsh(dense).flip(0)[:2], atol=1e-10, rtol=1e-8)
    tr = hutchinson_trace(F, deflate=20, tol=0.01, generator=torch.Generator().manual_seed(0))
    assert abs(tr.estimate - float(torch.trace(dense))) <= 0.02 * float(torch.trace(dense))
