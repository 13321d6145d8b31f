"""Operators and spectral measures.

References: adjointness <A(X), y> = <X, A*(y)> (definition of the adjoint); the dense matrix of
the operator (to_dense) against an explicit sum over A_i; effective rank on matrices with known
spectra (Roy & Vetterli 2007: k equal singular values give k; the formula exp(H(p)) computed in
numpy from the spectrum we built); projection onto {A(X)=y} is idempotent and feasible.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.implicit import (
    Completion,
    GaussianSensing,
    effective_rank,
    nuclear_norm,
    psd_power,
    random_low_rank,
    random_psd,
)


def _ops(n1, n2, m, seed):
    ops = [GaussianSensing(n1, n2, m, seed=seed), Completion.random(n1, n2, min(m, n1 * n2), seed=seed)]
    if n1 == n2:
        ops += [GaussianSensing(n1, n1, m, seed=seed, symmetric=True),
                Completion.random(n1, n1, min(m, n1 * n1), seed=seed, symmetric=True)]
    return ops


@settings(max_examples=25, deadline=None)
@given(n1=st.integers(1, 6), n2=st.integers(1, 6), m=st.integers(1, 30), seed=st.integers(0, 1000))
def test_adjointness(n1, n2, m, seed):
    g = torch.Generator().manual_seed(seed)
    for op in _ops(n1, n2, m, seed):
        X = torch.randn(3, n1, n2, generator=g, dtype=torch.float64)
        y = torch.randn(3, op.m, generator=g, dtype=torch.float64)
        lhs = (op(X) * y).sum(-1)
        rhs = (X * op.adjoint(y)).sum((-1, -2))
        torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_sensing_is_the_sum_of_inner_products_and_dense_matches():
    op = GaussianSensing(4, 3, 7, seed=3)
    X = torch.randn(4, 3, dtype=torch.float64)
    ref = torch.stack([(op.matrices[i] * X).sum() for i in range(7)])
    torch.testing.assert_close(op(X), ref)
    torch.testing.assert_close(op.to_dense() @ X.reshape(-1), ref)
    sym = GaussianSensing(5, 5, 4, seed=0, symmetric=True)
    torch.testing.assert_close(sym.matrices, sym.matrices.transpose(1, 2))


def test_completion_reads_entries_and_symmetric_set_is_closed():
    op = Completion.random(6, 6, 15, seed=2, symmetric=True)
    mask = op.mask()
    torch.testing.assert_close(mask, mask.T)
    assert abs(op.m - 15) <= 1
    X = torch.arange(36, dtype=torch.float64).reshape(6, 6)
    torch.testing.assert_close(op(X), X[op.rows, op.cols])
    torch.testing.assert_close(Completion(6, 6, op.rows, op.cols).to_dense().sum(0), mask.reshape(-1))


@pytest.mark.parametrize("op", [GaussianSensing(5, 4, 9, seed=1), Completion.random(5, 4, 9, seed=1)])
def test_projection_is_feasible_and_idempotent(op):
    X = torch.randn(5, 4, dtype=torch.float64)
    y = torch.randn(op.m, dtype=torch.float64)
    P = op.project(X, y)
    torch.testing.assert_close(op(P), y)
    torch.testing.assert_close(op.project(P, y), P)
    # the correction is orthogonal to the null space: it lies in the range of A*
    dense = op.to_dense()
    coef = torch.linalg.lstsq(dense.T, (X - P).reshape(-1, 1)).solution
    torch.testing.assert_close(dense.T @ coef, (X - P).reshape(-1, 1))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="symmetric"):
        GaussianSensing(3, 4, 5, symmetric=True)
    with pytest.raises(ValueError, match="trailing shape"):
        GaussianSensing(3, 4, 5)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="duplicated"):
        Completion(3, 3, torch.tensor([0, 0]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="out of range"):
        Completion(3, 3, torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="rank"):
        random_low_rank(3, 4, 5)


def test_ground_truths_have_the_rank_and_norm_asked():
    X = random_low_rank(30, 20, 3, seed=0, fro_norm=30.0)
    assert torch.linalg.matrix_rank(X) == 3
    assert math.isclose(float(torch.linalg.matrix_norm(X)), 30.0, rel_tol=1e-12)
    P = random_psd(10, 2, seed=1)
    assert torch.linalg.matrix_rank(P) == 2
    assert float(torch.linalg.eigvalsh(P).min()) > -1e-12


def _with_spectrum(s, n1, n2, seed):
    g = torch.Generator().manual_seed(seed)
    k = len(s)
    u, _ = torch.linalg.qr(torch.randn(n1, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n2, k, generator=g, dtype=torch.float64))
    return (u * torch.tensor(s, dtype=torch.float64)) @ v.T


@settings(max_examples=30, deadline=None)
@given(s=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 10.0)), min_size=1, max_size=6),
       seed=st.integers(0, 10_000))
def test_effective_rank_of_known_spectra(s, seed):
    X = _with_spectrum(s, 8, 7, seed)
    arr = np.asarray(s, dtype=float)
    if arr.sum() < 1e-6:
        return
    p = arr[arr > 0] / arr.sum()
    expected = math.exp(-(p * np.log(p)).sum())
    assert math.isclose(float(effective_rank(X)), expected, rel_tol=1e-6, abs_tol=1e-6)
    assert math.isclose(float(nuclear_norm(X)), arr.sum(), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_effective_rank_of_k_equal_singular_values_is_k(k):
    assert math.isclose(float(effective_rank(_with_spectrum([3.0] * k, 9, 6, k))), k, rel_tol=1e-9)
    assert float(effective_rank(torch.zeros(4, 4, dtype=torch.float64))) == 0.0
    batch = torch.stack([torch.eye(5, dtype=torch.float64), _with_spectrum([1.0], 5, 5, 0)])
    torch.testing.assert_close(effective_rank(batch), torch.tensor([5.0, 1.0], dtype=torch.float64))


def test_psd_power_against_repeated_product():
    A = torch.randn(5, 5, dtype=torch.float64)
    M = A @ A.T
    half = psd_power(M, 0.5)
    torch.testing.assert_close(half @ half, M)
    third = psd_power(M, 1 / 3)
    torch.testing.assert_close(third @ third @ third, M)
    torch.testing.assert_close(psd_power(M, 0), torch.eye(5, dtype=torch.float64))
