"""``geomopt implicit sensing | completion | deep-linear``: the implicit regularization lab (:mod:`geomopt.implicit.lab`) from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path


def _numbers(kind: type, noun: str, example: str):
    """An argparse type for a non-empty comma-separated list of ``kind`` (``noun``s such as ``example``)."""
    def parse(text: str) -> tuple:
        try:
            vals = tuple(kind(t) for t in text.split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}s such as {example}, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"expected at least one {noun}")
        return vals
    return parse


_floats = _numbers(float, "number", "1e-3,1e-2")
_ints = _numbers(int, "integer", "2,3")


def cmd_matrix(args: argparse.Namespace) -> int:
    from geomopt.implicit.lab import MatrixLabConfig, run_matrix_lab
    cfg = MatrixLabConfig(kind=args.kind, n=args.n, rank=args.rank, m=args.m, depths=args.depth, alphas=args.alphas,
                          seeds=tuple(range(args.seeds)), psd=args.psd, init=args.init, lr_factor=args.lr_factor,
                          steps=args.steps, adaptive=not args.fixed_step, rel_step=args.rel_step, tol=args.tol,
                          problem_seed=args.problem_seed, solver=args.solver, log_every=args.log_every,
                          dtype=args.dtype)
    out = Path(args.out)
    result = run_matrix_lab(cfg, out, progress=not args.no_progress)
    print(f"{cfg.kind}: n={cfg.n}, rank={cfg.rank}, m={cfg.m}; err = ||W - W*||_F^2 / ||W*||_F^2")
    print(f"{'depth':>8s} {'alpha':>8s} {'seed':>4s} {'steps':>7s} {'loss':>9s} {'err':>9s} {'erank':>6s} "
          f"{'dist_nuc':>9s}")
    for r in result["rows"]:
        fmt = (lambda v, w: f"{v:{w}.3g}" if isinstance(v, float) else f"{v!s:>{w}}")
        print(f"{fmt(r['depth'], 8)} {fmt(r['alpha'], 8)} {fmt(r['seed'], 4)} {fmt(r['steps'], 7)} "
              f"{fmt(r['train_loss'], 9)} {fmt(r['err'], 9)} {fmt(r['erank'], 6)} {fmt(r.get('dist_nuc', ''), 9)}")
    base = result["baseline"]
    if base is not None:
        print(f"min nuclear norm solution vs the truth: ||X_nuc - X*||_F / ||X*||_F = {base['dist_truth']:.3g} ("
              + ("X_nuc = X*: distance to X_nuc cannot tell a nuclear-norm bias from recovery)" if base["equals_truth"]
                 else "X_nuc != X*: distance to X_nuc tests the minimum-nuclear-norm conjecture)"))
    print(f"wrote {out / 'table.csv'}, table.json and figures (*.png)")
    return 0


def cmd_deep_linear(args: argparse.Namespace) -> int:
    from geomopt.implicit.lab import DeepLinearLabConfig, run_deep_linear_lab
    cfg = DeepLinearLabConfig(n=args.n, d=args.d, k=args.k, p=args.p, depths=args.depths, lr=args.lr,
                              steps=args.steps, init_scale=args.init_scale, width=args.width,
                              condition=args.condition, seed=args.seed, target_loss=args.target_loss)
    out = Path(args.out)
    result = run_deep_linear_lab(cfg, out, progress=not args.no_progress)
    print(f"l{cfg.p:g} regression, n={cfg.n}, d={cfg.d}, lr={cfg.lr:g}, {cfg.steps} steps")
    for r in result["rows"]:
        hit = r["steps_to_target"]
        print(f"  depth {r['depth']}: loss {r['initial_loss']:.4g} -> {r['final_loss']:.4g}"
              f"{' (diverged)' if r['diverged'] else ''}; steps to {r['target_loss']:.3g}: "
              f"{hit if hit != '' else 'not reached'}")
    print(f"wrote {out / 'table.csv'}, table.json and loss.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``implicit`` and its three subcommands on the top-level parser."""
    p = sub.add_parser("implicit", help="implicit regularization lab: factorized GD, nuclear norm, deep linear nets")
    isub = p.add_subparsers(dest="lab", required=True)
    for kind in ("sensing", "completion"):
        q = isub.add_parser(kind, help=f"matrix {kind} with depth-N factorized gradient descent vs the "
                                       "minimum nuclear norm solution")
        q.set_defaults(func=cmd_matrix, kind=kind)
        q.add_argument("--n", type=int, default=50, help="matrix size n x n (default 50)")
        q.add_argument("--rank", type=int, default=2, help="rank of the target (default 2)")
        q.add_argument("--m", type=int, default=400, help="measurements / observed entries (default 400)")
        q.add_argument("--depths", "--depth", dest="depth", type=_ints, default=(2,),
                       help="depths, e.g. 2 or 1,2,3 (default 2; --depth is the same flag)")
        q.add_argument("--alphas", type=_floats, default=(1e-3, 1e-2, 1e-1, 1.0),
                       help="init scales ||W(0)||_F ~ alpha sqrt(n) (default 1e-3,1e-2,1e-1,1)")
        q.add_argument("--seeds", type=int, default=1, help="number of init seeds per alpha (default 1)")
        q.add_argument("--psd", action="store_true", help="PSD target, symmetric measurements, X = U U^T at depth 2")
        q.add_argument("--init", default="gaussian", choices=["gaussian", "orthogonal", "identity", "balanced"],
                       help="factor initialization, scaled to alpha (default: gaussian)")
        q.add_argument("--steps", type=int, default=20000, help="maximal steps (default 20000)")
        q.add_argument("--lr-factor", type=float, default=0.5,
                       help="step = factor / curvature at the target (default 0.5)")
        q.add_argument("--fixed-step", action="store_true", help="no adaptive step control")
        q.add_argument("--rel-step", type=float, default=0.01, help="adaptive: largest relative factor change")
        q.add_argument("--tol", type=float, default=1e-10, help="stop at this loss relative to the loss at 0")
        q.add_argument("--problem-seed", type=int, default=0,
                       help="seed of the target matrix and the measurements (default: 0)")
        q.add_argument("--solver", default="auto", choices=["auto", "cvxpy", "admm", "none"],
                       help="nuclear-norm baseline (cvxpy needs pip install 'geomopt[convex]')")
        q.add_argument("--log-every", type=int, default=50, help="record the trajectory every this many steps")
        q.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                       help="floating-point precision of the factors (default: float64)")
        q.add_argument("--out", required=True, help="output directory (table.csv/json, PNG figures)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = isub.add_parser("deep-linear", help="l_p regression with depth-N linear networks (balanced init, same lr)")
    q.set_defaults(func=cmd_deep_linear)
    q.add_argument("--n", type=int, default=512, help="examples (default 512)")
    q.add_argument("--d", type=int, default=32, help="input dimension (default 32)")
    q.add_argument("--k", type=int, default=1, help="outputs (default 1)")
    q.add_argument("--p", type=float, default=4.0, help="loss exponent (default 4)")
    q.add_argument("--depths", "--depth", dest="depths", type=_ints, default=(1, 2, 3),
                   help="depths, e.g. 1,2,3 (default; --depth is the same flag)")
    q.add_argument("--lr", type=float, default=1e-3, help="learning rate of every depth (default 1e-3)")
    q.add_argument("--steps", type=int, default=5000, help="gradient descent steps (default 5000)")
    q.add_argument("--init-scale", type=float, default=1.0, help="||W(0)||_F (default 1)")
    q.add_argument("--width", type=int, default=None, help="hidden width (default d)")
    q.add_argument("--condition", type=float, default=10.0, help="condition number of the inputs")
    q.add_argument("--seed", type=int, default=0, help="seed of the data and the initialization (default 0)")
    q.add_argument("--target-loss", type=float, default=None,
                   help="report steps to reach this loss (default 1.5 x the shallowest depth's final loss)")
    q.add_argument("--out", required=True, help="output directory (table.csv/json, loss.png)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
