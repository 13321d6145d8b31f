"""``geomopt measure RUN_DIR``: the generalization measures of a trained run (``RUN_DIR/measures.json``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geomopt.cli.common import add_trust_flag


def cmd_measure(args: argparse.Namespace) -> int:
    from geomopt.runs import measure_run
    options = {"margin_quantile": args.margin_quantile, "sharpness_alpha": args.sharpness_alpha,
               "flatness_threshold": args.flatness_threshold, "flatness_samples": args.flatness_samples,
               "seed": args.seed}
    measures = args.measures.split(",") if args.measures != "all" else "all"
    result = measure_run(args.run_dir, measures=measures, progress=not args.no_progress, overwrite=args.overwrite,
                         **options)
    keys = ["margin", "train_error", "test_error", "gap", "log_spectral_product", "l2_path", "l2_path_over_margin",
            "bartlett_bound", "pac_bayes_spectral_bound", "sharpness", "pacbayes_sigma", "pacbayes_mag_sigma",
            "hessian_top_eigenvalue", "hessian_trace"]
    unfit = "margin" in result and not result["margin"] > 0
    for k in keys:
        if k in result:
            why = ("  (the margin is <= 0: see the warning)" if unfit and k != "margin" and result[k] != result[k]
                   else "")
            print(f"  {k:28s} {result[k]:.6g}{why}")
    if unfit:
        print(f"  the margin-normalized measures and bounds need a run that fits its training set: more than a "
              f"{args.margin_quantile:g} fraction of training points is misclassified (train error "
              f"{result['train_error']:.4f}); train longer, or pass a smaller --margin-quantile")
    for w in result.get("warnings", []):
        print(f"  warning: {w}", file=sys.stderr)
    print(f"wrote {Path(args.run_dir) / 'measures.json'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geomopt measure`` to the top-level parser."""
    p = sub.add_parser("measure", help="generalization measures of a trained run (writes RUN_DIR/measures.json)")
    p.add_argument("run_dir", help="a `geomopt train` output directory (config.json, checkpoint.pt)")
    p.add_argument("--measures", default="all",
                   help="'all' or comma-separated groups: margin,norms,path,bounds,sharpness,flatness,hessian")
    p.add_argument("--margin-quantile", type=float, default=0.05, help="quantile of the signed training margins")
    p.add_argument("--sharpness-alpha", type=float, default=5e-4, help="box |nu| <= alpha (|w| + 1)")
    p.add_argument("--flatness-threshold", type=float, default=0.1, help="largest expected loss increase")
    p.add_argument("--flatness-samples", type=int, default=10, help="Monte-Carlo draws per sigma")
    p.add_argument("--seed", type=int, default=0, help="seed of the random perturbations (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="recompute even if measures.json is up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_trust_flag(p, "RUN_DIR's config.json")
    p.set_defaults(func=cmd_measure)
