"""``geomopt curvature RUN_DIR``: the top Hessian / GGN / Fisher eigenvalues, trace or spectral density of a trained run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geomopt.cli.common import add_trust_flag


def cmd_curvature(args: argparse.Namespace) -> int:
    from geomopt.runs import CURVATURE_FILE, curvature_run
    try:
        result = curvature_run(args.run_dir, top_k=args.top_k, trace=args.trace, spectrum=args.spectrum,
                               operator=args.operator, examples=args.examples, seed=args.seed)
    except FloatingPointError as exc:  # a NaN weight or input: bad input, nothing written
        print(f"geomopt curvature: {exc}", file=sys.stderr)
        return 2
    print(f"{args.operator} of {args.run_dir}: {result['parameters']} parameters, {result['examples']} examples, "
          f"{result['products']} products in {result['seconds']:.1f} s")
    if "top_eigenvalues" in result:
        print("  top eigenvalues  " + "  ".join(f"{v:.6g}" for v in result["top_eigenvalues"]))
    if "trace" in result:
        print(f"  trace            {result['trace']:.6g} +- {result['trace_stderr']:.2g} ({result['trace_probes']} probes)")
    if "spectrum_figure" in result:
        print(f"  spectral density {Path(args.run_dir) / result['spectrum_figure']}")
    print(f"wrote {Path(args.run_dir) / CURVATURE_FILE}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geomopt curvature`` to the top-level parser."""
    p = sub.add_parser("curvature", help="top Hessian/GGN/Fisher eigenvalues, trace or spectral density of a trained run")
    p.add_argument("run_dir", help="a `geomopt train` output directory (config.json, checkpoint.pt)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="the K largest eigenvalues (Lanczos)")
    p.add_argument("--trace", action="store_true", help="the trace (Hutch++, 1%% relative tolerance)")
    p.add_argument("--spectrum", action="store_true",
                   help="spectral density by stochastic Lanczos quadrature (RUN_DIR/spectrum.png)")
    p.add_argument("--operator", choices=["hessian", "ggn", "fisher"], default="hessian",
                   help="the curvature matrix: loss Hessian, Gauss-Newton, or (true) Fisher (default: hessian)")
    p.add_argument("--examples", type=int, default=1000, help="training examples the curvature is taken on")
    p.add_argument("--seed", type=int, default=0, help="seed of the random probe vectors (default: 0)")
    add_trust_flag(p, "RUN_DIR's config.json")
    p.set_defaults(func=cmd_curvature)
