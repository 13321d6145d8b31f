"""The implicit bias of an optimization geometry on linear models: its targets (convex programs solved by cvxpy)
and the runs that approach them (Gunasekar, Lee, Soudry & Srebro, "Characterizing Implicit Bias in Terms of
Optimization Geometry", ICML 2018).

**Regression** (underdetermined ``X w = y``, squared loss; the paper's losses with a unique finite root).
Mirror descent with a potential ``psi`` keeps ``grad psi(w_t) - grad psi(w_0)`` in the row space of ``X``
(every gradient is ``X^T r``), so a zero-loss limit satisfies the optimality conditions of

    w_B = argmin_w D_psi(w, w_0)   s.t.   X w = y,   D_psi(w, v) = psi(w) - psi(v) - <grad psi(v), w - v>,

whatever the step size and momentum (:func:`min_bregman` solves it; :func:`bregman_kkt` checks it).
Steepest descent under a non-Euclidean norm has no such invariant: its limit can move with the step size.

**Separable classification** (the paper's strictly monotone losses). For a norm ``||.||`` the max-margin
separator is

    w_N = argmax_{||w|| <= 1} min_n y_n <w, x_n>,   gamma_N = its margin  (= 1 / min{||w|| : y_n <w, x_n> >= 1}),

an LP for l1 and l-infinity, an SOCP for l2 and an SDP for the spectral norm of a matrix parameter
(``<W, X_n> = tr(W^T X_n)``), solved by :func:`max_margin`. Steepest descent w.r.t. ``||.||`` on the
exponential loss ``L(w) = sum_n exp(-y_n <w, x_n>)`` with steps ``eta_t = eta / (B^2 L(w_t))``,
``B = max_n ||x_n||_*``, is steepest descent with step ``eta / B^2`` on ``log L`` (whose gradient is
``grad L / L``, a softmax-weighted average of ``-y_n x_n``, stable at any scale): :func:`run_separable`.
The logistic loss ``sum_n log(1 + exp(-y_n <w, x_n>))`` is run the same way (steps ``eta / (B^2 L)`` on it, as
steepest descent on its ``log L``); its tail is exponential, the case the paper's theorem covers.
Its normalized margin ``min_n y_n <w_t, x_n> / ||w_t||`` tends to ``gamma_N``; the relative gap
``1 - margin / gamma_N`` (:func:`margin_gaps`) measures how far it is.

**AdaGrad** (the same part): on separable data the accumulated squared gradients converge (the gradients vanish),
so AdaGrad ends as gradient descent preconditioned by the frozen ``D = diag(sqrt(G_inf) + eps)``; that
converges in direction to ``argmin w^T D w s.t. y_n <w, x_n> >= 1`` (:func:`preconditioned_max_margin`), and
``G_inf`` depends on the start.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from geomopt.checks import check_int, check_number, check_tensor
from geomopt.implicit.nuclear import _import_cvxpy
from geomopt.optim.mirror import POTENTIALS, mirror_map
from geomopt.optim.steepest import NORMS, SteepestDescent

__all__ = ["MarginResult", "norm_of", "dual_norm_of", "normalized_margin", "margin_gaps", "angle_degrees",
           "max_margin", "preconditioned_max_margin", "min_bregman", "bregman_kkt", "run_regression",
           "run_separable", "run_adagrad", "log_steps", "run_factorized_sensing", "LOSSES", "log_loss_terms"]

FEASIBILITY = 1e-7  # a solver's point must meet its constraints to this relative accuracy
KKT_TOL = 1e-5  # min_bregman's point must meet the optimality condition to this relative accuracy
CERTIFIED = 1e-5  # max_margin's point must be within this (relative) of the dual bound on the max margin


@dataclass(frozen=True)
class MarginResult:
    """A max-margin separator: ``w`` with ``||w|| = 1`` in its norm, its ``margin`` gamma (exact for ``w``), solver,
    time, and ``certified_gap``: the relative distance to the dual bound (no separator has a margin above
    ``margin * (1 + certified_gap)``)."""

    w: Tensor
    margin: float
    norm: str
    solver: str
    seconds: float
    certified_gap: float = 0.0


def _flat_or_matrix(w: Tensor, norm: str) -> Tensor:
    if norm == "spectral":
        if w.dim() != 2:
            raise ValueError(f"the spectral norm needs a matrix parameter, got shape {tuple(w.shape)}")
        return w
    return w.reshape(-1)


def norm_of(w: Tensor, norm: str) -> Tensor:
    """``||w||`` for ``norm`` in ``l1``, ``l2``, ``linf`` (``w`` as one vector) or ``spectral`` (``w`` a matrix)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    v = _flat_or_matrix(w, norm)
    if norm == "spectral":
        return torch.linalg.matrix_norm(v, ord=2)
    return torch.linalg.vector_norm(v, ord={"l1": 1, "l2": 2, "linf": math.inf}[norm])


