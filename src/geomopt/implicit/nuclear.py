"""Convex baseline: the minimum nuclear norm matrix consistent with the measurements.

    X_nuc = argmin ||X||_*  subject to  A(X) = y            (optionally X PSD: then ||X||_* = tr X)

Gunasekar et al. (2017) conjecture that gradient flow on ``U U^T`` from an infinitesimal init
converges to it; Arora et al. (2019) use it as the baseline deep factorizations beat.

Two solvers:

- ``"cvxpy"`` (optional extra: ``pip install 'geomopt[convex]'``): the SDP, solved by SCS or
  Clarabel; exact but slow and memory-hungry for Gaussian sensing beyond n ~ 50
  (measured here with cvxpy 1.9 + SCS on 2 cores: 31 s and 1.3 GB at n = 50, m = 750).
- ``"admm"``: first-order, works on A as an operator (``A``, ``A*`` and one Cholesky factor of
  the m x m Gram matrix ``A A*``, the identity for completion). ADMM on ``min ||X||_* + 1{A(Z)=y}``
  s.t. ``X = Z`` (Boyd et al. 2011, Sec. 3; over-relaxed, residual-balancing penalty):

      X <- SVT_{1/rho}(Z - U)                  (singular value soft-thresholding; eigenvalues for PSD)
      X' = 1.6 X + (1 - 1.6) Z                 (over-relaxation)
      Z <- P_{A(Z)=y}(X' + U) = V - A*((AA*)^-1 (A(V) - y)),  V = X' + U
      U <- U + X' - Z

  stopped when the primal ``||X - Z||_F`` and dual ``rho ||Z - Z_prev||_F`` residuals fall below
  ``tol`` relative to ``max(||X||_F, ||Z||_F)`` and ``rho ||U||_F``. The answer returned is Z
  (exactly feasible up to rounding).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from geomopt.checks import WrongTypeError, check_int, check_number, check_tensor
from geomopt.implicit.operators import Completion, MeasurementOperator

SOLVERS = ("auto", "cvxpy", "admm")
# ADMM defaults: over-relaxation 1.6 and residual balancing at a factor-3 imbalance (every 10 iterations),
# against plain ADMM with the textbook factor-10 rule (relaxation=1.0, balance=10.0): fewer iterations and
# one more small problem solved (`python benchmarks/bench_implicit.py --part admm`, benchmarks/RESULTS.md)
RELAXATION = 1.6
BALANCE = 3.0
# largest sizes "auto" hands to cvxpy: n1 * n2 * m (dense sensing constraints) and, for completion,
# n1 * n2 (at 100 x 100 cvxpy + Clarabel went past 20 GB of memory on the benchmark machine)
CVXPY_AUTO_LIMIT = 3_000_000
CVXPY_AUTO_COMPLETION_LIMIT = 2_500

INSTALL_HINT = ("cvxpy is not installed; the convex nuclear-norm baseline with solver='cvxpy' needs it: "
                "pip install 'geomopt[convex]' (or pip install cvxpy). solver='admm' needs nothing extra.")


@dataclass
class NuclearResult:
    """The solution ``X (n1, n2)``, its nuclear norm, the constraint residual ``||A(X) - y|| / ||y||``,
    the solver used, iterations (ADMM) and seconds."""

    X: Tensor
    nuclear_norm: float
    residual: float
    solver: str
    iterations: int
    seconds: float


def _import_cvxpy():
    try:
        import cvxpy
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        raise ImportError(INSTALL_HINT) from exc
    return cvxpy


def _check(op: MeasurementOperator, y: Tensor, psd: bool) -> Tensor:
    if not isinstance(op, MeasurementOperator):
        raise WrongTypeError(f"min_nuclear_norm: op must be a MeasurementOperator, got {type(op).__name__}")
    check_tensor("min_nuclear_norm", "y", y)
    if y.shape != (op.m,):
        raise ValueError(f"min_nuclear_norm: y must have shape ({op.m},), got {tuple(y.shape)}")
    if psd and op.shape[0] != op.shape[1]:
        raise ValueError(f"min_nuclear_norm: psd=True needs a square matrix, got {op.shape}")
    return y.double()


def _finish(op: MeasurementOperator, y: Tensor, X: Tensor, solver: str, iterations: int, t0: float) -> NuclearResult:
    res = float(torch.linalg.vector_norm(op.forward(X) - y) / torch.linalg.vector_norm(y).clamp(min=1e-300))
    return NuclearResult(X=X, nuclear_norm=float(torch.linalg.svdvals(X).sum()), residual=res, solver=solver,
                         iterations=iterations, seconds=time.perf_counter() - t0)


def solve_cvxpy(op: MeasurementOperator, y: Tensor, *, psd: bool = False, solver: str | None = None,
                eps: float = 1e-9, verbose: bool = False) -> NuclearResult:
    """The SDP with cvxpy. ``solver``: a cvxpy solver name (default: Clarabel if installed, else SCS).

    Raises:
        ImportError: cvxpy is missing (the message says how to install it).
        RuntimeError: the solver did not reach an optimal status.
    """
    check_number("solve_cvxpy", "eps", eps, low=0, low_open=True)
    cp = _import_cvxpy()
    y = _check(op, y, psd)
    t0 = time.perf_counter()
    n1, n2 = op.shape
    if psd:
        X = cp.Variable((n1, n1), PSD=True)
        objective = cp.Minimize(cp.trace(X))
    else:
        X = cp.Variable((n1, n2))
        objective = cp.Minimize(cp.normNuc(X))
    if isinstance(op, Completion):
        rows, cols = op.rows.numpy(), op.cols.numpy()
        constraints = [X[rows, cols] == y.numpy()]
    else:
        # to_dense uses row-major vec(X); cvxpy's vec is column-major: permute the columns of A
        dense = op.to_dense().reshape(op.m, n1, n2).transpose(1, 2).reshape(op.m, n1 * n2).numpy()
        constraints = [dense @ cp.vec(X, order="F") == y.numpy()]
    problem = cp.Problem(objective, constraints)
    if solver is None:
        solver = "CLARABEL" if "CLARABEL" in cp.installed_solvers() else "SCS"
    kwargs = {"eps": eps} if solver == "SCS" else {}
    problem.solve(solver=solver, verbose=verbose, **kwargs)
    if problem.status not in ("optimal", "optimal_inaccurate") or X.value is None:
        raise RuntimeError(f"min_nuclear_norm (cvxpy, {solver}): status {problem.status}")
    Xv = torch.as_tensor(X.value, dtype=torch.float64)
    if psd:
        Xv = (Xv + Xv.T) / 2
    return _finish(op, y, Xv, f"cvxpy/{solver}", 0, t0)


def _prox_nuclear(V: Tensor, tau: float, psd: bool) -> Tensor:
    if psd:
        evals, evecs = torch.linalg.eigh((V + V.T) / 2)
        return (evecs * (evals - tau).clamp(min=0)) @ evecs.T
    u, s, vh = torch.linalg.svd(V, full_matrices=False)
    return (u * (s - tau).clamp(min=0)) @ vh


def solve_admm(op: MeasurementOperator, y: Tensor, *, psd: bool = False, tol: float = 1e-8, max_iter: int = 20000,
               rho: float | None = None, X0: Tensor | None = None, relaxation: float = RELAXATION,
               balance: float = BALANCE) -> NuclearResult:
    """ADMM for ``min ||X||_* s.t. A(X) = y`` (module docstring), in float64.

    ``relaxation`` in (0, 2) weighs the new X against Z (1 = plain ADMM); every 10 iterations the
    penalty rho doubles or halves when one relative residual exceeds ``balance`` times the other.

    Raises:
        RuntimeError: no convergence in ``max_iter`` iterations (the message gives the residuals).
    """
    where = "solve_admm"
    check_number(where, "relaxation", relaxation, low=0, high=2, low_open=True, high_open=True)
    check_number(where, "balance", balance, low=1, low_open=True)
    check_number(where, "tol", tol, low=0, low_open=True)  # tol <= 0 is never met: max_iter runs, then an error
    check_int(where, "max_iter", max_iter, low=1)
    if rho is not None:
        check_number(where, "rho", rho, low=0, low_open=True)
    if X0 is not None:
        check_tensor(where, "X0", X0, ndim=2)
    y = _check(op, y, psd)
    t0 = time.perf_counter()
    op64 = op.to(dtype=torch.float64)
    Z = op64.project(torch.zeros(op.shape, dtype=torch.float64), y) if X0 is None else op64.project(X0.double(), y)
    if rho is None:
        rho = 1.0 / max(float(torch.linalg.svdvals(Z)[0]), 1e-12)
    U = torch.zeros_like(Z)
    for it in range(1, max_iter + 1):
        X = _prox_nuclear(Z - U, 1.0 / rho, psd)
        Z_prev = Z
        X_relaxed = relaxation * X + (1 - relaxation) * Z_prev  # over-relaxation (Boyd et al. 2011, Sec. 3.4.3)
        Z = op64.project(X_relaxed + U, y)
        U = U + X_relaxed - Z
        r = float(torch.linalg.matrix_norm(X - Z))
        s = rho * float(torch.linalg.matrix_norm(Z - Z_prev))
        scale_p = max(float(torch.linalg.matrix_norm(X)), float(torch.linalg.matrix_norm(Z)), 1e-300)
        scale_d = max(rho * float(torch.linalg.matrix_norm(U)), 1e-300)
        if r <= tol * scale_p and s <= tol * scale_d:
            return _finish(op64, y, Z, "admm", it, t0)
        if not (math.isfinite(r) and math.isfinite(s)):
            raise RuntimeError(f"min_nuclear_norm (admm): non-finite residuals at iteration {it}")
        # residual balancing (Boyd et al. 2011, Sec. 3.4.1); U is the scaled dual, rescale it with rho
        if it % 10 == 0:
            if r / scale_p > balance * s / scale_d:
                rho, U = rho * 2, U / 2
            elif s / scale_d > balance * r / scale_p:
                rho, U = rho / 2, U * 2
    raise RuntimeError(f"min_nuclear_norm (admm): no convergence in {max_iter} iterations (relative primal "
                       f"residual {r / scale_p:.2e}, dual {s / scale_d:.2e}, tol {tol:g}); raise max_iter or tol")


def min_nuclear_norm(op: MeasurementOperator, y: Tensor, *, psd: bool = False, solver: str = "auto",
                     **kwargs) -> NuclearResult:
    """Minimum nuclear norm (or trace, with ``psd``) solution of ``A(X) = y``.

    Args:
        op: measurement operator.
        y: measurements ``(m,)``.
        psd: restrict to PSD matrices (Gunasekar et al.'s symmetric setting).
        solver: ``"cvxpy"``, ``"admm"``, or ``"auto"`` (cvxpy when installed and the problem is small:
            completion with ``n1 * n2 <= CVXPY_AUTO_COMPLETION_LIMIT`` (50 x 50), or sensing with
            ``n1 * n2 * m <= CVXPY_AUTO_LIMIT``; ADMM otherwise).
        **kwargs: passed to :func:`solve_cvxpy` or :func:`solve_admm`.

    Raises:
        ValueError: unknown solver or bad shapes. ImportError: ``solver="cvxpy"`` without cvxpy.
    """
    if solver not in SOLVERS:
        raise ValueError(f"min_nuclear_norm: unknown solver {solver!r}; choose one of {SOLVERS}")
    if solver == "auto":
        try:
            import cvxpy  # noqa: F401
            have = True
        except ImportError:
            have = False
        cells = op.shape[0] * op.shape[1]
        small = cells <= CVXPY_AUTO_COMPLETION_LIMIT if isinstance(op, Completion) else cells * op.m <= CVXPY_AUTO_LIMIT
        solver = "cvxpy" if have and small else "admm"
    if solver == "cvxpy":
        return solve_cvxpy(op, y, psd=psd, **kwargs)
    return solve_admm(op, y, psd=psd, **kwargs)
