"""``geomopt report``: the self-contained HTML report of a runs directory or of the results ledger."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from geomopt.report import build_report
    runs = Path(args.results if args.results is not None else args.runs)
    default = Path("runs") / "ledger-report" if args.results is not None else runs / "report"
    path = build_report(runs, Path(args.out) if args.out else default)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geomopt report`` to the top-level parser."""
    p = sub.add_parser("report", help="build the self-contained HTML report from a runs directory")
    p.add_argument("runs", nargs="?", default="runs",
                   help="the folder `geomopt reproduce --out` wrote (its reproductions' sections and claims; default: runs)")
    p.add_argument("--results", nargs="?", const="results", default=None, metavar="LEDGER",
                   help="render the results ledger instead (default folder: results; report in runs/ledger-report)")
    p.add_argument("--out", help="report directory (default: RUNS/report)")
    p.set_defaults(func=cmd_report)
