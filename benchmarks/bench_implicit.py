"""Implicit regularization lab: batched factorized GD vs a loop of single runs; ADMM vs cvxpy.

1. Runs per second of a 64-run (8 alphas x 8 seeds) sweep at n = 100, depth 3: one batched
   ``run_factorized`` call vs a Python loop of 64 single-run calls, same steps, same process,
   alternating repetitions; checks that both give the same matrices. Matrix completion (m = 2000)
   and Gaussian sensing (m = 2000, the dense operator is 2000 x 10^4).
2. (--part admm) Iterations of the default ADMM rule against plain ADMM with the textbook
   residual-balancing rule, on 14 small problems and on 100 x 100 completion.
3. Time to solution of the minimum nuclear norm baseline: ADMM (``solver="admm"``, tol 1e-8) vs
   cvxpy at n = 50 and n = 100, completion, and sensing at n = 50 (Clarabel; SCS for 100 x 100
   completion, where Clarabel needed > 20 GB; sensing at n = 100 is out of cvxpy's reach on this
   machine: papers.md measured > 280 s and 12 GB with SCS, so ADMM runs alone there).

Usage: python benchmarks/bench_implicit.py [--steps 20] [--reps 3] [--threads 2] [--skip-cvxpy]
       [--part all|sweep|convex|admm] [--admm-max-iter 50000] [--cvxpy-solver SCS|CLARABEL]
       [--rows completion:50,completion:100,sensing:50,sensing:100]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from geomopt.implicit import (
    Completion,
    GaussianSensing,
    SensingObjective,
    init_factors,
    min_nuclear_norm,
    random_low_rank,
    relative_distance,
    run_factorized,
)

from geomopt.implicit.nuclear import solve_cvxpy
from machine import describe_machine


def sweep_bench(kind: str, steps: int, reps: int, dtype: torch.dtype) -> dict[str, float]:
    n, m, depth = 100, 2000, 3
    target = random_low_rank(n, n, 5, seed=0, fro_norm=float(n))
    op = GaussianSensing(n, n, m, seed=1, scale=1.0 / n) if kind == "sensing" else Completion.random(n, n, m, seed=1)
    objective = SensingObjective(op.to(dtype=dtype), op(target).to(dtype))
    alphas = [a for a in torch.logspace(-4, -0.5, 8).tolist() for _ in range(8)]
    seeds = [s for _ in range(8) for s in range(8)]
    factors = init_factors((n, n), depth, alphas=alphas, seeds=seeds, dtype=dtype)
    singles = [init_factors((n, n), depth, alphas=[a], seeds=[s], dtype=dtype) for a, s in zip(alphas, seeds)]
    lr = 0.05 * m / n  # a stable step for this target (not tuned: only the time per step matters)
    kw = dict(lr=lr, steps=steps, log_every=steps)
    t_batch, t_loop = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        batched = run_factorized(objective, factors, **kw)
        t_batch.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loop = [run_factorized(objective, f, **kw) for f in singles]
        t_loop.append(time.perf_counter() - t0)
    diff = max(float((batched.W[b] - r.W[0]).abs().max() / r.W[0].abs().max()) for b, r in enumerate(loop))
    tb, tl = statistics.median(t_batch), statistics.median(t_loop)
    # arithmetic of the factor updates: depth 3 needs 6 (B, n, n) matmuls a step (W, 2 prefixes, 3 gradients)
    flops = 64 * steps * 6 * 2 * n ** 3
    return {"batched_runs_per_s": 64 / tb, "loop_runs_per_s": 64 / tl, "speedup": tl / tb, "max_rel_diff": diff,
            "batched_s": tb, "loop_s": tl, "gflops": flops / tb / 1e9}


def admm_rules_bench(max_iter: int) -> list[tuple[str, str, list[int | None], float]]:
    """Iterations of the default ADMM (over-relaxed, balance 3) vs plain ADMM with the textbook rule
    (relaxation 1, balance 10): 14 small problems at tol 1e-8 (8 completions 8 x 8 rank 1 with 30
    entries, 3 sensings 20 x 20 rank 2 with m = 150, 3 completions 30 x 30 rank 2 with 300 entries),
    and 100 x 100 completion (rank 2, 2000 entries) at tol 1e-7. ``None``: no convergence."""
    problems = []
    for seed in range(8):
        op = Completion.random(8, 8, 30, seed=seed + 100)
        problems.append((op, op(random_low_rank(8, 8, 1, seed=seed, fro_norm=8.0)), 1e-8))
    for seed in range(3):
        op = GaussianSensing(20, 20, 150, seed=seed, scale=1 / 20)
        problems.append((op, op(random_low_rank(20, 20, 2, seed=seed, fro_norm=20.0)), 1e-8))
        op = Completion.random(30, 30, 300, seed=seed)
        problems.append((op, op(random_low_rank(30, 30, 2, seed=seed, fro_norm=30.0)), 1e-8))
    big = Completion.random(100, 100, 2000, seed=1)
    big_y = big(random_low_rank(100, 100, 2, seed=0, fro_norm=100.0))
    out = []
    for label, rule in [("default (relaxation 1.6, balance 3)", {}),
                        ("plain (relaxation 1.0, balance 10)", {"relaxation": 1.0, "balance": 10.0})]:
        its = []
        for op, y, tol in problems:
            try:
                its.append(min_nuclear_norm(op, y, solver="admm", tol=tol, max_iter=max_iter, **rule).iterations)
            except RuntimeError:
                its.append(None)
        t0 = time.perf_counter()
        try:
            big_its = str(min_nuclear_norm(big, big_y, solver="admm", tol=1e-7, max_iter=max_iter, **rule).iterations)
        except RuntimeError:
            big_its = "no convergence"
        out.append((label, big_its, its, time.perf_counter() - t0))
    return out


def peak_gflops(dtype: torch.dtype) -> float:
    """Matmul throughput on large, well-shaped operands: the ceiling for any batched sweep of n x n products."""
    a, b = torch.randn(6400, 100, dtype=dtype), torch.randn(100, 100, dtype=dtype)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - t0) / 10)
    return 2 * 6400 * 100 * 100 / best / 1e9


def convex_bench(kind: str, n: int, m: int, use_cvxpy: bool, max_iter: int,
                 cvxpy_solver: str | None = None) -> dict[str, float | str]:
    target = random_low_rank(n, n, 2, seed=0, fro_norm=float(n))
    op = GaussianSensing(n, n, m, seed=1, scale=1.0 / n) if kind == "sensing" else Completion.random(n, n, m, seed=1)
    y = op(target)
    try:
        admm = min_nuclear_norm(op, y, solver="admm", tol=1e-8, max_iter=max_iter)
    except RuntimeError as exc:  # no convergence: report it in the table instead of losing the other rows
        return {"admm_failed": str(exc)}
    out: dict[str, float | str] = {"admm_s": admm.seconds, "admm_iters": admm.iterations,
                                   "admm_nuclear": admm.nuclear_norm, "admm_err": float(relative_distance(admm.X, target))}
    if use_cvxpy:
        ref = solve_cvxpy(op, y, solver=cvxpy_solver)
        out |= {"cvxpy_s": ref.seconds, "cvxpy_solver": ref.solver, "cvxpy_nuclear": ref.nuclear_norm,
                "rel_gap_nuclear": abs(admm.nuclear_norm - ref.nuclear_norm) / ref.nuclear_norm,
                "rel_dist_X": float(relative_distance(admm.X, ref.X)), "ratio": ref.seconds / admm.seconds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--skip-cvxpy", action="store_true")
    parser.add_argument("--part", default="all", choices=["all", "sweep", "convex", "admm"])
    parser.add_argument("--admm-max-iter", type=int, default=50000)
    parser.add_argument("--cvxpy-solver", default=None, help="SCS or CLARABEL (default: CLARABEL when installed)")
    parser.add_argument("--rows", default=None, help="convex rows to run, e.g. 'completion:100,sensing:50'")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Machine: {describe_machine()}")
    dtype = getattr(torch, args.dtype)
    if args.part in ("all", "sweep"):
        print(f"\n64-run sweep (8 alphas x 8 seeds), n=100, depth 3, m=2000, {args.steps} steps, {args.dtype}")
        print("| problem | batched runs/s | loop runs/s | speedup | max rel. diff | batched GFLOP/s |")
        print("|---|---|---|---|---|---|", flush=True)
        for kind in ("completion", "sensing"):
            r = sweep_bench(kind, args.steps, args.reps, dtype)
            print(f"| {kind} | {r['batched_runs_per_s']:.2f} | {r['loop_runs_per_s']:.2f} | **{r['speedup']:.1f}x** | "
                  f"{r['max_rel_diff']:.1e} | {r['gflops']:.1f} |", flush=True)
        print(f"Peak of this machine for the same arithmetic: {peak_gflops(dtype):.1f} GFLOP/s (one (6400, 100) x "
              "(100, 100) matmul)", flush=True)
    if args.part == "sweep":
        return
    if args.part in ("all", "admm"):
        print("\nADMM rules: iterations on 14 small problems (tol 1e-8, max 20000) and on 100 x 100 completion "
              "(tol 1e-7)")
        print("| rule | small: solved | small: total iterations (unsolved counted as 20000) | 100 x 100: iterations "
              "| 100 x 100: s |\n|---|---|---|---|---|", flush=True)
        for label, big_its, its, secs in admm_rules_bench(20000):
            print(f"| {label} | {sum(i is not None for i in its)}/{len(its)} | {sum(i or 20000 for i in its)} | "
                  f"{big_its} | {secs:.1f} |", flush=True)
    if args.part == "admm":
        return
    use_cvxpy = not args.skip_cvxpy
    if use_cvxpy:
        try:
            import cvxpy  # noqa: F401
        except ImportError:
            print("cvxpy not installed: pip install 'geomopt[convex]'; timing ADMM only")
            use_cvxpy = False
    print("\nMinimum nuclear norm, rank-2 target: ADMM (tol 1e-8) vs cvxpy")
    print("| problem | ADMM s (iters) | cvxpy s | cvxpy/ADMM | rel. gap in ||X||_* | ||X_admm - X_cvx|| / ||X_cvx|| |")
    print("|---|---|---|---|---|---|")
    # cvxpy's solver per row: Clarabel (interior point) where it fits in memory; SCS for 100 x 100
    # completion, where Clarabel went past 20 GB; sensing at n = 100 is out of cvxpy's reach (papers.md)
    rows = [("completion", 50, 1000, True, None), ("completion", 100, 2000, True, "SCS"),
            ("sensing", 50, 750, True, None), ("sensing", 100, 2000, False, None)]
    for kind, n, m, with_cvx, row_solver in rows:
        if args.rows and f"{kind}:{n}" not in args.rows.split(","):
            continue
        r = convex_bench(kind, n, m, use_cvxpy and with_cvx, args.admm_max_iter, args.cvxpy_solver or row_solver)
        kind = f"{kind} ({r['cvxpy_solver']})" if "cvxpy_solver" in r else kind
        if "admm_failed" in r:
            print(f"| {kind} n={n} m={m} | {r['admm_failed']} | | | | |", flush=True)
        elif "cvxpy_s" in r:
            print(f"| {kind} n={n} m={m} | {r['admm_s']:.2f} ({r['admm_iters']}) | {r['cvxpy_s']:.2f} "
                  f"| {r['ratio']:.1f} | {r['rel_gap_nuclear']:.1e} | {r['rel_dist_X']:.1e} |", flush=True)
        else:
            print(f"| {kind} n={n} m={m} | {r['admm_s']:.2f} ({r['admm_iters']}) | not run | | | "
                  f"(ADMM vs truth {r['admm_err']:.1e}) |", flush=True)


if __name__ == "__main__":
    main()
