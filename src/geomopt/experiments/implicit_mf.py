"""Reproduction: implicit regularization in matrix factorization (Gunasekar et al., NeurIPS 2017), tested
where it can fail (Arora, Cohen, Hu & Luo 2019; Razin & Cohen 2020).

Protocol (Gunasekar et al. 2017, Sec. 2 and Fig. 1-2): a PSD rank-r target ``X*`` (n x n), measured by
symmetrized Gaussian sensing or a symmetric set of observed entries; gradient descent on ``X = U U^T`` with
U full n x n, ``U(0) = sqrt(alpha) * orthogonal`` (``X(0) = alpha I``), small adaptive steps, every alpha in
one batch. Gunasekar et al.'s conjecture: as alpha -> 0 the limit is the minimum nuclear norm solution
``X_nuc``.

Three problems: ``sensing`` and ``completion`` with enough measurements that ``X_nuc = X*`` (there the
distance to ``X_nuc`` falling cannot tell a nuclear-norm bias from plain recovery: the claim says so, it is
the paper's own setting), and ``undersampled`` sensing (m below the degrees of freedom) where
``X_nuc != X*``, the only place the conjecture is tested: its claims use the seeds where the solved
``X_nuc`` is not ``X*`` (a seed where it is lies outside the claim and is left out, and the claim records
the seeds it used). Seeds are problem seeds (each draws ``X*``, the measurements and ``U(0)``; with
``X(0) = alpha I`` the trajectory does not depend on the orthogonal factor).

Razin & Cohen's 2 x 2 completion (observed ``W12 = W21 = 1``, ``W22 = 0``, depth 3, Gaussian and
balanced init of std 8e-3, ``det W(0) > 0``): every solution has ``det W = -1``, so the loss can only
vanish with ``|W11| -> inf``; all norms grow while the rank stays at 1 (``sigma2 / sigma1 -> 0``), below
every finite-norm solution's 2. Its seeds are the experiment's seeds unless ``rc_seeds`` is set.

Run-quality gates (a claim resting on a run that fails one is ``untestable here``, naming the run): an
alpha-sweep run converged when it stayed finite and its training loss reached ``tol`` x its value at ``X = 0``
within ``steps``, or its relative residual is at most a tenth of its relative distance to ``X_nuc`` (the fit
resolves the distance it reports; completion at n = 50 is still at loss ~1e-7 after 10^5 steps); a 2 x 2 run
must stay finite, reach the first loss threshold (where the norms are first read) and end with ``det W > 0``:
a run that crossed ``det W = 0`` heads for a finite-norm solution (every exact fit has ``det W = -1``),
outside the trajectories the claim is about. From the balanced init the flow keeps ``det W > 0``; from the
authors' Gaussian init (unbalanced) exact gradient flow crosses it too: an ODE solve here (LSODA and DOP853,
the layer invariants ``W_{j+1}^T W_{j+1} - W_j W_j^T`` conserved to 1e-14) crossed in 6 of 6 seeds at t =
7.5-104, while the loss was still at its start, and at loss 1e-6 (paper units) stood at ``|W11|`` = 25-94 with
``det W`` = -0.87 to -0.97, near exact fits; from the balanced init ``det W`` stayed positive in 6 of 6 and
``|W11|`` went from 70.7 at loss 1e-4 to 707 at 1e-6, as ``loss^(-1/2)``
(``tests/implicit/test_norms_vs_rank_flow.py``). So the Gaussian init is a claim of its own
(``norms-vs-rank-gaussian``), judged only on runs that keep ``det W > 0``.

Tiers: ``quick``: n = 20 (undersampled m = 40), 5 alphas, at most 60,000 steps, the 2 x 2 example for 10^4
steps (minutes on 2 cores). ``mid``: the full protocol's sizes with 3 seeds (:meth:`ImplicitMFExperiment.mid`).
``full``: n = 50 (sensing m = 300, completion m = 800; undersampled n = 30, m = 60), 6 alphas down to 1e-6,
10^5 steps, 5 seeds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from geomopt.experiments.records import Records
from geomopt.experiments.skeleton import Context, Experiment, Protocol, Ran, Report
from geomopt.implicit.lab import NUC_EQUALS_TRUTH, MatrixLabConfig, NormsVsRankConfig, run_matrix_lab, run_norms_vs_rank
from geomopt.report import plot_curves
from geomopt.sweep import Claim, Outcome, all_of, gated, greater, less, seed_stats, untestable

NAME = "implicit-mf"
CITATIONS = (
    'Gunasekar, Woodworth, Bhojanapalli, Neyshabur & Srebro, "Implicit Regularization in Matrix Factorization", NeurIPS 2017',
    'Arora, Cohen, Hu & Luo, "Implicit Regularization in Deep Matrix Factorization", NeurIPS 2019',
    'Razin & Cohen, "Implicit Regularization in Deep Learning May Not Be Explainable by Norms", NeurIPS 2020',
)  # the papers, by title, for the report
TITLE = "Implicit regularization in matrix factorization (Gunasekar et al. 2017; Razin & Cohen 2020)"
PROBLEMS = ("sensing", "completion", "undersampled")
RANK_ONE = 1e-3  # sigma2/sigma1 below this counts as rank 1 (the finite solutions have rank 2, e.g. [[0,1],[1,0]])
RESOLUTION = 0.1  # an unconverged run's relative residual must be at most this x its distance to X_nuc
FLOW_DET = 0.0  # a 2 x 2 run starts at det W > 0; det W below this at the end means it crossed det W = 0


@dataclass
class ImplicitMFExperiment(Protocol, name=NAME):
    """Plain-data configuration; every field can be set with ``--set key=value``."""

    n: int = 50
    rank: int = 2
    m_sensing: int = 300
    m_completion: int = 800
    under_n: int = 30
    under_m: int = 60
    alphas: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 100000
    rel_step: float = 0.01
    tol: float = 1e-12  # stop at this training loss x its value at X = 0; also the convergence gate
    solver: str = "auto"
    rc_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    rc_steps: int = 100000

    @classmethod
    def quick(cls) -> ImplicitMFExperiment:
        """n = 20. Measured here: with 20,000 steps the sensing runs at alpha <= 1e-4 ended at relative residual
        ~5e-4, above a tenth of their distance to X_nuc (3e-3 to 4e-3), so the gate held them back (the whole
        tier took 65 s of CPU); 60,000 steps."""
        return cls(n=20, rank=2, m_sensing=90, m_completion=160, under_n=20, under_m=40,
                   alphas=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5), seeds=(0, 1, 2), steps=60000, rc_seeds=(0, 1, 2),
                   rc_steps=10000)

    @classmethod
    def mid(cls) -> ImplicitMFExperiment:
        """The full protocol's problem sizes (n = 50, rank 2; sensing m = 300, completion m = 800; undersampled
        n = 30, m = 60), 6 alphas down to 1e-6, at most 10^5 steps, 3 seeds; the 2 x 2 example for 10^5 steps.

        Why it tests the headline: the conjecture is decided where X_nuc != X* (one undersampled seed measured
        here: ||X_nuc - X*||/||X*|| = 0.85), and there every alpha converged to the 1e-12 stop within 5,300
        steps; the well-sampled problems are the paper's own figures at its scale. Completion at n = 50 stays
        at training loss ~1e-7 after 10^5 steps, but its relative residual (at most 4e-4) is below a tenth of
        the distances it reports (2.4e-3 to 7.3e-2), which the gate accepts. Cost of one seed, measured with
        OMP_NUM_THREADS=1 on 2 cores shared with a load of about 15: undersampled 4 s of CPU plus 16 s for
        the convex solve, completion 77 s plus 37 s, sensing 276 s plus 33 s (10^5 steps of 6 alphas with 300
        Gaussian measurements of 50 x 50): about 7.5 minutes per seed, about 23 minutes for 3 seeds, plus
        about a minute for the 2 x 2 example."""
        return cls(seeds=(0, 1, 2), rc_seeds=(0, 1, 2))

    def problems(self) -> dict[str, tuple[str, int, int]]:
        """``{name: (kind, n, m)}``."""
        return {"sensing": ("sensing", self.n, self.m_sensing), "completion": ("completion", self.n, self.m_completion),
                "undersampled": ("sensing", self.under_n, self.under_m)}


CONFIG = ImplicitMFExperiment  # the config class (geomopt results check rebuilds it from experiment.json)


# ----------------------------------------------------------------------------- gates

def _describe(r: dict[str, Any]) -> str:
    if r["part"] == "2x2":
        return f"2 x 2 {r['init']} init, seed {r['seed']}"
    return f"{r['problem']} alpha {r['alpha']:g}, seed {r['seed']}"


def sweep_failures(records: Records, rows: list[dict[str, Any]]) -> list[str]:
    """The alpha-sweep gate's failures among ``rows``: diverged, or stopped by the step limit before its fit
    resolves the distance it reports: a run passes when its training loss reached ``tol`` x its value at
    ``X = 0``, or when its relative residual ``sqrt(loss / loss(X = 0))`` is at most ``RESOLUTION`` x its
    relative distance to ``X_nuc`` (the unfinished fit cannot decide a comparison of distances)."""
    tol = records.exp.tol
    out = []
    for r in rows:
        if r["diverged"] or not math.isfinite(r["train_loss"]):
            out.append(f"{_describe(r)}: diverged")
            continue
        residual = math.sqrt(r["train_loss"] / r["loss_zero"])
        if not (r["train_loss"] <= tol * r["loss_zero"] or residual <= RESOLUTION * r["dist_nuc"]):
            out.append(f"{_describe(r)}: not converged (relative residual {residual:.2g} after {r['steps']} steps, "
                       f"above {RESOLUTION:g} x its distance to X_nuc {r['dist_nuc']:.2g}, and training loss above "
                       f"{tol:g} x its start)")
    return out


def rc_failures(records: Records, rows: list[dict[str, Any]], threshold: float) -> list[str]:
    """The 2 x 2 gate's failures among ``rows``: diverged, never reached loss ``threshold``, or crossed
    ``det W = 0`` (``det W < FLOW_DET`` at the end, from ``det W(0) > 0``)."""
    out = []
    for r in rows:
        if r["diverged"] or not math.isfinite(r["loss"]):
            out.append(f"{_describe(r)}: diverged")
        elif not math.isfinite(r[f"nuclear@{threshold:g}"]):
            out.append(f"{_describe(r)}: not converged (loss {r['loss']:.3g} never reached {threshold:g} in "
                       f"{r['steps']} steps)")
        if r["det"] < FLOW_DET:
            out.append(f"{_describe(r)}: crossed det W = 0 (det W = {r['det']:.3g} at the end): past it the run "
                       "heads for a finite-norm solution (det W = -1 at every exact fit), outside the claim's "
                       "trajectories that keep det W > 0")
    return out


def _not_compared(failures: list[str]) -> Outcome:
    """The outcome of a comparison not made because its runs failed the gate (their numbers may be NaN)."""
    return gated(untestable("gate", "not compared: runs failed the gate"), failures)


# ----------------------------------------------------------------------------- claims

def _sweep_rows(records: Records, problem: str, seeds: tuple[int, ...]) -> dict[float, list[dict[str, Any]]] | None:
    """Per alpha, the runs of ``problem`` in the order of ``seeds`` (None when one is not stored)."""
    out = {}
    for a in records.exp.alphas:
        rows = [records.where(part="alpha-sweep", problem=problem, alpha=a, seed=s) for s in seeds]
        if any(len(r) != 1 for r in rows):
            return None
        out[a] = [r[0] for r in rows]
    return out if len(out) >= 2 else None


def _not_run(problem: str, seeds: tuple[int, ...]) -> Outcome:
    return untestable(f"not run: {problem} lacks a run of some alpha and seed of {list(seeds)}, or has fewer than "
                      "2 alphas")


def _nuc_equals_truth(records: Records, problem: str) -> dict[int, bool]:
    """Per seed, whether the solved minimum nuclear norm solution is the truth (within ``NUC_EQUALS_TRUTH``)."""
    return {s: records.where(part="baseline", problem=problem, seed=s)[0]["dist_truth"] <= NUC_EQUALS_TRUTH
            for s in records.exp.seeds}


def _towards_nuclear(records: Records, problem: str, seeds: tuple[int, ...]) -> Outcome:
    """The conjecture's prediction: the smallest alpha gives the smallest distance to X_nuc (per seed)."""
    by_alpha = _sweep_rows(records, problem, seeds)
    if by_alpha is None:
        return _not_run(problem, seeds)
    failures = sweep_failures(records, [r for rs in by_alpha.values() for r in rs])
    if failures:
        return _not_compared(failures)
    small = min(by_alpha)
    others = [min(by_alpha[a][i]["dist_nuc"] for a in by_alpha if a != small) for i in range(len(seeds))]
    return less([r["dist_nuc"] for r in by_alpha[small]], others,
                label=f"{problem}: ||X - X_nuc||/||X_nuc|| at alpha {small:g} - the least at larger alphas")


