"""The lab behind ``geomopt implicit``: one problem, a grid of (depth, alpha, seed) runs, the convex
baseline, a table (CSV + JSON) and PNG figures.

Normalization (Arora, Cohen, Hu & Luo 2019): the target has ``||W*||_F = n`` (entries of order 1),
Gaussian sensing matrices have entries ``N(0, 1/n^2)``, so ``y`` is of order 1 for both sensing and
completion. The default step is ``lr_factor / (N lambda_max(A*A/m) ||W*||_2^(2 - 2/N))``, the
inverse of the curvature of the loss at the target, with adaptive step control on top.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from geomopt.checks import check_int, check_number
from geomopt.implicit.deep_linear import RegressionObjective, synthetic_regression
from geomopt.implicit.factorized import INITS, SensingObjective, end_to_end, init_factors, run_factorized
from geomopt.implicit.nuclear import SOLVERS, min_nuclear_norm
from geomopt.implicit.operators import Completion, GaussianSensing, MeasurementOperator, random_low_rank, random_psd
from geomopt.implicit.spectral import effective_rank, nuclear_norm, relative_distance
from geomopt.figures import plot_curves
from geomopt.tables import write_records


# X_nuc counts as the ground truth when ||X_nuc - X*||_F / ||X*||_F is at most this (solver accuracy ~1e-4)
NUC_EQUALS_TRUTH = 1e-2


@dataclass
class MatrixLabConfig:
    """A sensing or completion problem and the grid of runs on it."""

    kind: str = "sensing"  # sensing | completion
    n: int = 50
    rank: int = 2
    m: int = 400
    depths: tuple[int, ...] = (2,)
    alphas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    seeds: tuple[int, ...] = (0,)
    psd: bool = False  # PSD truth, symmetric sensing, U U^T at depth 2, PSD baseline (Gunasekar et al.)
    init: str = "gaussian"
    lr_factor: float = 0.5
    steps: int = 20000
    adaptive: bool = True
    rel_step: float = 0.01
    tol: float = 1e-10  # stop a run at this training loss (relative to the loss at W = 0)
    problem_seed: int = 0
    solver: str = "auto"  # nuclear-norm baseline: auto | cvxpy | admm | none
    log_every: int = 50
    dtype: str = "float64"

    def validate(self) -> None:
        """Raise ValueError (a value out of range) or TypeError (a value of the wrong type) naming the field."""
        where = f"implicit {self.kind}"
        if self.kind not in ("sensing", "completion"):
            raise ValueError(f"implicit: kind must be sensing or completion, got {self.kind!r}")
        check_int(where, "n", self.n, low=1)
        check_int(where, "rank", self.rank, low=1, high=self.n)
        check_int(where, "m", self.m, low=1)
        if self.kind == "completion" and self.m > self.n * self.n:
            raise ValueError(f"implicit completion: need 1 <= m <= n^2 = {self.n ** 2} (entries of an n x n matrix), "
                             f"got m={self.m}")
        _check_lists(where, depths=self.depths, alphas=self.alphas, seeds=self.seeds)
        if self.psd and any(d != 2 for d in self.depths if d > 1):
            raise ValueError("implicit: psd=True uses X = U U^T, so depths must be 1 or 2")
        if self.init not in INITS:
            raise ValueError(f"{where}: init must be one of {INITS}, got {self.init!r}")
        check_number(where, "lr_factor", self.lr_factor, low=0, low_open=True)
        check_int(where, "steps", self.steps, low=0)
        check_number(where, "rel_step", self.rel_step, low=0, low_open=True)
        check_number(where, "tol", self.tol, low=0)
        check_int(where, "problem_seed", self.problem_seed)
        if self.solver not in SOLVERS + ("none",):
            raise ValueError(f"{where}: solver must be one of {SOLVERS + ('none',)}, got {self.solver!r}")
        check_int(where, "log_every", self.log_every, low=1)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"implicit: dtype must be float32 or float64, got {self.dtype!r}")


def _check_lists(where: str, **lists) -> None:
    """Non-empty lists: ``depths`` (integers >= 1), ``alphas`` (finite numbers >= 0), ``seeds`` (integers),
    ``thresholds`` (finite numbers > 0)."""
    rules = {"depths": lambda k, v: check_int(where, k, v, low=1), "seeds": lambda k, v: check_int(where, k, v),
             "alphas": lambda k, v: check_number(where, k, v, low=0),
             "thresholds": lambda k, v: check_number(where, k, v, low=0, low_open=True)}
    for key, values in lists.items():
        if not isinstance(values, (tuple, list)) or not values:
            raise ValueError(f"{where}: {key} must be a non-empty list, got {values!r}")
        for i, v in enumerate(values):
            rules[key](f"{key}[{i}]", v)


def build_problem(cfg: MatrixLabConfig) -> tuple[MeasurementOperator, torch.Tensor, torch.Tensor]:
    """``(operator, target W*, measurements y)`` for the config (all float64)."""
    cfg.validate()
    n = cfg.n
    if cfg.psd:
        target = random_psd(n, cfg.rank, seed=cfg.problem_seed, fro_norm=float(n))
    else:
        target = random_low_rank(n, n, cfg.rank, seed=cfg.problem_seed, fro_norm=float(n))
    if cfg.kind == "sensing":
        op = GaussianSensing(n, n, cfg.m, seed=cfg.problem_seed + 1, symmetric=cfg.psd, scale=1.0 / n)
    else:
        op = Completion.random(n, n, cfg.m, seed=cfg.problem_seed + 1, symmetric=cfg.psd)
    return op, target, op(target)


def operator_norm2(op: MeasurementOperator, iters: int = 50, seed: int = 0) -> float:
    """``lambda_max(A* A)`` by power iteration on the operator."""
    check_int("operator_norm2", "iters", iters, low=1)
    x = torch.randn(*op.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lam = 0.0
    for _ in range(iters):
        x = op.adjoint(op(x))
        lam = float(torch.linalg.matrix_norm(x))
        x = x / max(lam, 1e-300)
    return lam


def default_lr(op: MeasurementOperator, target: torch.Tensor, depth: int, factor: float) -> float:
    """``factor / (N lambda_max(A*A/m) ||W*||_2^(2 - 2/N))``: the inverse of the loss's curvature at the target."""
    check_int("default_lr", "depth", depth, low=1)
    check_number("default_lr", "factor", factor, low=0, low_open=True)
    sigma = float(torch.linalg.matrix_norm(target, ord=2))
    return factor / (depth * operator_norm2(op) / op.m * sigma ** (2 - 2 / depth))


