"""``geomopt zoo`` (train a grid of small networks from a TOML file) and ``geomopt correlate`` (rank correlation of every measure with the generalization gap over a zoo)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geomopt.cli.common import add_sweep_flags, add_trust_flag, parse_sweep_flags


def cmd_zoo(args: argparse.Namespace) -> int:
    from geomopt.experiments.zoo import train_zoo
    try:
        options = parse_sweep_flags(args)
    except RuntimeError as exc:
        print(f"geomopt zoo: {exc}", file=sys.stderr)
        return 2
    results = train_zoo(args.grid, args.out, measures=not args.no_measures, checkpoints=not args.no_checkpoints,
                        overwrite=args.overwrite, **options)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    diverged = sum(bool(r.result and r.result.get("diverged")) for r in results)
    print(f"{len(results)} runs in {args.out}: {counts['done']} trained now, {counts['skipped']} finished before, "
          f"{diverged} diverged, {counts['failed']} failed; next: geomopt correlate {args.out}")
    for r in results:
        if r.status == "failed":
            print(f"  failed: {r.trial.out / 'failed.json'}", file=sys.stderr)
    targeted = [r.result for r in results if r.result and "reached_target" in r.result]
    if targeted:
        reached = sum(bool(s["reached_target"]) for s in targeted)
        print(f"{reached} of {len(targeted)} runs reached target_train_loss"
              + ("" if reached else ": none did; raise epochs or the learning rate in [base] (correlate keeps "
                                     "runs by --min-train-acc, so its rankings may hold few models)"))
    return 1 if counts["failed"] else 0


def cmd_correlate(args: argparse.Namespace) -> int:
    from geomopt.experiments.zoo import correlate, measure_zoo
    from geomopt.sweep import sweep_options
    if args.recompute:
        try:
            options = parse_sweep_flags(args)
        except RuntimeError as exc:
            print(f"geomopt correlate: {exc}", file=sys.stderr)
            return 2
        with sweep_options(**options):
            measure_zoo(args.zoo, overwrite=True)
    rows = correlate(args.zoo, args.out, min_train_acc=args.min_train_acc, variant=args.kendall,
                     bootstrap=args.bootstrap, seed=args.seed, echo=print)
    kind = rows[0]["kendall_variant"] if rows else "tau-a"
    print(f"{'measure':40s} {'models':>6s} {kind:>7s} {'95% bootstrap':>17s} {'granulated':>10s}")
    for r in rows:
        interval = f"[{r['kendall_tau_lo']:6.3f}, {r['kendall_tau_hi']:6.3f}]"
        print(f"{r['measure']:40s} {r['models']:6d} {r['kendall_tau']:7.3f} {interval:>17s} {r['granulated']:10.3f}")
    print(f"wrote {Path(args.out or args.zoo) / 'correlation.csv'} and correlation.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geomopt zoo`` and ``geomopt correlate`` to the top-level parser."""
    p = sub.add_parser("zoo", help="train a grid of small networks (a model zoo) from a TOML file")
    p.add_argument("--grid", required=True, help="zoo.toml with [base], [grid] and optional [measure] tables")
    p.add_argument("--out", default="runs/zoo", help="zoo directory (default: runs/zoo)")
    p.add_argument("--overwrite", action="store_true", help="retrain run folders that hold a different run")
    p.add_argument("--no-measures", action="store_true", help="do not compute measures.json in each trial")
    p.add_argument("--no-checkpoints", action="store_true",
                   help="do not bring the final checkpoints back (less data; measures cannot be recomputed)")
    add_trust_flag(p, "the grid file")
    add_sweep_flags(p)
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("correlate", help="rank correlation of every measure with the generalization gap over a zoo")
    p.add_argument("zoo", help="a `geomopt zoo` output directory")
    p.add_argument("--out", default=None, help="where correlation.csv/png go (default: the zoo directory)")
    p.add_argument("--min-train-acc", type=float, default=0.99, help="keep runs with this training accuracy")
    p.add_argument("--kendall", choices=("a", "b"), default="a",
                   help="tau-a over all groups (Jiang et al. eq. 3-4, default) or tau-b (ties corrected)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the models (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--recompute", action="store_true",
                   help="compute every run's measures.json again (otherwise the stored measures are read)")
    add_trust_flag(p, "a run's config.json (with --recompute)")
    add_sweep_flags(p)
    p.set_defaults(func=cmd_correlate)
