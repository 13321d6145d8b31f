"""Reproduction: the optimization geometry decides the implicit bias (Gunasekar, Lee, Soudry & Srebro, ICML 2018).

Regression (the paper's losses with a unique finite root): underdetermined ``X w = y`` (``X`` n x d Gaussian with
entries N(0, 1/d), ``y = X w*`` with ``w*`` uniform in [0.5, 1.5], the same positive start ``w0`` for every method),
squared loss, float64. Mirror descent (:class:`geomopt.optim.MirrorDescent`) with each potential at every step size
and momentum against ``argmin_{Xw = y} D_psi(w, w0)`` solved by cvxpy
(:func:`geomopt.implicit.geometry.min_bregman`, checked against its optimality condition); natural gradient descent
in the same potential's Hessian metric (:class:`geomopt.optim.NaturalGradient`) at step sizes ``ng_lrs`` on the same
scale, whose limit should approach the same solution only as the step goes to 0 (first order in the step); steepest
descent (:class:`geomopt.optim.SteepestDescent`, l1 and l-infinity, unnormalized) from the same start at several
step sizes. Step sizes are multiples of ``1/||X||_2^2`` (times ``p - 1`` for ``1/2 ||w||_p^2``, strongly convex for
p in (1, 2]) for mirror descent and of ``1/beta`` for steepest descent, with ``beta`` the smoothness of the loss in
that norm (``max_i (X^T X)_ii`` for l1, its bound ``sum_ij |X^T X|_ij`` for l-infinity). Runs stop at relative
residual ``reg_tol``.

Separable classification (its strictly monotone losses): a synthetic set with a planted l2 margin (``x ~ N(0, I)``
in R^{side x side}, kept when ``|<u, x>| >= synth_margin`` for a random unit ``u``, ``y = sign <u, x>``) and two
classes of the 8 x 8 digits (pixels in [0, 1], ``digits_n`` examples drawn per seed); the linear model ``<W, X_n>``
on the image as a matrix (spectral) or a vector (l1, l2, l-infinity). Steepest descent w.r.t. each norm on the
exponential and the logistic loss with steps ``eta / (B^2 L(w_t))`` from ``w = 0``
(:func:`geomopt.implicit.geometry.run_separable`); each norm's max-margin separator by cvxpy (LP, SOCP, SDP). Per
recorded step: every norm's relative margin gap ``1 - margin(w_t) / gamma`` and the angle to the run's own
max-margin direction. The claims use the gap, not the angle: the l1, l-infinity and spectral max-margin separators
need not be unique (the digits' always-zero pixels leave l-infinity free coordinates), so the angle need not vanish
while the margin converges.

AdaGrad (the same part): ``torch.optim.Adagrad`` (``adagrad_lr``) on the exponential loss from ``w = 0`` and from a
random start of l2 norm about ``adagrad_scale``; each run's limit direction is the max margin of its frozen
preconditioner (:func:`geomopt.implicit.geometry.preconditioned_max_margin` on ``sqrt(G_T)``). The claim compares
the angle between the two starts' limits with the drift of each limit between ``T/2`` and ``T`` (how far the
preconditioner still moves).

Run-quality gates (a claim resting on a run that fails one is ``untestable here``, naming the run): a regression
run must end at relative residual ``reg_tol`` x 100 or below without diverging; a separable run must stay finite,
drop ``log L`` by at least ``SEPARATE`` below its value at ``w = 0`` and separate the data (positive margin); an
AdaGrad run must stay finite and its accumulator change by at most ``FREEZE`` (relative) over the second half.

Tiers: ``quick``: n = 10, d = 30 regression; 40 synthetic points in R^{6 x 6}; 80 digits; 10,000 separable and
5,000 AdaGrad steps; 3 seeds (minutes on one core). ``mid`` (:meth:`ImplicitGeometryExperiment.mid`): larger
problems and 30,000 steps.
``full``: 5 seeds, 10^5 steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from geomopt.experiments.records import Records
from geomopt.experiments.skeleton import Context, Experiment, Protocol, Ran, Report
from geomopt.implicit.geometry import (LOSSES, angle_degrees, bregman_kkt, max_margin, min_bregman, run_adagrad,
                                       run_regression, run_separable, preconditioned_max_margin)
from geomopt.optim import MirrorDescent, NaturalGradient, SteepestDescent
from geomopt.report import plot_curves
from geomopt.sweep import (FAILS, HOLDS, INCONCLUSIVE, Claim, Outcome, all_of, equivalent, gated, greater, less,
                           seed_stats, untestable)

NAME = "implicit-geometry"
PAPER = "Gunasekar, Lee, Soudry & Srebro 2018"
CITATIONS = ('Gunasekar, Lee, Soudry & Srebro, "Characterizing Implicit Bias in Terms of Optimization Geometry", '
             'ICML 2018',)
TITLE = "The optimization geometry decides the implicit bias (Gunasekar, Lee, Soudry & Srebro 2018)"
NORMS = ("l1", "l2", "linf", "spectral")
DATASETS = ("synthetic", "digits")
BREGMAN_MARGIN = 1e-3  # mirror descent's limit within this relative distance of the min-Bregman solution
SPREAD = 1e-3  # limits at different step sizes farther apart than this (relative) count as different
GAP = 0.05  # the relative margin gap at the end must be below this (within 5% of the max margin)
FALL = 0.5  # and at most this x its value at a tenth of the steps (falling: a 1/t rate gives 0.1)
FLOOR = 1e-9  # gaps and spreads are compared in decades (log10), floored here (about the solvers' accuracy)
SEPARATE = math.log(100.0)  # a separable run must drop log L by at least this (the loss by 100x)
FREEZE = 0.01  # an AdaGrad run's accumulator may change by at most this (relative) over its second half
ADAGRAD_EPS = 1e-10
NG_ABOVE = 1.0  # natural gradient's limit at its largest step: this many decades farther than mirror descent's
NG_ORDER = 0.5  # and its distance falls this many decades per decade of step, at least (first order: 1)


@dataclass
class ImplicitGeometryExperiment(Protocol, name=NAME):
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    reg_n: int = 20
    reg_d: int = 60
    potentials: tuple[str, ...] = ("lp:1.25", "lp:1.5", "entropy")  # "lp:P" is 1/2 ||w||_P^2
    md_lrs: tuple[float, ...] = (0.1, 0.3, 0.6)  # x (P - 1) / ||X||_2^2 for lp:P, x 1 / ||X||_2^2 for the entropy
    momenta: tuple[float, ...] = (0.0, 0.5)
    sd_norms: tuple[str, ...] = ("l1", "linf")
    sd_lrs: tuple[float, ...] = (0.1, 0.3, 1.0)  # x 1 / beta (the loss's smoothness in the norm)
    ng_lrs: tuple[float, ...] = (0.8, 0.25, 0.08)  # natural gradient, scaled as md_lrs; the largest first
    reg_steps: int = 100000
    reg_tol: float = 1e-10
    synth_n: int = 60
    synth_side: int = 6
    synth_margin: float = 0.3
    digits_classes: tuple[int, ...] = (3, 8)
    digits_n: int = 200
    losses: tuple[str, ...] = LOSSES
    eta: float = 1.0
    steps: int = 100000
    points: int = 40
    adagrad_lr: float = 0.1
    adagrad_steps: int = 100000
    adagrad_scale: float = 3.0

    @classmethod
    def quick(cls) -> ImplicitGeometryExperiment:
        """Small problems, 10,000 separable steps, 3 seeds. Measured here with 5,000 steps: every gap but the
        slowest (l1 steepest descent, greedy coordinate descent, on the synthetic set: 0.047 on average, one seed
        of 3 below 0.05) was below 0.05 and falling; the whole tier took 85 s of CPU. With 10,000 steps: 132 s
        of CPU, 4 claims hold and max-margin is inconclusive (that gap is below 0.05 in 3/3 seeds, its interval
        not yet); with the logistic loss and natural gradient added, 253 s of CPU."""
        return cls(seeds=(0, 1, 2), reg_n=10, reg_d=30, reg_steps=20000, synth_n=40, digits_n=80, steps=10000,
                   points=25, adagrad_steps=5000)

    @classmethod
    def mid(cls) -> ImplicitGeometryExperiment:
        """Regression n = 20, d = 60; 60 synthetic points; 200 digits; 30,000 steps (separable and AdaGrad); 3 seeds.

        Why it tests the headline: with steps ``eta / (B^2 L)`` the margin gap falls about as 1/t (measured in
        the quick tier: 0.045 -> 0.014 from step 956 to 3,000 for l2 on the synthetic set), so 30,000 steps
        should put every norm's gap an order of magnitude below ``GAP`` and the curves span 4.5 decades of steps;
        the regression and AdaGrad parts converge far earlier. Measured here with both losses and natural
        gradient: 16.8 min of CPU (17 min wall at load 2-3); every separable gap ended an order of magnitude or
        more below ``GAP`` and falling."""
        return cls(seeds=(0, 1, 2), steps=30000, adagrad_steps=30000, reg_steps=50000)

    def check(self) -> None:
        for spec in self.potentials:
            _potential(spec)
        if list(self.ng_lrs) != sorted(self.ng_lrs, reverse=True) or len(self.ng_lrs) < 2:
            raise ValueError(f"{NAME}: ng_lrs must be 2 or more step sizes, largest first, got {list(self.ng_lrs)}")
        bad_losses = [loss for loss in self.losses if loss not in LOSSES]
        if bad_losses or not self.losses:
            raise ValueError(f"{NAME}: losses must be among {LOSSES}, got {list(self.losses)}")
        bad = [n for n in self.sd_norms if n not in ("l1", "l2", "linf")]
        if bad:
            raise ValueError(f"{NAME}: sd_norms must be among l1, l2, linf (vector regression), got {bad}")
        if len(self.digits_classes) != 2 or len(set(self.digits_classes)) != 2:
            raise ValueError(f"{NAME}: digits_classes must be two different digits, got {list(self.digits_classes)}")


CONFIG = ImplicitGeometryExperiment  # the config class (geomopt results check rebuilds it from experiment.json)


def _potential(spec: str) -> tuple[str, float]:
    """``"lp:P"`` -> ``("lp", P)``; ``"entropy"`` -> ``("entropy", 2.0)`` (p unused)."""
    if spec == "entropy":
        return "entropy", 2.0
    if spec.startswith("lp:"):
        try:
            p = float(spec[3:])
        except ValueError:
            p = math.nan
        if p > 1 and math.isfinite(p):
            return "lp", p
    raise ValueError(f"{NAME}: potentials must be 'lp:P' with P > 1 or 'entropy', got {spec!r}")


def _modulus(potential: str, p: float) -> float:
    """The step scale of a potential: ``p - 1`` for ``1/2 ||w||_p^2`` (its strong-convexity modulus in the l_p norm
    for p in (1, 2], where the loss's smoothness is at most ``||X||_2^2``), 1 otherwise. For p > 2 the potential is
    not strongly convex (the paper's assumption): measured here, 1/2 ||w||_3^2 at steps 0.1-0.6 / ||X||_2^2 did not
    reach the residual gate in 50,000 steps at n = 20, d = 60 in 9 of 18 runs."""
    return p - 1 if potential == "lp" and p <= 2 else 1.0


# ----------------------------------------------------------------------------- data

def regression_problem(exp: ImplicitGeometryExperiment, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(X, y, w0)`` of one seed (module docstring), float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(exp.reg_n, exp.reg_d, generator=g, dtype=torch.float64) / math.sqrt(exp.reg_d)
    w_star = 0.5 + torch.rand(exp.reg_d, generator=g, dtype=torch.float64)
    return x, x @ w_star, 0.5 + torch.rand(exp.reg_d, generator=g, dtype=torch.float64)


def synthetic_separable(n: int, side: int, margin: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` matrices ``side x side`` with l2 margin at least ``margin`` along a random unit direction ``u``
    (rejection sampling of ``x ~ N(0, I)``), labels ``sign <u, x>``; float64."""
    g = torch.Generator().manual_seed(seed)
    d = side * side
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u = u / torch.linalg.vector_norm(u)
    kept: list[torch.Tensor] = []
    while len(kept) < n:
        x = torch.randn(4 * n, d, generator=g, dtype=torch.float64)
        kept += list(x[(x @ u).abs() >= margin])
    x = torch.stack(kept[:n])
    return x.reshape(n, side, side), torch.sign(x @ u)


def digits_pair(classes: tuple[int, ...], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 8 x 8 digits of the two ``classes`` (the first is +1), drawn by ``seed`` from the training split."""
    from geomopt.data.digits import load_digits
    x, labels = load_digits(seed=0).train.tensors
    keep = (labels == classes[0]) | (labels == classes[1])
    x, labels = x[keep][:, 0].double(), labels[keep]
    if n > len(labels):
        raise ValueError(f"{NAME}: digits_n = {n} but the training split has {len(labels)} digits of {list(classes)}")
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], torch.where(labels[idx] == classes[0], 1.0, -1.0).double()


def separable_data(exp: ImplicitGeometryExperiment, dataset: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if dataset == "synthetic":
        return synthetic_separable(exp.synth_n, exp.synth_side, exp.synth_margin, seed)
    return digits_pair(exp.digits_classes, exp.digits_n, seed)


# ----------------------------------------------------------------------------- runs

def _relative(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(scale).clamp(min=1e-300))


def _regression(exp: ImplicitGeometryExperiment, seed: int, rows: list[dict[str, Any]]) -> None:
    """Mirror descent at every potential, lr and momentum, natural gradient at every potential and lr; steepest
    descent at every norm and lr; one seed."""
    x, y, w0 = regression_problem(exp, seed)
    smooth = float(torch.linalg.matrix_norm(x, ord=2)) ** 2
    for spec in exp.potentials:
        potential, p = _potential(spec)
        t0 = time.perf_counter()
        wb = min_bregman(x, y, w0, potential, p)
        rows.append({"run": f"bregman/{spec}/seed{seed}", "part": "bregman", "potential": spec, "seed": seed,
                     "kkt": bregman_kkt(x, wb, w0, potential, p), "w": wb.tolist(),
                     "seconds": time.perf_counter() - t0})
        for lr in exp.md_lrs:
            for m in exp.momenta:
                def make(ps, lr=lr * _modulus(potential, p) / smooth, m=m):
                    return MirrorDescent(ps, lr=lr, potential=potential, p=p, momentum=m)
                r = run_regression(x, y, w0, make, steps=exp.reg_steps, tol=exp.reg_tol)
                rows.append({"run": f"md/{spec}/lr{lr:g}/m{m:g}/seed{seed}", "part": "md", "potential": spec,
                             "lr": lr, "momentum": m, "seed": seed, "residual": r["residual"], "steps": r["steps"],
                             "diverged": r["diverged"], "dist_bregman": _relative(r["w"], wb, wb - w0),
                             "kkt": bregman_kkt(x, r["w"], w0, potential, p), "w": r["w"].tolist()})
        for lr in exp.ng_lrs:
            def natural(ps, lr=lr * _modulus(potential, p) / smooth):
                return NaturalGradient(ps, lr=lr, potential=potential, p=p)
            r = run_regression(x, y, w0, natural, steps=exp.reg_steps, tol=exp.reg_tol)
            rows.append({"run": f"ng/{spec}/lr{lr:g}/seed{seed}", "part": "ng", "potential": spec, "lr": lr,
                         "seed": seed, "residual": r["residual"], "steps": r["steps"], "diverged": r["diverged"],
                         "dist_bregman": _relative(r["w"], wb, wb - w0), "w": r["w"].tolist()})
    gram = x.T @ x
    for norm in exp.sd_norms:
        beta = {"l1": float(gram.diagonal().max()), "l2": smooth, "linf": float(gram.abs().sum())}[norm]
        for lr in exp.sd_lrs:
            r = run_regression(x, y, w0, lambda ps, lr=lr: SteepestDescent(ps, lr=lr / beta, norm=norm),
                               steps=exp.reg_steps, tol=exp.reg_tol)
            rows.append({"run": f"sd/{norm}/lr{lr:g}/seed{seed}", "part": "sd", "norm": norm, "lr": lr, "seed": seed,
                         "residual": r["residual"], "steps": r["steps"], "diverged": r["diverged"],
                         "w": r["w"].tolist()})


def _log_loss0(loss: str, n: int) -> float:
    """``log L(0)``: ``log n`` for the exponential loss, ``log(n log 2)`` for the logistic."""
    return math.log(n) if loss == "exponential" else math.log(n * math.log(2.0))


def _separable(exp: ImplicitGeometryExperiment, dataset: str, seed: int, rows: list, curves: dict) -> None:
    """Every norm's max margin, and steepest descent runs of every norm and loss, on one data set and seed."""
    x, y = separable_data(exp, dataset, seed)
    targets = {}
    for norm in NORMS:
        mm = max_margin(x, y, norm)
        targets[norm] = mm
        rows.append({"run": f"maxmargin/{dataset}/{norm}/seed{seed}", "part": "max-margin", "dataset": dataset,
                     "norm": norm, "seed": seed, "margin": mm.margin, "certified_gap": mm.certified_gap,
                     "solver": mm.solver, "seconds": mm.seconds})
    gammas = {n: t.margin for n, t in targets.items()}
    for loss in exp.losses:
        for norm in NORMS:
            run = f"sep/{loss}/{dataset}/{norm}/seed{seed}"
            t0 = time.perf_counter()
            r = run_separable(x, y, norm, eta=exp.eta, steps=exp.steps, targets=gammas, reference=targets[norm].w,
                              points=exp.points, loss=loss)
            last = r["curve"][-1] if r["curve"] else {}
            rows.append({"run": run, "part": "separable", "loss": loss, "dataset": dataset, "norm": norm, "seed": seed,
                         "steps": exp.steps, "diverged": r["diverged"], "log_loss0": _log_loss0(loss, len(y)),
                         **{k: last.get(k, math.nan) for k in ("log_loss", "angle", *(f"gap_{n}" for n in NORMS))},
                         "seconds": time.perf_counter() - t0})
            curves[run] = r["curve"]


def _adagrad(exp: ImplicitGeometryExperiment, dataset: str, seed: int, rows: list) -> None:
    """AdaGrad from w = 0 and from a random start; each run's frozen-preconditioner limit at T/2 and T."""
    x, y = separable_data(exp, dataset, seed)
    d = x[0].numel()
    g = torch.Generator().manual_seed(10_000 + seed)
    starts = {"zero": torch.zeros(d, dtype=torch.float64),
              "random": exp.adagrad_scale * torch.randn(d, generator=g, dtype=torch.float64) / math.sqrt(d)}
    flat = x.reshape(len(y), -1)
    for name, w0 in starts.items():
        r = run_adagrad(flat, y, w0, lr=exp.adagrad_lr, steps=exp.adagrad_steps, eps=ADAGRAD_EPS)
        limit = preconditioned_max_margin(flat, y, r["accumulator"].sqrt() + ADAGRAD_EPS)
        half = preconditioned_max_margin(flat, y, r["accumulator_half"].sqrt() + ADAGRAD_EPS)
        change = _relative(r["accumulator"], r["accumulator_half"], r["accumulator"])
        rows.append({"run": f"adagrad/{dataset}/{name}/seed{seed}", "part": "adagrad", "dataset": dataset,
                     "start": name, "seed": seed, "loss": r["loss"], "loss0": r["loss0"], "diverged": r["diverged"],
                     "accumulator_change": change, "drift": angle_degrees(limit, half),
                     "angle_to_limit": angle_degrees(r["w"], limit), "limit": limit.tolist(), "w": r["w"].tolist()})


# ----------------------------------------------------------------------------- gates

METHODS = {"md": "mirror descent", "ng": "natural gradient", "sd": "steepest descent"}


def regression_failures(rows: list[dict[str, Any]], tol: float) -> list[str]:
    """Diverged regression runs, and runs that ended above relative residual ``100 * tol``."""
    out = []
    for r in rows:
        name = f"{METHODS[r['part']]} {r.get('potential') or r.get('norm')} lr {r['lr']:g}" + \
            (f" momentum {r['momentum']:g}" if r["part"] == "md" else "") + f", seed {r['seed']}"
        if r["diverged"] or not math.isfinite(r["residual"]):
            out.append(f"{name}: diverged")
        elif r["residual"] > 100 * tol:
            out.append(f"{name}: not converged (relative residual {r['residual']:.2g} after {r['steps']} steps, "
                       f"above {100 * tol:g})")
    return out


def separable_failures(rows: list[dict[str, Any]]) -> list[str]:
    """Separable runs that diverged, did not drop log L by ``SEPARATE``, or do not separate the data."""
    out = []
    for r in rows:
        name = f"{r['dataset']} {r['norm']} steepest descent on the {r['loss']} loss, seed {r['seed']}"
        if r["diverged"] or not math.isfinite(r["log_loss"]):
            out.append(f"{name}: diverged")
        elif r["log_loss"] > r["log_loss0"] - SEPARATE:
            out.append(f"{name}: not converged (log L {r['log_loss']:.3g}, less than {SEPARATE:.3g} below its start "
                       f"{r['log_loss0']:.3g})")
        elif r[f"gap_{r['norm']}"] >= 1:
            out.append(f"{name}: does not separate the data (margin gap {r[f'gap_' + r['norm']]:.3g} >= 1)")
    return out


def adagrad_failures(rows: list[dict[str, Any]]) -> list[str]:
    """AdaGrad runs that diverged or whose accumulator still moves by more than ``FREEZE`` over the second half."""
    out = []
    for r in rows:
        name = f"{r['dataset']} AdaGrad from the {r['start']} start, seed {r['seed']}"
        if r["diverged"] or not math.isfinite(r["loss"]):
            out.append(f"{name}: diverged")
        elif r["accumulator_change"] > FREEZE:
            out.append(f"{name}: preconditioner not frozen (accumulator changed {r['accumulator_change']:.2g} over "
                       f"the second half, above {FREEZE:g})")
    return out


def _not_compared(failures: list[str]) -> Outcome:
    return gated(untestable("gate", "not compared: runs failed the gate"), failures)


# ----------------------------------------------------------------------------- claims

def _by_seed(records: Records, seeds: tuple[int, ...], **where: Any) -> list[list[dict[str, Any]]] | None:
    """The rows matching ``where`` grouped per seed in the order of ``seeds`` (None when a seed has none)."""
    out = [records.where(**where, seed=s) for s in seeds]
    return out if all(out) else None


def _not_run(what: str) -> Outcome:
    return untestable(f"not run: {what} is missing for some seed")


def _decades(values: list[float]) -> list[float]:
    """``log10`` of gaps and spreads (scale quantities, compared in decades), floored at ``FLOOR``: a gap at or
    below 0 means the max margin is reached within the solver's accuracy."""
    return [math.log10(max(v, FLOOR)) for v in values]


def _spread(rows: list[dict[str, Any]], w0: torch.Tensor) -> float:
    """The largest distance between two runs' limits, relative to the mean distance travelled from ``w0``."""
    ws = [torch.tensor(r["w"], dtype=torch.float64) for r in rows]
    scale = sum(float(torch.linalg.vector_norm(w - w0)) for w in ws) / len(ws)
    return max(float(torch.linalg.vector_norm(a - b)) for a in ws for b in ws) / max(scale, 1e-300)


def _test_bregman(records: Records) -> Outcome:
    exp, seeds = records.exp, tuple(records.exp.seeds)
    parts = {}
    for spec in exp.potentials:
        groups = _by_seed(records, seeds, part="md", potential=spec)
        if groups is None:
            parts[spec] = _not_run(f"mirror descent with {spec}")
            continue
        failures = regression_failures([r for g in groups for r in g], exp.reg_tol)
        parts[spec] = _not_compared(failures) if failures else equivalent(
            [max(r["dist_bregman"] for r in g) for g in groups], 0.0, margin=BREGMAN_MARGIN,
            label="largest ||w - w_B|| / ||w_B - w0|| over lrs and momenta")
    return all_of(parts)


def _test_step_size(records: Records) -> Outcome:
    exp, seeds = records.exp, tuple(records.exp.seeds)
    starts = {s: regression_problem(exp, s)[2] for s in seeds}
    parts = {}
    for kind, key, values in (("sd", "norm", exp.sd_norms), ("md", "potential", exp.potentials)):
        for v in values:
            name = f"{'steepest' if kind == 'sd' else 'mirror'} {v}"
            groups = _by_seed(records, seeds, part=kind, **{key: v})
            if groups is None:
                parts[name] = _not_run(name)
                continue
            failures = regression_failures([r for g in groups for r in g], exp.reg_tol)
            spreads = _decades([_spread(g, starts[s]) for g, s in zip(groups, seeds)])
            if failures:
                parts[name] = _not_compared(failures)
            else:
                test = greater if kind == "sd" else less  # steepest: the limit moves; mirror: it does not
                parts[name] = test(spreads, math.log10(SPREAD), label=f"log10 limit spread over lrs - log10 {SPREAD:g}",
                                   digits=2)
    return all_of(parts)


def _distance_at(rows: list[dict[str, Any]], lr: float) -> float:
    return next(r["dist_bregman"] for r in rows if math.isclose(r["lr"], lr, rel_tol=1e-12))


def _test_natural_gradient(records: Records) -> Outcome:
    """Per potential: natural gradient's limit at the largest step is ``NG_ABOVE`` decades farther from the Bregman
    projection than mirror descent's farthest (same seed), and the distance falls by at least ``NG_ORDER`` decades
    per decade of step from the largest to the smallest step."""
    exp, seeds = records.exp, tuple(records.exp.seeds)
    step_decades = math.log10(exp.ng_lrs[-1] / exp.ng_lrs[0])  # negative: the steps fall
    parts = {}
    for spec in exp.potentials:
        ng = _by_seed(records, seeds, part="ng", potential=spec)
        md = _by_seed(records, seeds, part="md", potential=spec)
        if ng is None or md is None:
            parts[spec] = _not_run(f"natural gradient and mirror descent with {spec}")
            continue
        failures = regression_failures([r for g in ng + md for r in g], exp.reg_tol)
        if failures:
            parts[spec] = _not_compared(failures)
            continue
        largest = _decades([_distance_at(g, exp.ng_lrs[0]) for g in ng])
        smallest = _decades([_distance_at(g, exp.ng_lrs[-1]) for g in ng])
        mirror = _decades([max(r["dist_bregman"] for r in g) for g in md])
        parts[f"{spec} finite step"] = greater(
            largest, [m + NG_ABOVE for m in mirror], digits=2, label=f"log10 natural gradient's distance at lr "
            f"{exp.ng_lrs[0]:g} - log10 mirror descent's largest - {NG_ABOVE:g}")
        parts[f"{spec} small step"] = less(
            [a - b for a, b in zip(smallest, largest)], NG_ORDER * step_decades, digits=2,
            label=f"decades the distance falls from lr {exp.ng_lrs[0]:g} to {exp.ng_lrs[-1]:g} - {NG_ORDER:g} x the "
            "step's")
    return all_of(parts)


def _early(records: Records, run: str, fraction: float = 0.1) -> dict[str, Any]:
    """The recorded step of ``run`` nearest (on a log scale) to ``fraction`` of its steps."""
    recs = records.curves.get(run) or []
    if not recs:
        raise KeyError(f"no curve stored for run {run!r}")
    target = math.log(max(fraction * recs[-1]["step"], 1))
    return min(recs, key=lambda c: abs(math.log(c["step"]) - target))


def _separable_groups(records: Records, dataset: str, norm: str, loss: str) -> tuple[list[dict], list[str]] | None:
    groups = _by_seed(records, tuple(records.exp.seeds), part="separable", dataset=dataset, norm=norm, loss=loss)
    if groups is None:
        return None
    rows = [g[0] for g in groups]
    return rows, separable_failures(rows)


def _gap_parts(final: list[float], early: list[float]) -> tuple[Outcome, Outcome]:
    """The two parts of one run's max-margin test: the final gap below ``GAP``, and the gap falling (at most
    ``FALL`` x its value at a tenth of the steps). A gap above ``GAP`` in every seed fails only where it has
    stopped falling (it converges elsewhere); while it still falls, more steps would decide."""
    final, early = _decades(final), _decades(early)
    gap = less(final, math.log10(GAP), label=f"log10 final margin gap - log10 {GAP:g}", digits=2)
    falling = less(final, [e + math.log10(FALL) for e in early],
                   label=f"log10 final gap - log10 ({FALL:g} x the gap at a tenth of the steps)", digits=2)
    if gap.verdict == FAILS and falling.verdict == HOLDS:
        gap = Outcome(INCONCLUSIVE, gap.ours, gap.numbers, f"the gap is above {GAP:g} but still falling in every "
                      "seed: more steps would decide")
    return gap, falling


def _test_max_margin(records: Records) -> Outcome:
    parts = {}
    for loss, dataset, norm in ((lo, d, n) for lo in records.exp.losses for d in DATASETS for n in NORMS):
        found = _separable_groups(records, dataset, norm, loss)
        key = f"{loss} {dataset} {norm}"
        if found is None:
            parts[key] = _not_run(f"{key} steepest descent")
            continue
        rows, failures = found
        if failures:
            parts[key] = _not_compared(failures)
            continue
        parts[f"{key} gap"], parts[f"{key} falling"] = _gap_parts(
            [r[f"gap_{norm}"] for r in rows], [_early(records, r["run"])[f"gap_{norm}"] for r in rows])
    return all_of(parts)


def _test_geometry_decides(records: Records) -> Outcome:
    parts = {}
    for loss, dataset in ((lo, d) for lo in records.exp.losses for d in DATASETS):
        key = f"{loss} {dataset}"
        found = {n: _separable_groups(records, dataset, n, loss) for n in NORMS}
        if any(f is None for f in found.values()):
            parts[key] = _not_run(f"{key} steepest descent")
            continue
        failures = [f for rows, fs in found.values() for f in fs]
        if failures:
            parts[key] = _not_compared(failures)
            continue
        for norm in NORMS:
            own = _decades([r[f"gap_{norm}"] for r in found[norm][0]])
            others = _decades([min(found[m][0][i][f"gap_{norm}"] for m in NORMS if m != norm) for i in range(len(own))])
            parts[f"{key} {norm}"] = less(own, others, label=f"log10 {norm} gap of the {norm} run - log10 least of "
                                          "the other runs", digits=2)
    return all_of(parts)


def _test_adagrad(records: Records) -> Outcome:
    seeds = tuple(records.exp.seeds)
    parts = {}
    for dataset in DATASETS:
        groups = _by_seed(records, seeds, part="adagrad", dataset=dataset)
        if groups is None or any({r["start"] for r in g} != {"zero", "random"} for g in groups):
            parts[dataset] = _not_run(f"{dataset} AdaGrad from both starts")
            continue
        failures = adagrad_failures([r for g in groups for r in g])
        if failures:
            parts[dataset] = _not_compared(failures)
            continue
        between = [angle_degrees(torch.tensor(g[0]["limit"]), torch.tensor(g[1]["limit"])) for g in groups]
        drift = [max(r["drift"] for r in g) for g in groups]
        parts[dataset] = greater(between, drift, label="angle between the starts' limits - their drift (degrees)",
                                 digits=2)
    return all_of(parts)


def claims(exp: Any) -> list[Claim]:
    """The paper's claims (each decides ``untestable here`` itself where the runs lack what it needs)."""
    return list(CLAIMS)


CLAIMS = [
    Claim("mirror-bregman", "Mirror descent on underdetermined linear regression converges to the zero-loss solution "
          "closest to the start in its potential's Bregman divergence, whatever the step size and momentum: every "
          f"run's limit is within {BREGMAN_MARGIN:g} (relative) of argmin D_psi(w, w0) s.t. Xw = y solved by cvxpy.",
          PAPER, "regression part (mirror descent); Fig. 1a", "a theorem: the limit is the Bregman projection of w0 "
          "for any step sizes that converge, with momentum taken in the mirror space (Fig. 1a, Example 2: momentum in "
          "the primal space instead moves the limit)",
          _test_bregman),
    Claim("step-size-dependence", "Steepest descent w.r.t. a non-Euclidean norm on squared loss can reach step-size-"
          "dependent global minima (l1 and l-infinity limits from one start at different step sizes differ by more "
          f"than {SPREAD:g} relative), while mirror descent's limit does not (spread below {SPREAD:g}).", PAPER,
          "regression part (steepest descent); Fig. 1c",
          "a constructed example: steepest descent w.r.t. an l_p norm reaches different global minima at different "
          "step sizes, even where 1/2 ||.||_p^2 is smooth and strongly convex (plots, no number)", _test_step_size),
    Claim("natural-gradient", "Natural gradient descent in a potential's Hessian metric, "
          "w <- w - lr [grad^2 psi(w)]^-1 g, has mirror descent's continuous-time flow but reaches its limit only "
          f"as the step goes to 0: at the largest step its limit is over 10^{NG_ABOVE:g} x farther from "
          f"argmin D_psi(w, w0) s.t. Xw = y than any mirror-descent run's, and the distance falls at least "
          f"{NG_ORDER:g} decade per decade of step.",
          PAPER, "regression part (natural gradient descent, Example 3); Fig. 1b", "natural gradient descent "
          "reduces to mirror descent only in the infinitesimal-step limit; at different step sizes it converges to "
          "different global minima (plots, no number)",
          _test_natural_gradient),
    Claim("max-margin", "On separable data with the exponential (and the logistic) loss, steepest descent w.r.t. the "
          "l1, l2, l-infinity and (matrix parameter) spectral norm converges in direction to that norm's max-margin "
          f"separator: the relative margin gap ends below {GAP:g} and is falling (synthetic data and two digit "
          "classes).", PAPER, "separable-classification part (steepest descent)", "a theorem for the exponential "
          "loss: the normalized margin converges to the norm's max margin (no number); the logistic loss, also "
          "exponentially tailed, is run here too", _test_max_margin),
    Claim("geometry-decides", "The geometry decides which max margin: in each norm, the run of that norm's steepest "
          "descent has a smaller margin gap than every other geometry's run.", PAPER, "separable-classification part",
          "implied by the theorem (each norm reaches its own max margin)", _test_geometry_decides),
    Claim("adagrad-init", "AdaGrad's limit on separable data can depend on the initialization: from w = 0 and from a "
          "random start the frozen preconditioners' max-margin directions differ by more than their own drift "
          "over the second half of the run.", PAPER, "separable-classification part (AdaGrad)",
          "the limit direction of AdaGrad depends on the initialization and step size (a constructed example)",
          _test_adagrad),
]


# ----------------------------------------------------------------------------- reproduce

def _run(ctx: Context) -> Ran:
    """Regression, separable and AdaGrad runs of every seed (small float64 problems on one process: ``jobs`` is not
    used; nothing is kept between runs, so ``overwrite`` has nothing to refuse)."""
    exp = ctx.exp
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    for seed in tqdm(exp.seeds, desc=f"{NAME}: seeds", dynamic_ncols=True):
        _regression(exp, seed, rows)
        for dataset in DATASETS:
            _separable(exp, dataset, seed, rows, curves)
            _adagrad(exp, dataset, seed, rows)
    return Ran(Records(exp, rows, curves), time.perf_counter() - t0)


def _report(ctx: Context, records: Records, ran: Ran) -> Report:
    tables = [_regression_table(records), _separable_table(records), _adagrad_table(records)]
    figures = [_gap_figure(records, ctx.root), _angle_figure(records, ctx.root),
               _natural_gradient_figure(records, ctx.root)]
    return Report(_paragraphs(ctx.exp, ctx.tier), tables, figures)


def _paragraphs(exp: ImplicitGeometryExperiment, tier: str) -> list[str]:
    return [
        f"Protocol ({tier} tier), seeds {list(exp.seeds)}. Regression: X {exp.reg_n} x {exp.reg_d} with N(0, 1/d) "
        f"entries, y = X w*, w* and the start w0 uniform in [0.5, 1.5]; mirror descent with potentials "
        f"{list(exp.potentials)} at lr {list(exp.md_lrs)} x (p - 1) / ||X||_2^2 ('lp:p', p <= 2; 1 / ||X||_2^2 for "
        f"the entropy) and momenta {list(exp.momenta)}; natural gradient in each potential's Hessian metric at lr "
        f"{list(exp.ng_lrs)} on the same scale; steepest "
        f"descent ({list(exp.sd_norms)}, unnormalized) at lr {list(exp.sd_lrs)} / beta (beta: the loss's smoothness "
        f"in the norm); each run until relative residual {exp.reg_tol:g} or {exp.reg_steps} steps; "
        "argmin D_psi(w, w0) s.t. Xw = y by cvxpy (Clarabel at tolerance 1e-12, its point checked against the "
        "optimality condition).",
        f"Separable: {exp.synth_n} synthetic {exp.synth_side} x {exp.synth_side} matrices with planted l2 margin "
        f"{exp.synth_margin:g}, and {exp.digits_n} digits of classes {list(exp.digits_classes)} (8 x 8); steepest "
        f"descent w.r.t. l1, l2, l-infinity (the image as a vector) and spectral (as a matrix) on the "
        f"{' and '.join(exp.losses)} loss from w = 0 with steps {exp.eta:g} / (B^2 L(w_t)), B = max_n ||x_n||_*, "
        f"for {exp.steps} steps; each "
        "norm's max margin by cvxpy (LP, SOCP, SDP). AdaGrad (lr "
        f"{exp.adagrad_lr:g}, {exp.adagrad_steps} steps) from w = 0 and from a random start of l2 norm about "
        f"{exp.adagrad_scale:g}; its limit: the max margin of the frozen preconditioner sqrt(G_T) (cvxpy QP).",
        f"Run-quality gates: a regression run must end at relative residual {100 * exp.reg_tol:g} or below; a "
        f"separable run must stay finite, drop log L by at least {SEPARATE:.3g} and separate the data; an AdaGrad "
        f"run's accumulator may change by at most {FREEZE:g} (relative) over its second half. A claim resting on "
        "a run that fails a gate is 'untestable here', naming the run. The claims use margin gaps, not angles: the "
        "l1, l-infinity and spectral max-margin separators need not be unique.",
    ]


# ----------------------------------------------------------------------------- tables and figures

def _stat(values: list[float]) -> str:
    """``mean [95% interval]`` over the finite values, naming how many were not finite (a diverged run)."""
    finite = [v for v in values if math.isfinite(v)]
    text = seed_stats(finite).fmt() if finite else "n/a"
    return text + (f" ({len(values) - len(finite)} non-finite)" if len(finite) < len(values) else "")


def _regression_table(records: Records) -> dict[str, Any]:
    exp = records.exp
    starts = {s: regression_problem(exp, s)[2] for s in exp.seeds}
    columns = ["method", "runs", "||w - w_B|| / ||w_B - w0|| (largest)", "limit spread over lrs",
               "steps (mean)", "runs converged"]
    table = []
    for kind, key, values in (("md", "potential", exp.potentials), ("ng", "potential", exp.potentials),
                              ("sd", "norm", exp.sd_norms)):
        for v in values:
            rows = records.where(part=kind, **{key: v})
            groups = [records.where(part=kind, seed=s, **{key: v}) for s in exp.seeds]
            bad = regression_failures(rows, exp.reg_tol)
            dist = _stat([max(r["dist_bregman"] for r in g) for g in groups if g]) if kind != "sd" else ""
            spread = _stat([_spread(g, starts[s]) for g, s in zip(groups, exp.seeds) if g])
            steps = sum(r["steps"] for r in rows) / max(len(rows), 1)
            table.append([f"{METHODS[kind]} {v}", len(rows), dist, spread, f"{steps:.0f}",
                          f"{len(rows) - len(bad)}/{len(rows)}"])
    return {"caption": "Regression: mean [95% interval] over seeds", "columns": columns, "rows": table}


def _separable_table(records: Records) -> dict[str, Any]:
    columns = ["loss", "data", "norm", "max margin", "final gap (own norm)", "gap at a tenth of the steps",
               "least gap of the other runs (this norm)", "angle to the max-margin direction (deg)"]
    table = []
    for loss, dataset, norm in ((lo, d, n) for lo in records.exp.losses for d in DATASETS for n in NORMS):
        rows = records.where(part="separable", dataset=dataset, norm=norm, loss=loss)
        others = [min(records.where(part="separable", dataset=dataset, norm=m, seed=r["seed"], loss=loss)[0]
                      [f"gap_{norm}"] for m in NORMS if m != norm) for r in rows]
        margins = [r["margin"] for r in records.where(part="max-margin", dataset=dataset, norm=norm)]
        early = [_early(records, r["run"])[f"gap_{norm}"] for r in rows if records.curves.get(r["run"])]
        table.append([loss, dataset, norm, _stat(margins), _stat([r[f"gap_{norm}"] for r in rows]), _stat(early),
                      _stat(others), _stat([r["angle"] for r in rows])])
    return {"caption": "Separable data: relative margin gaps 1 - margin / max margin, mean [95% interval] over seeds",
            "columns": columns, "rows": table}


def _adagrad_table(records: Records) -> dict[str, Any]:
    columns = ["data", "seed", "angle between the starts' limits (deg)", "drift of the limits (deg)",
               "angle between the runs' iterates (deg)", "accumulator change (2nd half)", "final loss / start"]
    table = []
    for r in records.where(part="adagrad", start="zero"):
        other = records.where(part="adagrad", start="random", dataset=r["dataset"], seed=r["seed"])[0]
        table.append([r["dataset"], r["seed"],
                      angle_degrees(torch.tensor(r["limit"]), torch.tensor(other["limit"])),
                      max(r["drift"], other["drift"]), angle_degrees(torch.tensor(r["w"]), torch.tensor(other["w"])),
                      max(r["accumulator_change"], other["accumulator_change"]),
                      max(r["loss"] / r["loss0"], other["loss"] / other["loss0"])])
    return {"caption": "AdaGrad from w = 0 and from a random start, one row per seed", "columns": columns,
            "rows": table}


def _mean_curve(records: Records, rows: list[dict[str, Any]], field: str, log: bool) -> tuple[list, list]:
    """Mean over ``rows``' runs of ``field`` (of log10 of it with ``log``) against log10 step."""
    curves = [records.curves[r["run"]] for r in rows if records.curves.get(r["run"])]
    if not curves:
        return [], []
    n = min(len(c) for c in curves)
    xs = [math.log10(c["step"]) for c in curves[0][:n]]
    ys = [sum(math.log10(max(abs(c[i][field]), 1e-12)) if log else c[i][field] for c in curves) / len(curves)
          for i in range(n)]
    return xs, ys


def _gap_figure(records: Records, root: Path) -> dict[str, str]:
    panels: dict[str, dict] = {}
    for loss, dataset, norm in ((lo, d, n) for lo in records.exp.losses for d in DATASETS for n in NORMS):
        rows = {m: records.where(part="separable", dataset=dataset, norm=m, loss=loss) for m in NORMS}
        panels[f"{loss}, {dataset}: {norm} gap"] = {
            f"{m} steepest descent": _mean_curve(records, rows[m], f"gap_{norm}", True) for m in NORMS}
    plot_curves(panels, root / "margin_gaps.png", xlabel="log10 step", ylabel="log10 |margin gap|", ncols=4)
    return {"file": "margin_gaps.png", "caption": "Relative margin gap 1 - margin / max margin in each norm (one panel "
            "per loss, data set and norm), for every geometry's run; mean of log10 |gap| over seeds against log10 "
            "step. The run of the panel's own norm should fall fastest."}


def _natural_gradient_figure(records: Records, root: Path) -> dict[str, str]:
    exp = records.exp
    panels: dict[str, dict] = {}
    for spec in exp.potentials:
        lines = {}
        for kind, lrs in (("ng", exp.ng_lrs), ("md", exp.md_lrs)):
            rows = [r for r in records.where(part=kind, potential=spec) if not r.get("momentum")]
            points = [(lr, _decades([r["dist_bregman"] for r in rows if math.isclose(r["lr"], lr)]))
                      for lr in sorted(lrs)]
            points = [(math.log10(lr), sum(d) / len(d)) for lr, d in points if d]
            lines[METHODS[kind]] = ([x for x, _ in points], [y for _, y in points])
        panels[spec] = lines
    plot_curves(panels, root / "natural_gradient.png", xlabel="log10 step (x its scale)",
                ylabel="log10 ||w - w_B|| / ||w_B - w0||", ncols=len(panels))
    return {"file": "natural_gradient.png", "caption": "Distance of each limit from the Bregman projection of the "
            "start (cvxpy) against the step size, mean of log10 over seeds (floored at 1e-9, about the solver's "
            "accuracy): natural gradient approaches it as the step goes to 0 (slope 1: first order), mirror descent (no "
            "momentum) is on it at every step."}


def _angle_figure(records: Records, root: Path) -> dict[str, str]:
    panels = {f"{loss}, {dataset}": {norm: _mean_curve(records, records.where(part="separable", dataset=dataset,
                                                                             norm=norm, loss=loss), "angle", False)
                                     for norm in NORMS} for loss in records.exp.losses for dataset in DATASETS}
    plot_curves(panels, root / "angles.png", xlabel="log10 step", ylabel="angle to its max-margin direction (deg)",
                ncols=2)
    return {"file": "angles.png", "caption": "Angle between each geometry's iterate and its own norm's max-margin "
            "direction (from cvxpy), mean over seeds against log10 step; a non-unique max margin (l-infinity, "
            "spectral, l1) can leave it above 0."}


EXPERIMENT = Experiment(NAME, ImplicitGeometryExperiment, TITLE, CITATIONS, order=45, run=_run, claims=claims,
                        report=_report)
reproduce = EXPERIMENT.reproduce