def _test_well_sampled(records: Records) -> Outcome:
    parts = {p: _towards_nuclear(records, p, tuple(records.exp.seeds)) for p in ("sensing", "completion")}
    out = all_of(parts)
    equal = {p: sum(_nuc_equals_truth(records, p).values()) for p in parts}
    return dataclasses.replace(out, numbers={**out.numbers, "seeds_with_nuc_equal_truth": equal})


def _undersampled_seeds(records: Records) -> tuple[int, ...]:
    return tuple(s for s, eq in _nuc_equals_truth(records, "undersampled").items() if not eq)


def _undersampled(test):
    """``test(records, seeds)`` on the undersampled seeds where ``X_nuc != X*``, recording them."""
    def run(records: Records) -> Outcome:
        seeds = _undersampled_seeds(records)
        if not seeds:
            return untestable(f"X_nuc = X* (within {NUC_EQUALS_TRUTH:g}) in every undersampled seed: the problem does "
                              "not separate a nuclear-norm bias from recovery; fewer measurements would test it")
        return dataclasses.replace(test(records, seeds), seeds=seeds)
    return run


def _test_undersampled(records: Records, seeds: tuple[int, ...]) -> Outcome:
    return _towards_nuclear(records, "undersampled", seeds)


def _test_low_rank(records: Records, seeds: tuple[int, ...]) -> Outcome:
    by_alpha = _sweep_rows(records, "undersampled", seeds)
    if by_alpha is None:
        return _not_run("undersampled", seeds)
    small, large = min(by_alpha), max(by_alpha)
    failures = sweep_failures(records, by_alpha[small] + by_alpha[large])
    if failures:
        return _not_compared(failures)
    return less([r["erank"] for r in by_alpha[small]], [r["erank"] for r in by_alpha[large]],
                label=f"effective rank at alpha {small:g} - at {large:g}")


