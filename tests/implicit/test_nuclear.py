"""The convex baseline.

References: cvxpy (an independent SDP solver: Clarabel/SCS) on tiny problems; exact recovery of
a low-rank matrix from plentiful measurements (the true matrix is the answer); every feasible
point we generate (X* plus a random null-space perturbation) has nuclear norm at least the
solver's; ADMM (our first-order solver) against cvxpy.
"""

from __future__ import annotations

import builtins

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.implicit import (
    Completion,
    GaussianSensing,
    min_nuclear_norm,
    nuclear_norm,
    random_low_rank,
    random_psd,
    relative_distance,
)

cp = pytest.importorskip("cvxpy")  # installed by `make test` ([convex] extra); skip only as a fallback


def _problems():
    X = random_low_rank(6, 5, 1, seed=0)
    P = random_psd(6, 1, seed=1)
    return [
        ("sensing", GaussianSensing(6, 5, 24, seed=2), X, False),
        ("completion", Completion.random(6, 5, 22, seed=3), X, False),
        ("psd-sensing", GaussianSensing(6, 6, 18, seed=4, symmetric=True), P, True),
    ]


@pytest.fixture(scope="module")
def solved():
    out = {}
    for name, op, X, psd in _problems():
        y = op(X)
        out[name] = (op, X, y, psd, min_nuclear_norm(op, y, psd=psd, solver="cvxpy"))
    return out


@pytest.mark.parametrize("name", ["sensing", "completion", "psd-sensing"])
def test_cvxpy_recovers_low_rank_from_plentiful_measurements(solved, name):
    op, X, y, psd, res = solved[name]
    assert res.residual < 1e-5  # interior-point accuracy
    assert float(relative_distance(res.X, X)) < 1e-4


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 10.0))
def test_no_feasible_point_has_smaller_nuclear_norm(solved, seed, scale):
    for name, (op, X, y, psd, res) in solved.items():
        g = torch.Generator().manual_seed(seed)
        Z = torch.randn(*op.shape, generator=g, dtype=torch.float64)
        if psd:
            Z = Z @ Z.T  # a PSD direction; X + N stays feasible, maybe not PSD, so compare only PSD points
        N = op.project(Z, torch.zeros(op.m, dtype=torch.float64))  # null-space component of Z
        F = X + scale * N
        torch.testing.assert_close(op(F), y)
        if psd and float(torch.linalg.eigvalsh((F + F.T) / 2).min()) < 0:
            continue
        assert float(nuclear_norm(F)) >= res.nuclear_norm * (1 - 1e-5)


@pytest.mark.parametrize("rule", [{}, {"relaxation": 1.0, "balance": 10.0}], ids=["default", "plain-admm"])
def test_admm_matches_cvxpy_when_the_minimizer_is_not_the_truth(rule):
    """Few measurements: the minimum nuclear norm solution differs from X*; both solvers must agree
    (over-relaxed ADMM, the default, and plain ADMM with the textbook balancing rule)."""
    X = random_low_rank(7, 6, 2, seed=5)
    for op, psd in [(GaussianSensing(7, 6, 20, seed=6), False), (Completion.random(7, 6, 20, seed=7), False),
                    (GaussianSensing(7, 7, 16, seed=8, symmetric=True), True)]:
        target = random_psd(7, 2, seed=9) if psd else X
        y = op(target)
        ref = min_nuclear_norm(op, y, psd=psd, solver="cvxpy")
        ours = min_nuclear_norm(op, y, psd=psd, solver="admm", tol=1e-10, **rule)
        assert ours.residual < 1e-9
        assert abs(ours.nuclear_norm - ref.nuclear_norm) < 1e-5 * ref.nuclear_norm
        assert float(relative_distance(ours.X, ref.X)) < 1e-3
        assert float(relative_distance(ref.X, target)) > 1e-3  # not a recovery problem


def test_clear_error_without_cvxpy(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cvxpy" or name.startswith("cvxpy."):
            raise ImportError("No module named 'cvxpy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    op = Completion.random(4, 4, 10, seed=0)
    y = torch.randn(10, dtype=torch.float64)
    with pytest.raises(ImportError, match=r"pip install 'geomopt\[convex\]'"):
        min_nuclear_norm(op, y, solver="cvxpy")
    assert min_nuclear_norm(op, y, solver="auto").solver == "admm"


def test_auto_hands_only_small_problems_to_cvxpy(monkeypatch):
    """cvxpy + Clarabel on 100 x 100 completion took > 20 GB: "auto" must route large completion to ADMM."""
    pytest.importorskip("cvxpy")
    import geomopt.implicit.nuclear as nuclear
    target = random_low_rank(5, 5, 1, seed=0)
    op = Completion.random(5, 5, 20, seed=1)
    assert min_nuclear_norm(op, op(target), solver="auto").solver.startswith("cvxpy")
    monkeypatch.setattr(nuclear, "CVXPY_AUTO_COMPLETION_LIMIT", 24)  # 5 x 5 = 25 cells: now "large"
    assert min_nuclear_norm(op, op(target), solver="auto").solver == "admm"
    sensing = GaussianSensing(5, 5, 12, seed=2)
    monkeypatch.setattr(nuclear, "CVXPY_AUTO_LIMIT", 5 * 5 * 12 - 1)
    assert min_nuclear_norm(sensing, sensing(target), solver="auto").solver == "admm"


def test_bad_arguments():
    op = Completion.random(4, 3, 5, seed=0)
    with pytest.raises(ValueError, match="solver"):
        min_nuclear_norm(op, torch.zeros(5), solver="magic")
    with pytest.raises(ValueError, match="shape"):
        min_nuclear_norm(op, torch.zeros(6))
    with pytest.raises(ValueError, match="psd"):
        min_nuclear_norm(op, torch.zeros(5), psd=True)
    for kwargs in ({"relaxation": 2.0}, {"relaxation": 0.0}, {"balance": 1.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):  # the message names the option
            min_nuclear_norm(op, torch.zeros(5), solver="admm", **kwargs)