def dual_norm_of(w: Tensor, norm: str) -> Tensor:
    """``||w||_*``: l1 <-> linf, l2 self-dual, spectral <-> nuclear."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    v = _flat_or_matrix(w, norm)
    if norm == "spectral":
        return torch.linalg.matrix_norm(v, ord="nuc")
    return torch.linalg.vector_norm(v, ord={"l1": math.inf, "l2": 2, "linf": 1}[norm])


def _check_data(where: str, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    check_tensor(where, "x", x, ndim=(2, 3))
    check_tensor(where, "y", y, ndim=1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: x has {x.shape[0]} examples and y {y.shape[0]} labels")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError(f"{where}: labels y must be +1 or -1")
    return x.double(), y.double()


def normalized_margin(w: Tensor, x: Tensor, y: Tensor, norm: str) -> float:
    """``min_n y_n <w, x_n> / ||w||`` (``x``: ``(n, *w.shape)``); ``-inf`` at ``w = 0``."""
    size = norm_of(w, norm)
    if size == 0:
        return -math.inf
    return float((y * (x.reshape(x.shape[0], -1) @ w.reshape(-1))).min() / size)


def margin_gaps(w: Tensor, x: Tensor, y: Tensor, targets: dict[str, float]) -> dict[str, float]:
    """Per norm of ``targets`` (norm -> max margin gamma), the relative gap ``1 - margin_norm(w) / gamma``."""
    return {n: 1.0 - normalized_margin(w, x, y, n) / g for n, g in targets.items()}


def angle_degrees(a: Tensor, b: Tensor) -> float:
    """The Euclidean angle between ``a`` and ``b`` (flattened), in degrees (90 when one is 0)."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    den = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    if den == 0:
        return 90.0
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / den)))))


def _cvx_norm(cp, w, norm: str):
    if norm == "spectral":
        return cp.sigma_max(w)
    return cp.norm(w, {"l1": 1, "l2": 2, "linf": "inf"}[norm])


@functools.lru_cache(maxsize=1)
def _solver_name() -> str:
    """Clarabel if installed, else SCS (``cvxpy.installed_solvers()`` costs about 0.1 s a call)."""
    return "CLARABEL" if "CLARABEL" in _import_cvxpy().installed_solvers() else "SCS"