def _norms_vs_rank(init: str):
    """The 2 x 2 claim's test on the runs from ``init``: the nuclear norm at the end above its value at the first
    loss threshold, and sigma2/sigma1 at the end below ``RANK_ONE``, per seed, gated by :func:`rc_failures`."""
    def test(records: Records) -> Outcome:
        threshold = NormsVsRankConfig().thresholds[0]
        rows = sorted(records.where(part="2x2", init=init), key=lambda r: r["seed"])
        if not rows:
            return untestable(f"no 2 x 2 run from the {init} init", "not run")
        failures = rc_failures(records, rows, threshold)
        if failures:
            out = _not_compared(failures)
        else:
            out = all_of({"norm": greater([r["nuclear"] for r in rows], [r[f"nuclear@{threshold:g}"] for r in rows],
                                          label=f"nuclear norm at the end - at loss {threshold:g}"),
                          "rank": less([r["ratio"] for r in rows], RANK_ONE,
                                       label=f"sigma2/sigma1 at the end - {RANK_ONE:g}", digits=2)})
        return dataclasses.replace(out, seeds=tuple(records.exp.rc_seeds))
    return test


def claims(exp: Any) -> list[Claim]:
    """The paper's claims (each decides ``untestable here`` itself where the runs lack what it needs)."""
    return list(CLAIMS)


