"""``geomopt results add | check | redecide | readme``: file reproductions into the results ledger, recompute and
check it, or decide its claims anew from the stored numbers when the rules change."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_results(args: argparse.Namespace) -> int:
    from geomopt.experiments import ledger
    if args.action == "check":
        return ledger.main_check(args.ledger)
    if args.action == "redecide":
        try:
            changes = ledger.redecide(args.ledger)
        except (ValueError, FileNotFoundError) as exc:
            print(exc, file=sys.stderr)
            return 1
        print("\n".join(changes) if changes else "every stored claim already follows the current rules")
        print(f"wrote {Path(args.ledger) / 'README.md'}; check it with `geomopt results check {args.ledger}`")
        return 0
    if args.action == "readme":
        print(f"wrote {ledger.write_readme(args.ledger)}")
        return 0
    for target in ledger.add(args.runs, args.ledger):
        print(f"filed {target}")
    print(f"wrote {Path(args.ledger) / 'README.md'}; check it with `geomopt results check {args.ledger}`")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geomopt results`` and its four actions to the top-level parser."""
    p = sub.add_parser("results", help="the results ledger: file reproductions into it, or recompute and check it")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("check", help="recompute every claim of the ledger from its stored raw numbers; exit 1 "
                                         "when a stored verdict does not follow or a file was edited by hand")
    q.add_argument("ledger", nargs="?", default="results", help="the ledger folder (default: results)")
    q = actions.add_parser("add", help="file every reproduction under RUNS into the ledger (results/<name>/<tier>/) "
                                       "with its provenance, and regenerate the ledger's README.md")
    q.add_argument("runs", help="a folder `geomopt reproduce --out` wrote")
    q.add_argument("--ledger", default="results", help="the ledger folder (default: results)")
    q = actions.add_parser("redecide", help="decide every claim of the ledger anew from its stored raw numbers with "
                                            "the current claim logic (after the rules change; no run is repeated), "
                                            "noting it in each changed entry's provenance")
    q.add_argument("ledger", nargs="?", default="results", help="the ledger folder (default: results)")
    q = actions.add_parser("readme", help="regenerate the ledger's README.md from its entries (e.g. after a merge)")
    q.add_argument("ledger", nargs="?", default="results", help="the ledger folder (default: results)")
    p.set_defaults(func=cmd_results)
