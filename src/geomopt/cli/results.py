"""``geomopt results add | check``: file reproductions into the results ledger, or recompute and check it."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_results(args: argparse.Namespace) -> int:
    from geomopt.experiments import ledger
    if args.action == "check":
        return ledger.main_check(args.ledger)
    if args.action == "readme":
        print(f"wrote {ledger.write_readme(args.ledger)}")
        return 0
    for target in ledger.add(args.runs, args.ledger):
        print(f"filed {target}")
    print(f"wrote {Path(args.ledger) / 'README.md'}; check it with `geomopt results check {args.ledger}`")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geomopt results`` and its three actions to the top-level parser."""
    p = sub.add_parser("results", help="the results ledger: file reproductions into it, or recompute and check it")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("check", help="recompute every claim of the ledger from its stored raw numbers; exit 1 "
                                         "when a stored verdict does not follow or a file was edited by hand")
    q.add_argument("ledger", nargs="?", default="results", help="the ledger folder (default: results)")
    q = actions.add_parser("add", help="file every reproduction under RUNS into the ledger (results/<name>/<tier>/) "
                                       "with its provenance, and regenerate the ledger's README.md")
    q.add_argument("runs", help="a folder `geomopt reproduce --out` wrote")
    q.add_argument("--ledger", default="results", help="the ledger folder (default: results)")
    q = actions.add_parser("readme", help="regenerate the ledger's README.md from its entries (e.g. after a merge)")
    q.add_argument("ledger", nargs="?", default="results", help="the ledger folder (default: results)")
    p.set_defaults(func=cmd_results)