CLAIMS = [
    Claim("nuclear-well-sampled", "As alpha -> 0, gradient descent on U U^T approaches the minimum nuclear norm "
          "solution (sensing and completion with enough measurements; there X_nuc = X*, so this cannot tell a "
          "nuclear-norm bias from recovery of X*).", "Gunasekar et al. 2017", "Fig. 1-2",
          "the relative distance ||X - X_nuc||/||X_nuc|| shrinks as alpha falls (plots, no table)", _test_well_sampled),
    Claim("nuclear-undersampled", "The same where the minimum nuclear norm solution differs from the truth "
          "(sensing below the degrees of freedom; seeds where X_nuc != X*): the smallest alpha is closest to X_nuc.",
          "Gunasekar et al. 2017", "Conjecture 1", "the alpha -> 0 limit is X_nuc (conjectured, no number)",
          _undersampled(_test_undersampled)),
    Claim("low-rank-undersampled", "Where X_nuc != X*, the smallest init gives a lower effective rank than the "
          "largest (a bias towards low rank rather than minimum nuclear norm).", "Arora, Cohen, Hu & Luo 2019",
          "Sec. 2-3", "effective rank falls as the init scale falls (plots)", _undersampled(_test_low_rank)),
    Claim("norms-vs-rank", "2 x 2 completion (W12 = W21 = 1, W22 = 0), depth 3, balanced init with det W(0) > 0 "
          "(the flow keeps det W > 0): as the loss falls every norm grows while the rank stays at its infimum 1 "
          "(sigma2/sigma1 -> 0; every exact fit has det W = -1, and every finite-norm solution, e.g. the "
          "min-nuclear-norm [[0,1],[1,0]], has rank 2).", "Razin & Cohen 2020", "Sec. 3, Fig. 1",
          "the unobserved entry |W11| grows to ~60-70 at loss 1e-4 (norms grow as the rank falls)",
          _norms_vs_rank("balanced")),
    Claim("norms-vs-rank-gaussian", "The same from the authors' Gaussian init (factor entries N(0, 8e-3^2), "
          "unbalanced, det W(0) > 0 by resampling), on runs that keep det W > 0. Exact gradient flow from this init "
          "can cross det W = 0 (a factor turning singular while the loss is still at its start) and then approaches "
          "a finite-norm solution: such a run is outside the claim.", "Razin & Cohen 2020",
          "Sec. 3, Fig. 1 (the authors' code: Gaussian init, lr 5e-3)",
          "|W11| ~60-70 at loss 1e-4 (a finite-norm solution can reach that too)", _norms_vs_rank("gaussian")),
]