def _solve(cp, problem, what: str, tight: bool = False, checked: bool = False) -> str:
    """Solve with Clarabel (SCS if it is missing); ``tight``: gap and feasibility tolerances 1e-12. With ``tight``
    or ``checked`` an ``optimal_inaccurate`` status is accepted: the caller checks the point itself. Returns the
    solver's name."""
    solver = _solver_name()
    options = ({"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12} if solver == "CLARABEL"
               else {"eps": 1e-12}) if tight else {}
    with warnings.catch_warnings():  # "solution may be inaccurate": the caller checks the point
        if tight or checked:
            warnings.simplefilter("ignore", UserWarning)
        problem.solve(solver=solver, **options)
    if problem.status in ("infeasible", "infeasible_inaccurate"):
        raise ValueError(f"{what}: the problem is infeasible")
    if problem.status not in (("optimal", "optimal_inaccurate") if tight or checked else ("optimal",)):
        raise RuntimeError(f"{what} (cvxpy, {solver}): status {problem.status}")
    return f"cvxpy/{solver}"


def max_margin(x: Tensor, y: Tensor, norm: str) -> MarginResult:
    """The max-margin separator of ``(x, y)`` for ``norm``: ``min ||w|| s.t. y_n <w, x_n> >= 1`` by cvxpy (LP for
    l1/linf, SOCP for l2, SDP for spectral), rescaled to ``||w|| = 1``; its margin is ``1 / min ||w||``.

    Args:
        x: ``(n, d)`` vectors, or ``(n, d1, d2)`` matrices (every norm; ``spectral`` needs matrices).
        y: ``(n,)`` labels in {-1, +1}.
        norm: ``l1``, ``l2``, ``linf`` or ``spectral``.

    The solver's point is checked independently: its margin is computed from it (exact for that point), and the
    constraints' multipliers ``lam`` give the dual bound ``||sum_n lam_n y_n x_n||_* / sum_n lam_n`` that no
    separator exceeds; the two must agree within ``CERTIFIED`` (relative).

    Raises:
        ValueError: bad shapes or labels, an unknown norm, or data that are not linearly separable.
        RuntimeError: the solver failed, or its point is not certified within ``CERTIFIED`` of the max margin.
    """
    x, y = _check_data("max_margin", x, y)
    if norm not in NORMS:
        raise ValueError(f"max_margin: norm must be one of {NORMS}, got {norm!r}")
    if norm == "spectral" and x.dim() != 3:
        raise ValueError(f"max_margin: the spectral norm needs matrix examples (n, d1, d2), got {tuple(x.shape)}")
    cp = _import_cvxpy()
    t0 = time.perf_counter()
    shape = tuple(x.shape[1:]) if norm == "spectral" else (x[0].numel(),)
    w = cp.Variable(shape)
    feats = (y[:, None] * x.reshape(x.shape[0], -1)).numpy()
    flat = cp.vec(w, order="C") if norm == "spectral" else w
    constraint = feats @ flat >= 1
    problem = cp.Problem(cp.Minimize(_cvx_norm(cp, w, norm)), [constraint])
    try:
        solver = _solve(cp, problem, f"max_margin ({norm})", checked=True)
    except ValueError:
        raise ValueError("max_margin: the data are not linearly separable (no w with y_n <w, x_n> >= 1)") from None
    wv = torch.as_tensor(w.value, dtype=torch.float64).reshape(x.shape[1:])
    size = float(norm_of(wv, norm))
    low = float((torch.as_tensor(feats) @ wv.reshape(-1)).min())
    if low <= 0:
        raise RuntimeError(f"max_margin ({norm}): the solver's point does not separate the data (margin {low:.3g})")
    margin = low / size
    gap = _certified_gap(feats, constraint.dual_value, x.shape[1:], norm, margin)
    if gap > CERTIFIED:
        raise RuntimeError(f"max_margin ({norm}): the solver's point is {gap:.2g} (relative) below the dual bound on "
                           f"the max margin, above {CERTIFIED:g}")
    return MarginResult(wv / size, margin, norm, solver, time.perf_counter() - t0, gap)


def _certified_gap(feats, dual, shape, norm: str, margin: float) -> float:
    """The relative gap between ``margin`` and the dual bound ``||sum_n lam_n y_n x_n||_* / sum_n lam_n`` (minimax:
    every separator's margin is at most this for any ``lam >= 0``); inf without usable multipliers."""
    if dual is None:
        return math.inf
    lam = torch.as_tensor(dual, dtype=torch.float64).reshape(-1).clamp(min=0)
    if lam.sum() <= 0:
        return math.inf
    combo = (lam @ torch.as_tensor(feats)).reshape(shape)
    bound = float(dual_norm_of(combo if norm == "spectral" else combo.reshape(-1), norm)) / float(lam.sum())
    return (bound - margin) / margin


def preconditioned_max_margin(x: Tensor, y: Tensor, d: Tensor) -> Tensor:
    """``argmin sum_i d_i w_i^2 s.t. y_n <w, x_n> >= 1`` (cvxpy QP; ``x``: ``(n, *shape)``, ``d > 0`` of the
    parameter's shape), scaled to unit l2 norm: the limit direction of gradient descent preconditioned by
    ``diag(d)^-1`` (gradient descent on ``v = d^{1/2} w`` converges to the l2 max margin of ``d^{-1/2} x``).

    Raises:
        ValueError: ``d`` not positive and finite, or the data are not separable.
        RuntimeError: the solver did not reach an optimal status.
    """
    x, y = _check_data("preconditioned_max_margin", x, y)
    check_tensor("preconditioned_max_margin", "d", d)
    if d.shape != x.shape[1:] or not bool((d > 0).all()):
        raise ValueError(f"preconditioned_max_margin: d must be positive with shape {tuple(x.shape[1:])}, got "
                         f"shape {tuple(d.shape)}")
    cp = _import_cvxpy()
    w = cp.Variable(d.numel())
    feats = (y[:, None] * x.reshape(x.shape[0], -1)).numpy()
    root = d.double().reshape(-1).sqrt().numpy()
    problem = cp.Problem(cp.Minimize(cp.sum_squares(cp.multiply(root, w))), [feats @ w >= 1])
    try:
        _solve(cp, problem, "preconditioned_max_margin")
    except ValueError:
        raise ValueError("preconditioned_max_margin: the data are not linearly separable") from None
    wv = torch.as_tensor(w.value, dtype=torch.float64)
    return (wv / torch.linalg.vector_norm(wv)).reshape(d.shape)


def _check_regression(where: str, x: Tensor, y: Tensor, w0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    check_tensor(where, "x", x, ndim=2)
    check_tensor(where, "y", y, ndim=1)
    check_tensor(where, "w0", w0, ndim=1)
    if y.shape[0] != x.shape[0] or w0.shape[0] != x.shape[1]:
        raise ValueError(f"{where}: shapes x {tuple(x.shape)}, y {tuple(y.shape)}, w0 {tuple(w0.shape)} do not match "
                         "(x: (n, d), y: (n,), w0: (d,))")
    return x.double(), y.double(), w0.double()


def min_bregman(x: Tensor, y: Tensor, w0: Tensor, potential: str, p: float = 2.0) -> Tensor:
    """``argmin_w D_psi(w, w0) s.t. x w = y`` by cvxpy, for ``potential`` ``lp`` (``psi = 1/2 ||w||_p^2``) or
    ``entropy`` (``psi = sum w log w``, ``w > 0``): minimizes ``psi(w) - <grad psi(w0), w>`` (the divergence up
    to a constant). The hypentropy has no cvxpy atom and is refused.

    The solver runs at tolerances 1e-12 and its point is then checked independently: ``x w = y`` to a relative
    ``FEASIBILITY`` and the optimality condition (:func:`bregman_kkt`) to ``KKT_TOL`` (Clarabel's default
    tolerances left it at 4e-5 to 2e-4 here; the tight ones at 1e-9 to 4e-7).

    Raises:
        ValueError: bad shapes, an unsupported potential, ``p <= 1``, a non-positive ``w0`` for the entropy, or
            no feasible point.
        RuntimeError: the solver failed, or its point misses ``x w = y`` or the optimality condition.
    """
    x, y, w0 = _check_regression("min_bregman", x, y, w0)
    if potential not in ("lp", "entropy"):
        raise ValueError(f"min_bregman: potential must be 'lp' or 'entropy' (of {POTENTIALS}), got {potential!r}")
    check_number("min_bregman", "p", p, low=1, low_open=True)
    if potential == "entropy" and not bool((w0 > 0).all()):
        raise ValueError("min_bregman: the entropy potential needs a positive w0")
    cp = _import_cvxpy()
    w = cp.Variable(x.shape[1])
    theta0 = mirror_map(w0, potential, p=p).numpy()
    if potential == "entropy":
        psi = -cp.sum(cp.entr(w))
    else:  # p = 2 as a QP: its cone form through pnorm stalls at an optimality residual of 2e-4
        psi = 0.5 * (cp.sum_squares(w) if p == 2 else cp.square(cp.pnorm(w, p)))
    problem = cp.Problem(cp.Minimize(psi - theta0 @ w), [x.numpy() @ w == y.numpy()])
    _solve(cp, problem, "min_bregman", tight=True)
    wv = torch.as_tensor(w.value, dtype=torch.float64)
    residual = float(torch.linalg.vector_norm(x @ wv - y) / torch.linalg.vector_norm(y).clamp(min=1e-300))
    kkt = bregman_kkt(x, wv, w0, potential, p) if potential == "lp" or bool((wv > 0).all()) else math.inf
    if residual > FEASIBILITY or kkt > KKT_TOL:
        raise RuntimeError(f"min_bregman ({potential}): the solver's point is not the optimum (relative residual "
                           f"{residual:.2g}, optimality residual {kkt:.2g}; need <= {FEASIBILITY:g}, {KKT_TOL:g})")
    return wv


def bregman_kkt(x: Tensor, w: Tensor, w0: Tensor, potential: str, p: float = 2.0, beta: float = 1.0) -> float:
    """The optimality residual of ``w`` for ``min D_psi(., w0) s.t. x w = y``: the part of
    ``grad psi(w) - grad psi(w0)`` outside the row space of ``x``, relative to its size (0 at the optimum)."""
    diff = mirror_map(w.double(), potential, p=p, beta=beta) - mirror_map(w0.double(), potential, p=p, beta=beta)
    size = torch.linalg.vector_norm(diff)
    if size == 0:
        return 0.0
    q, _ = torch.linalg.qr(x.double().T)
    return float(torch.linalg.vector_norm(diff - q @ (q.T @ diff)) / size)


def run_regression(x: Tensor, y: Tensor, w0: Tensor, make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
                   *, steps: int, tol: float) -> dict:
    """Minimize ``1/2 ||x w - y||^2`` from ``w0`` with ``make_optimizer([w])`` until the relative residual
    ``||x w - y|| / ||y||`` is at most ``tol`` or ``steps`` steps; float64.

    Returns:
        ``{"w", "residual", "steps", "diverged"}``; ``diverged`` when the loss or the iterate stops being
        finite (the optimizer's own FloatingPointError included), with the last finite iterate.
    """
    x, y, w0 = _check_regression("run_regression", x, y, w0)
    check_int("run_regression", "steps", steps, low=1)
    check_number("run_regression", "tol", tol, low=0, low_open=True)
    w = w0.clone().requires_grad_(True)
    opt = make_optimizer([w])
    scale = float(torch.linalg.vector_norm(y).clamp(min=1e-300))
    done, diverged = 0, False
    for done in range(steps + 1):
        residual = x @ w - y
        rel = float(torch.linalg.vector_norm(residual.detach())) / scale
        if not math.isfinite(rel):
            diverged = True
            break
        if rel <= tol or done == steps:
            break
        opt.zero_grad()
        (0.5 * (residual ** 2).sum()).backward()
        try:
            opt.step()
        except FloatingPointError:
            diverged = True
            break
    return {"w": w.detach().clone(), "residual": rel, "steps": done, "diverged": diverged}


def log_steps(steps: int, points: int) -> list[int]:
    """About ``points`` step counts from 1 to ``steps``, evenly spaced on a log scale (``steps`` included)."""
    check_int("log_steps", "steps", steps, low=1)
    check_int("log_steps", "points", points, low=2)
    return sorted({max(1, round(steps ** (i / (points - 1)))) for i in range(points)} | {steps})


LOSSES = ("exponential", "logistic")
_LOGISTIC_TAIL = 30.0  # log(log(1 + e^-m)) = -m - e^-m / 2 + ...: beyond this margin it is -m to 1e-13


def log_loss_terms(margins: Tensor, loss: str) -> Tensor:
    """``log l(m_n)`` per example for the exponential (``-m``) or logistic (``log log(1 + e^-m)``) loss, stable
    at any margin (the logistic one is ``-m`` beyond margin 30, where the difference is below 1e-13); ``log L``
    is their ``logsumexp``.

    Raises:
        ValueError: an unknown loss.
    """
    if loss == "exponential":
        return -margins
    if loss != "logistic":
        raise ValueError(f"log_loss_terms: loss must be one of {LOSSES}, got {loss!r}")
    near = torch.log(torch.nn.functional.softplus(-margins.clamp(max=_LOGISTIC_TAIL)))
    return torch.where(margins > _LOGISTIC_TAIL, -margins, near)


def run_separable(x: Tensor, y: Tensor, norm: str, *, eta: float, steps: int, targets: dict[str, float],
                  reference: Tensor, points: int = 60, normalized: bool = False, loss: str = "exponential") -> dict:
    """Steepest descent w.r.t. ``norm`` on the exponential or logistic loss of the linear model ``<w, x_n>`` from
    ``w = 0``, with steps ``eta / (B^2 L(w_t))`` (module docstring), i.e. :class:`SteepestDescent` with
    ``lr = eta / B^2`` on ``log L``; float64.

    Args:
        x: ``(n, *shape)`` examples (the parameter has ``shape``; ``spectral`` needs a matrix).
        y: ``(n,)`` labels in {-1, +1}.
        norm, normalized: The geometry (:class:`SteepestDescent`).
        eta: The step factor, > 0.
        steps: Number of steps.
        targets: norm -> its max margin gamma (:func:`max_margin`); the curve records every norm's gap.
        reference: The max-margin direction of ``norm`` (the curve records the angle to it).
        points: About this many log-spaced steps are recorded.
        loss: ``"exponential"`` or ``"logistic"`` (:func:`log_loss_terms`).

    Returns:
        ``{"w", "curve", "diverged"}``; ``curve``: one record per recorded step with ``step``, ``log_loss``
        (``log L``), ``gap_<norm>`` per target and ``angle``.
    """
    x, y = _check_data("run_separable", x, y)
    check_number("run_separable", "eta", eta, low=0, low_open=True)
    check_int("run_separable", "steps", steps, low=1)
    if loss not in LOSSES:
        raise ValueError(f"run_separable: loss must be one of {LOSSES}, got {loss!r}")
    shape = x.shape[1:]
    bound = max(float(dual_norm_of(xn if norm == "spectral" else xn.reshape(-1), norm)) for xn in x)
    w = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    opt = SteepestDescent([w], lr=eta / bound ** 2, norm=norm, normalized=normalized)
    signed = (y[:, None] * x.reshape(x.shape[0], -1))
    record, curve = set(log_steps(steps, points)), []
    for t in range(1, steps + 1):
        opt.zero_grad()
        log_loss = torch.logsumexp(log_loss_terms(signed @ w.reshape(-1), loss), 0)
        log_loss.backward()
        try:
            opt.step()
        except FloatingPointError:
            return {"w": w.detach().clone(), "curve": curve, "diverged": True}
        if t in record:
            wd = w.detach()
            gaps = margin_gaps(wd, x, y, targets)
            log_l = float(torch.logsumexp(log_loss_terms(signed @ wd.reshape(-1), loss), 0))
            curve.append({"step": t, "log_loss": log_l,
                          **{f"gap_{n}": g for n, g in gaps.items()}, "angle": angle_degrees(wd, reference)})
    return {"w": w.detach().clone(), "curve": curve, "diverged": not torch.isfinite(w).all().item()}


def run_adagrad(x: Tensor, y: Tensor, w0: Tensor, *, lr: float, steps: int, eps: float = 1e-10) -> dict:
    """``torch.optim.Adagrad`` on the exponential loss ``sum_n exp(-y_n <w, x_n>)`` from ``w0``; float64.

    Returns:
        ``{"w", "accumulator", "accumulator_half", "loss", "loss0", "diverged"}``: the final iterate, AdaGrad's
        sum of squared gradients at the end and at half the steps (how far it is from frozen), the final and
        initial loss.
    """
    x, y = _check_data("run_adagrad", x, y)
    check_tensor("run_adagrad", "w0", w0)
    check_int("run_adagrad", "steps", steps, low=2)
    signed = y[:, None] * x.reshape(x.shape[0], -1)
    w = w0.double().clone().reshape(-1).requires_grad_(True)
    opt = torch.optim.Adagrad([w], lr=lr, eps=eps)

    def loss_of(v: Tensor) -> Tensor:
        return torch.exp(-(signed @ v)).sum()
    loss0, half = float(loss_of(w.detach())), None
    for t in range(steps):
        opt.zero_grad()
        loss = loss_of(w)
        if not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
        if t + 1 == steps // 2:
            half = opt.state[w]["sum"].clone()
    final = loss_of(w.detach())
    acc = opt.state[w]["sum"].clone()
    return {"w": w.detach().reshape(w0.shape), "accumulator": acc.reshape(w0.shape),
            "accumulator_half": half.reshape(w0.shape), "loss": float(final), "loss0": loss0,
            "diverged": not (torch.isfinite(final) and torch.isfinite(w).all())}



def run_factorized_sensing(objective, make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer], *, n: int,
                           alpha: float, steps: int, seed: int = 0, tol: float = 1e-10) -> dict:
    """Symmetric matrix sensing ``X = U U^T`` (U ``n x n``, ``U(0) = sqrt(alpha) Q`` with Q a seeded orthogonal
    matrix, so ``X(0) = alpha I``) trained by any optimizer on U: Gunasekar et al. 2017's small-start setting under
    the geometries of Gunasekar et al. 2018 (``SteepestDescent`` under a norm, ``MirrorDescent``, Adam...).

    Args:
        objective: A :class:`geomopt.implicit.SensingObjective` (its ``loss(W)``).
        make_optimizer: ``[U] -> optimizer``.
        n, alpha, seed: The factor's size, the init scale, the seed of Q.
        steps: At most this many steps; the run stops at loss ``tol`` x its value at ``X = 0``.

    Returns:
        ``{"X", "loss_ratio", "steps", "diverged"}``: the end-to-end matrix, its loss over the loss at ``X = 0``,
        the steps taken, and whether the loss or an update became non-finite (``X`` is then the last finite one).
    """
    from geomopt.implicit.factorized import _orthogonal
    check_int("run_factorized_sensing", "n", n, low=1)
    check_number("run_factorized_sensing", "alpha", alpha, low=0, low_open=True)
    check_int("run_factorized_sensing", "steps", steps, low=1)
    zero = float(objective.loss(torch.zeros(n, n, dtype=torch.float64)))
    u = (math.sqrt(alpha) * _orthogonal(n, n, torch.Generator().manual_seed(seed))).requires_grad_(True)
    opt = make_optimizer([u])
    done, diverged, last = 0, False, u.detach().clone()
    for done in range(steps + 1):
        loss = objective.loss(u @ u.T)
        if not torch.isfinite(loss):
            diverged = True
            break
        last = u.detach().clone()
        if float(loss.detach()) <= tol * zero or done == steps:
            break
        opt.zero_grad()
        loss.backward()
        try:
            opt.step()
        except FloatingPointError:
            diverged = True
            break
    x = last @ last.T
    return {"X": x, "loss_ratio": float(objective.loss(x)) / zero, "steps": done, "diverged": diverged}