def _write_table(rows: list[dict[str, Any]], out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_records(out / f"{stem}.csv", rows)
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1))


@contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` torch threads and restore the previous count (small matrices run fastest on 1)."""
    if n is not None:
        check_int("torch_threads", "threads", n, low=1)
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_matrix_lab(cfg: MatrixLabConfig, out: Path | None = None, *, progress: bool = False,
                   threads: int | None = 1) -> dict[str, Any]:
    """Run the grid, the baseline, write ``table.csv/json``, ``config.json`` and figures into ``out``.

    ``threads``: torch threads during the run (1 is fastest below n ~ 200; None keeps the current setting).

    Returns:
        ``{"rows": [...], "baseline": {...} or None, "histories": {depth: (runs, FactorizedResult)}}``.
        The baseline says whether the minimum-nuclear-norm solution equals the truth
        (``equals_truth``: ``||X_nuc - X*||_F / ||X*||_F <= NUC_EQUALS_TRUTH``, ``dist_truth``): only where
        it does not can the distance to ``X_nuc`` tell a nuclear-norm bias from plain recovery. Every row
        has ``loss_zero``, the loss at ``W = 0``: a run converged when ``train_loss <= tol * loss_zero``.
    """
    with torch_threads(threads):
        return _run_matrix_lab(cfg, out, progress)


def _run_matrix_lab(cfg: MatrixLabConfig, out: Path | None, progress: bool) -> dict[str, Any]:
    cfg.validate()
    dtype = getattr(torch, cfg.dtype)
    op, target, y = build_problem(cfg)
    baseline = None
    if cfg.solver != "none":
        t0 = time.perf_counter()
        res = min_nuclear_norm(op, y, psd=cfg.psd, solver=cfg.solver)
        dist_truth = float(relative_distance(res.X, target))
        baseline = {"X": res.X, "solver": res.solver, "seconds": time.perf_counter() - t0,
                    "nuclear": res.nuclear_norm, "err": dist_truth ** 2, "dist_truth": dist_truth,
                    "equals_truth": dist_truth <= NUC_EQUALS_TRUTH, "erank": float(effective_rank(res.X)),
                    "residual": res.residual}
    objective = SensingObjective(op.to(dtype=dtype), y.to(dtype))
    loss_zero = float(0.5 * (y * y).mean())
    rows, histories = [], {}
    runs = [(float(a), int(s)) for a in cfg.alphas for s in cfg.seeds]
    for depth in cfg.depths:
        lr = default_lr(op, target, depth, cfg.lr_factor)
        symmetric = cfg.psd and depth == 2
        factors = init_factors(op.shape, depth, alphas=[a for a, _ in runs], seeds=[s for _, s in runs],
                               init=cfg.init, symmetric=symmetric, dtype=dtype)
        t0 = time.perf_counter()
        result = run_factorized(objective, factors, lr=lr, steps=cfg.steps, symmetric=symmetric,
                                adaptive=cfg.adaptive, rel_step=cfg.rel_step, tol=cfg.tol * loss_zero,
                                log_every=cfg.log_every, reference=None if baseline is None else baseline["X"],
                                track_sv=min(10, cfg.n), progress=progress, desc=f"{cfg.kind} depth {depth}")
        seconds = time.perf_counter() - t0
        histories[depth] = (runs, result)
        W = result.W.double()
        err = relative_distance(W, target) ** 2
        for b, (alpha, seed) in enumerate(runs):
            row = {"depth": depth, "alpha": alpha, "seed": seed, "lr": lr, "steps": int(result.steps_taken[b]),
                   "train_loss": float(result.final_loss[b]), "converged": bool(result.converged[b]),
                   "diverged": bool(result.diverged[b]), "err": float(err[b]), "dist_truth": float(err[b]) ** 0.5,
                   "nuclear": float(nuclear_norm(W[b])), "erank": float(effective_rank(W[b])),
                   "loss_zero": loss_zero, "seconds_batch": seconds}
            if baseline is not None:
                row["dist_nuc"] = float(relative_distance(W[b], baseline["X"]))
            rows.append(row)
    if baseline is not None:
        rows.append({"depth": "nuclear", "alpha": "", "seed": "", "lr": "", "steps": "", "train_loss": "",
                     "converged": True, "diverged": False, "err": baseline["err"],
                     "dist_truth": baseline["dist_truth"], "nuclear": baseline["nuclear"],
                     "erank": baseline["erank"], "loss_zero": loss_zero, "seconds_batch": baseline["seconds"],
                     "dist_nuc": 0.0})
    if out is not None:
        out = Path(out)
        _write_table(rows, out, "table")
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        _matrix_figures(cfg, rows, histories, baseline, out)
    return {"rows": rows, "baseline": baseline, "histories": histories, "target": target}


def _matrix_figures(cfg, rows, histories, baseline, out: Path) -> list[str]:
    files = []
    if baseline is not None:
        panels = {f"{cfg.kind}: distance to min-nuclear-norm solution": {}}
        for depth in cfg.depths:
            xs, ys = [], []
            for a in cfg.alphas:
                ds = [r["dist_nuc"] for r in rows if r["depth"] == depth and r["alpha"] == a]
                xs.append(a)
                ys.append(sum(ds) / len(ds))
            panels[next(iter(panels))][f"depth {depth}"] = (xs, ys)
        _loglog(panels, out / "dist_vs_alpha.png", "alpha (init scale)", "||W - W_nuc||_F / ||W_nuc||_F")
        files.append("dist_vs_alpha.png")
    for key, fname, label in [("loss", "loss.png", "training loss"), ("erank", "erank.png", "effective rank")]:
        panels = {}
        for depth, (runs, res) in histories.items():
            panels[f"depth {depth}"] = {f"alpha {a:g}, seed {s}": (res.steps.tolist(), res.history[key][:, b].tolist())
                                        for b, (a, s) in enumerate(runs)}
        plot_curves(panels, out / fname, xlabel="step", ylabel=label, logy=key == "loss")
        files.append(fname)
    return files


def _loglog(panels, path: Path, xlabel: str, ylabel: str) -> None:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for title, lines in panels.items():
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(title, fontsize=10)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class DeepLinearLabConfig:
    """l_p regression with depth-N linear networks (balanced init from the same end-to-end W(0))."""

    n: int = 512
    d: int = 32
    k: int = 1
    p: float = 4.0
    depths: tuple[int, ...] = (1, 2, 3)
    lr: float = 1e-3
    steps: int = 5000
    init_scale: float = 1.0  # ||W(0)||_F
    width: int | None = None  # hidden width (default d)
    condition: float = 10.0
    seed: int = 0
    log_every: int = 10
    target_loss: float | None = None  # steps to reach it are reported (default: 1.5x depth 1's final loss)

    def validate(self) -> None:
        """Raise ValueError (a value out of range) or TypeError (a value of the wrong type) naming the field."""
        where = "deep-linear"
        check_int(where, "d", self.d, low=1)
        check_int(where, "n", self.n, low=self.d)  # X (n, d) needs d non-zero singular values
        check_int(where, "k", self.k, low=1)
        check_int(where, "steps", self.steps, low=1)
        _check_lists(where, depths=self.depths)
        check_number(where, "p", self.p, low=1)
        check_number(where, "lr", self.lr, low=0, low_open=True)
        check_number(where, "init_scale", self.init_scale, low=0, low_open=True)
        if self.width is not None:
            check_int(where, "width", self.width, low=min(self.k, self.d))  # balanced factors of W (k, d)
        check_number(where, "condition", self.condition, low=1)
        check_int(where, "seed", self.seed)
        check_int(where, "log_every", self.log_every, low=1)
        if self.target_loss is not None:
            check_number(where, "target_loss", self.target_loss, low=0)


def run_deep_linear_lab(cfg: DeepLinearLabConfig, out: Path | None = None, *, progress: bool = False,
                        threads: int | None = 1) -> dict:
    """Train each depth from the same end-to-end start with the same lr; rows + loss curves."""
    with torch_threads(threads):
        return _run_deep_linear_lab(cfg, out, progress)


def _run_deep_linear_lab(cfg: DeepLinearLabConfig, out: Path | None, progress: bool) -> dict:
    cfg.validate()
    X, Y, _ = synthetic_regression(cfg.n, cfg.d, k=cfg.k, seed=cfg.seed, condition=cfg.condition)
    objective = RegressionObjective(X, Y, cfg.p)
    curves, rows = {}, []
    for depth in cfg.depths:
        factors = init_factors(objective.shape, depth, alphas=[cfg.init_scale / math.sqrt(cfg.k)], seeds=[cfg.seed], init="balanced",
                               width=cfg.width or cfg.d)
        res = run_factorized(objective, factors, lr=cfg.lr, steps=cfg.steps, log_every=cfg.log_every,
                             progress=progress, desc=f"deep-linear depth {depth}")
        curves[depth] = (res.steps.tolist(), res.history["loss"][:, 0].tolist(), bool(res.diverged[0]))
    base_final = curves[min(cfg.depths)][1][-1]
    target = cfg.target_loss if cfg.target_loss is not None else 1.5 * base_final
    for depth, (steps, losses, diverged) in curves.items():
        hit = next((s for s, v in zip(steps, losses) if v <= target), None)
        rows.append({"depth": depth, "p": cfg.p, "lr": cfg.lr, "initial_loss": losses[0], "final_loss": losses[-1],
                     "target_loss": target, "steps_to_target": hit if hit is not None else "", "diverged": diverged})
    if out is not None:
        out = Path(out)
        _write_table(rows, out, "table")
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        plot_curves({f"l{cfg.p:g} regression, lr {cfg.lr:g}": {f"depth {d}": (s, v) for d, (s, v, _) in
                                                               curves.items()}},
                    out / "loss.png", xlabel="step", ylabel=f"l{cfg.p:g} loss", logy=True)
    return {"rows": rows, "curves": curves}


@dataclass
class NormsVsRankConfig:
    """Razin & Cohen (2020), "Implicit Regularization in Deep Learning May Not Be Explainable by Norms":
    2 x 2 completion with observed ``W12 = 1, W21 = 1, W22 = 0`` by a depth-N factorization.

    Every solution has ``det W = -1`` (rank 2). Gradient flow from ``det W(0) > 0`` keeps ``det W > 0``
    (the determinant of each factor keeps its sign), so the loss can only go to 0 with ``|W11| -> inf``:
    every norm grows without bound while ``sigma2 / sigma1 = |det W| / sigma1^2 -> 0`` (the rank falls
    towards 1). Runs start at ``det W(0) > 0``: a draw with ``det W(0) < 0`` has the first column of
    ``W_1`` negated (the Gaussian law and balancedness are unchanged).

    Loss reported in the paper's units, ``l(W) = 1/2 sum_observed (W_ij - b_ij)^2`` (3x the lab's mean).
    """

    depth: int = 3
    inits: tuple[str, ...] = ("gaussian", "balanced")
    seeds: tuple[int, ...] = (0, 1, 2)
    init_std: float = 8e-3  # std of a Gaussian factor entry (the paper's); balanced: W(0) of the same alpha
    lr: float = 100.0  # cap of the adaptive step (on the lab's mean loss)
    rel_step: float = 0.01
    steps: int = 20000
    log_every: int = 100
    thresholds: tuple[float, ...] = (1e-2, 1e-3)  # paper-unit losses at which the norms are read

    def validate(self) -> None:
        """Raise ValueError (a value out of range) or TypeError (a value of the wrong type) naming the field."""
        where = "norms-vs-rank"
        check_int(where, "depth", self.depth, low=2)
        if not self.inits or any(i not in INITS for i in self.inits):
            raise ValueError(f"{where}: inits must be a non-empty list of {INITS}, got {self.inits!r}")
        _check_lists(where, seeds=self.seeds, thresholds=self.thresholds)
        check_number(where, "init_std", self.init_std, low=0, low_open=True)
        check_number(where, "lr", self.lr, low=0, low_open=True)
        check_number(where, "rel_step", self.rel_step, low=0, low_open=True)
        check_int(where, "steps", self.steps, low=1)
        check_int(where, "log_every", self.log_every, low=1)


def norms_vs_rank_problem() -> tuple[Completion, torch.Tensor]:
    """The 2 x 2 completion of Razin & Cohen: observed (0, 1), (1, 0), (1, 1) with values 1, 1, 0."""
    return Completion(2, 2, torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1])), torch.tensor([1.0, 1.0, 0.0],
                                                                                            dtype=torch.float64)


def run_norms_vs_rank(cfg: NormsVsRankConfig, *, threads: int | None = 1) -> dict[str, Any]:
    """All (init, seed) runs of the 2 x 2 example in one batch (adaptive steps approximating gradient flow).

    Returns:
        ``{"rows": [...], "curves": {(init, seed): {"loss", "nuclear", "sigma1", "ratio", "erank"}}}``: per run the
        final loss (paper units), ``W11``, ``det W``, the norms (``nuclear``, ``frobenius``, ``spectral``),
        ``sigma2/sigma1``, the effective rank, ``flow_ok`` (``det W > -1/2`` at the end; along the flow
        ``det W -> 0+``, and a discrete run that crossed 0 heads for the finite solutions, ``det W = -1``) and, per threshold ``t``, the nuclear norm and ``sigma2/sigma1`` at the
        first logged step with loss ``<= t`` (``nuclear@t``, ``ratio@t``; NaN if not reached).
    """
    cfg.validate()
    with torch_threads(threads):
        op, y = norms_vs_rank_problem()
        objective = SensingObjective(op, y)
        runs = [(init, int(s)) for init in cfg.inits for s in cfg.seeds]
        alpha = (cfg.init_std * math.sqrt(2)) ** cfg.depth  # Gaussian factor entries N(0, alpha^(2/N) / 2)
        parts = [init_factors((2, 2), cfg.depth, alphas=[alpha], seeds=[s], init=init) for init, s in runs]
        factors = [torch.cat([p[j] for p in parts]) for j in range(cfg.depth)]
        sign = torch.sign(torch.linalg.det(end_to_end(factors)))
        factors[0][:, :, 0] *= sign[:, None]
        res = run_factorized(objective, factors, lr=cfg.lr, steps=cfg.steps, adaptive=True, rel_step=cfg.rel_step,
                             log_every=cfg.log_every, track_sv=2)
    loss = 3 * res.history["loss"]
    sv = res.history["sv"]
    ratio = sv[..., 1] / sv[..., 0]
    rows, curves = [], {}
    det = torch.linalg.det(res.W)
    svd_end = torch.linalg.svdvals(res.W)
    for b, (init, seed) in enumerate(runs):
        row = {"init": init, "seed": seed, "steps": int(res.steps_taken[b]), "loss": float(loss[-1, b]),
               "W11": float(res.W[b, 0, 0]), "det": float(det[b]), "flow_ok": bool(det[b] > -0.5),
               "nuclear": float(svd_end[b].sum()), "frobenius": float(svd_end[b].norm()),
               "spectral": float(svd_end[b, 0]), "ratio": float(svd_end[b, 1] / svd_end[b, 0]),
               "erank": float(res.history["erank"][-1, b]), "diverged": bool(res.diverged[b])}
        for t in cfg.thresholds:
            hit = (loss[:, b] <= t).nonzero()
            i = int(hit[0]) if len(hit) else None
            row[f"nuclear@{t:g}"] = float(res.history["nuclear"][i, b]) if i is not None else math.nan
            row[f"ratio@{t:g}"] = float(ratio[i, b]) if i is not None else math.nan
        rows.append(row)
        curves[init, seed] = {"loss": loss[:, b].tolist(), "nuclear": res.history["nuclear"][:, b].tolist(),
                              "sigma1": sv[:, b, 0].tolist(), "ratio": ratio[:, b].tolist(),
                              "erank": res.history["erank"][:, b].tolist()}
    return {"rows": rows, "curves": curves}