# ----------------------------------------------------------------------------- runs and records

def _problem(name: str, kind: str, n: int, m: int, exp: ImplicitMFExperiment, rows: list[dict[str, Any]]) -> float:
    """Every seed of one problem: a baseline row per seed and a row per (alpha, seed). Returns seconds."""
    seconds = 0.0
    for seed in tqdm(exp.seeds, desc=f"{NAME} {name}: seeds", dynamic_ncols=True):
        cfg = MatrixLabConfig(kind=kind, n=n, rank=exp.rank, m=m, depths=(2,), alphas=exp.alphas, seeds=(seed,),
                              psd=True, init="orthogonal", steps=exp.steps, rel_step=exp.rel_step, tol=exp.tol,
                              problem_seed=seed, solver=exp.solver, log_every=max(exp.steps // 200, 1))
        lab = run_matrix_lab(cfg, progress=True)
        base = lab["baseline"]
        if base is None:
            raise ValueError(f"{NAME}: the experiment needs the minimum nuclear norm baseline (solver != 'none')")
        rows.append({"run": f"{name}/nuclear/seed{seed}", "part": "baseline", "problem": name, "n": n, "m": m,
                     "seed": seed, "nuclear": base["nuclear"], "dist_truth": base["dist_truth"],
                     "residual": base["residual"], "solver": base["solver"], "seconds": base["seconds"]})
        for r in lab["rows"]:
            if r["depth"] != 2:
                continue
            rows.append({"run": f"{name}/alpha{r['alpha']:g}/seed{seed}", "part": "alpha-sweep", "problem": name,
                         "n": n, "m": m, "alpha": r["alpha"], "seed": seed, "dist_nuc": r["dist_nuc"],
                         "dist_truth": r["dist_truth"], "erank": r["erank"], "nuclear": r["nuclear"],
                         "train_loss": r["train_loss"], "loss_zero": r["loss_zero"], "steps": r["steps"],
                         "diverged": r["diverged"]})
        seconds += base["seconds"] + lab["rows"][0]["seconds_batch"]
    return seconds


def _norms_vs_rank(exp: ImplicitMFExperiment, rows: list, curves: dict) -> float:
    t0 = time.perf_counter()
    rc = run_norms_vs_rank(NormsVsRankConfig(seeds=exp.rc_seeds, steps=exp.rc_steps,
                                             log_every=max(exp.rc_steps // 500, 1)))
    for r in rc["rows"]:
        run = f"2x2/{r['init']}/seed{r['seed']}"
        rows.append({"run": run, "part": "2x2", **{k: v for k, v in r.items() if k != "flow_ok"}})
        c = rc["curves"][r["init"], r["seed"]]
        curves[run] = [{"loss": lo, "nuclear": nu, "ratio": ra}
                       for lo, nu, ra in zip(c["loss"], c["nuclear"], c["ratio"])]
    return time.perf_counter() - t0


def _run(ctx: Context) -> Ran:
    """The three problems and the 2 x 2 example. The lab recomputes every run (it keeps no run folders), so
    ``overwrite`` has nothing to refuse."""
    exp = ctx.exp
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    seconds = sum(_problem(name, kind, n, m, exp, rows) for name, (kind, n, m) in exp.problems().items())
    seconds += _norms_vs_rank(exp, rows, curves)
    return Ran(Records(exp, rows, curves), seconds)


def _report(ctx: Context, records: Records, ran: Ran) -> Report:
    """The alpha-sweep and 2 x 2 tables and figures, the protocol and its gates."""
    exp = ctx.exp
    paragraphs = [
        f"Protocol ({ctx.tier} tier): PSD targets of rank {exp.rank} with ||X*||_F = n; sensing with symmetrized "
        "Gaussian "
        f"measurements (entries N(0, 1/n^2); n = {exp.n}, m = {exp.m_sensing}), completion with symmetric observed "
        f"entries (n = {exp.n}, m = {exp.m_completion}), undersampled sensing (n = {exp.under_n}, m = {exp.under_m}); "
        f"X = U U^T, U(0) = sqrt(alpha) Q (X(0) = alpha I), alphas {list(exp.alphas)}; adaptive steps (relative "
        f"factor change <= {exp.rel_step}), at most {exp.steps} steps, stop at training loss {exp.tol:g} x its value "
        f"at X = 0; problem seeds {list(exp.seeds)} (each draws X*, the measurements and Q). X_nuc = argmin tr X "
        "s.t. A(X) = y, X PSD; it counts as X* when ||X_nuc - X*||/||X*|| <= "
        f"{NUC_EQUALS_TRUTH:g}. 2 x 2 example: depth 3, init std 8e-3 (Gaussian; balanced from the same scale), "
        f"det W(0) > 0, adaptive steps for {exp.rc_steps} steps, seeds {list(exp.rc_seeds)}.",
        f"Run-quality gates: an alpha-sweep run must not diverge and must reach training loss {exp.tol:g} x its "
        f"value at X = 0, or a relative residual at most {RESOLUTION:g} x its relative distance to X_nuc; a 2 x 2 "
        f"run must stay finite, reach loss {NormsVsRankConfig().thresholds[0]:g} and keep "
        f"det W > {FLOW_DET:g} (not crossing det W = 0). A claim resting on a run that fails a gate is "
        "'untestable here', naming the run. The undersampled claims use only the seeds where X_nuc != X*.",
    ]
    return Report(paragraphs, tables=[_sweep_table(records), _rc_table(records)],
                  figures=[_sweep_figure(records, ctx.root), _rc_figure(records, ctx.root)])


# ----------------------------------------------------------------------------- tables and figures

def _sweep_table(records: Records) -> dict[str, Any]:
    exp = records.exp
    columns = ["problem", "alpha", "||X-X_nuc||/||X_nuc||", "||X-X*||/||X*||", "effective rank",
               "nuclear norm / min", "runs converged"]
    table = []
    for name in PROBLEMS:
        base = {r["seed"]: r for r in records.where(part="baseline", problem=name)}
        for a in exp.alphas:
            rs = records.where(part="alpha-sweep", problem=name, alpha=a)
            bad = sweep_failures(records, rs)
            table.append([name, a, seed_stats([r["dist_nuc"] for r in rs]).fmt(),
                          seed_stats([r["dist_truth"] for r in rs]).fmt(), seed_stats([r["erank"] for r in rs]).fmt(),
                          seed_stats([r["nuclear"] / base[r["seed"]]["nuclear"] for r in rs]).fmt(),
                          f"{len(rs) - len(bad)}/{len(rs)}"])
        equal = sum(_nuc_equals_truth(records, name).values())
        table.append([name, "min nuclear norm", 0.0, seed_stats([b["dist_truth"] for b in base.values()]).fmt(), "",
                      1.0, f"X_nuc = X* in {equal}/{len(base)} seeds"])
    return {"caption": "Against alpha, mean [95% interval] over problem seeds", "columns": columns, "rows": table}


def _rc_table(records: Records) -> dict[str, Any]:
    t = NormsVsRankConfig().thresholds[0]
    columns = ["init", "seed", "steps", "loss (1/2 sum r^2)", "W11", "det W", "nuclear norm", f"nuclear at loss {t:g}",
               "sigma2/sigma1", f"sigma2/sigma1 at loss {t:g}", "gate"]
    rows = [r for r in records.rows if r["part"] == "2x2"]
    table = [[r["init"], r["seed"], r["steps"], r["loss"], r["W11"], r["det"], r["nuclear"], r[f"nuclear@{t:g}"],
              r["ratio"], r[f"ratio@{t:g}"], "; ".join(s.split(": ", 1)[1] for s in rc_failures(records, [r], t))
              or "passed"] for r in rows]
    return {"caption": "2 x 2 completion (Razin & Cohen 2020), one row per run", "columns": columns, "rows": table}


def _sweep_figure(records: Records, root: Path) -> dict[str, str]:
    exp = records.exp
    xs = [math.log10(a) for a in exp.alphas]
    panels: dict[str, dict] = {"relative distance": {}, "effective rank": {}, "nuclear norm / min nuclear norm": {}}

    def mean(problem: str, value) -> list[float]:
        base = {r["seed"]: r for r in records.where(part="baseline", problem=problem)}
        return [sum(value(r, base[r["seed"]]) for r in rs) / len(rs)
                for rs in (records.where(part="alpha-sweep", problem=problem, alpha=a) for a in exp.alphas)]
    for name in PROBLEMS:
        panels["relative distance"][f"{name}: to X_nuc"] = (xs, mean(name, lambda r, b: r["dist_nuc"]))
        panels["relative distance"][f"{name}: to X*"] = (xs, mean(name, lambda r, b: r["dist_truth"]))
        panels["effective rank"][name] = (xs, mean(name, lambda r, b: r["erank"]))
        panels["nuclear norm / min nuclear norm"][name] = (xs, mean(name, lambda r, b: r["nuclear"] / b["nuclear"]))
    plot_curves(panels, root / "alpha_sweep.png", xlabel="log10 alpha (init scale)", ylabel="mean over seeds", ncols=3)
    return {"file": "alpha_sweep.png", "caption": "Against log10 alpha (mean over problem seeds): relative distance to "
                                                  "X_nuc and to X*, effective rank, nuclear norm over the minimum."}


def _rc_figure(records: Records, root: Path) -> dict[str, str]:
    panels: dict[str, dict] = {"nuclear norm": {}, "log10 sigma2/sigma1": {}}
    for r in records.rows:
        if r["part"] != "2x2":
            continue
        lx = [math.log10(max(v, 1e-300)) for v in records.curve(r["run"], "loss")]
        panels["nuclear norm"][f"{r['init']} {r['seed']}"] = (lx, records.curve(r["run"], "nuclear"))
        panels["log10 sigma2/sigma1"][f"{r['init']} {r['seed']}"] = (
            lx, [math.log10(max(v, 1e-300)) for v in records.curve(r["run"], "ratio")])
    plot_curves(panels, root / "norms_vs_rank.png", xlabel="log10 loss (1/2 sum r^2)", ylabel="", ncols=2)
    return {"file": "norms_vs_rank.png", "caption": "Razin & Cohen's 2 x 2 completion: nuclear norm and sigma2/sigma1 "
                                                    "against the loss, one line per run."}


# ``--seeds N`` sets the problem seeds and, unless ``rc_seeds`` is overridden, the 2 x 2 example's seeds
EXPERIMENT = Experiment(NAME, ImplicitMFExperiment, TITLE, CITATIONS, order=40, run=_run, claims=claims, report=_report,
                        also_seeds=("rc_seeds",))
reproduce = EXPERIMENT.reproduce
