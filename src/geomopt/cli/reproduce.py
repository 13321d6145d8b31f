"""``geomopt reproduce NAME``: one paper's headline experiment (or all), its report section and claims; ``--ladder`` runs it along a scale ladder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geomopt.cli.common import add_sweep_flags, parse_sweep_flags, sweep_session


def _reproduce_one(name: str, args: argparse.Namespace, overrides: dict) -> Path:
    import inspect

    import time

    from geomopt.experiments import EXPERIMENTS
    from geomopt.experiments.ledger import write_provenance
    from geomopt.report.html import print_section
    experiment = EXPERIMENTS[name]
    tier = "quick" if args.quick else args.tier
    kwargs = {"jobs": args.jobs, "overrides": dict(overrides), "overwrite": args.overwrite}
    if "tier" in inspect.signature(experiment.reproduce).parameters:
        kwargs["tier"] = tier
    elif tier == "mid":
        raise ValueError(f"{name}: no 'mid' tier is defined for this reproduction (tiers: quick, full)")
    else:
        kwargs["quick"] = tier == "quick"
    if "seeds" in inspect.signature(experiment.reproduce).parameters:
        kwargs["seeds"] = args.seeds
    elif args.seeds is not None:  # an experiment not yet on the multi-seed protocol: its config's seeds field
        kwargs["overrides"].setdefault("seeds", list(range(args.seeds)))
    started = time.time()
    section = experiment.reproduce(Path(args.out), **kwargs)
    write_provenance(Path(section).parent, args.argv, started, time.time() - started)
    print_section(section)
    print(f"wrote {section}")
    return section


def _ladder(name: str, args: argparse.Namespace, overrides: dict) -> Path:
    """``reproduce NAME --ladder FIELD=[v1, v2, v3]``: the reproduction at each value (geomopt.experiments.ladder)."""
    import json

    from geomopt.experiments.ladder import run_ladder
    field, sep, text = args.ladder.partition("=")
    try:
        values = json.loads(text) if sep else None
    except json.JSONDecodeError:
        values = None
    if not isinstance(values, list) or field.strip() in overrides:
        raise ValueError(f"--ladder expects FIELD=[v1, v2, v3] (a JSON list) of a field not also given by --set, "
                         f"got {args.ladder!r}")

    def one(rung_dir: Path, value) -> Path:
        rung = argparse.Namespace(**{**vars(args), "out": str(rung_dir)})
        return _reproduce_one(name, rung, {**overrides, field.strip(): value})
    return run_ladder(name, field.strip(), values, Path(args.out), one)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from geomopt.experiments import EXPERIMENTS
    from geomopt.sweep import sweep_options
    from geomopt.train.config import CommandLineText
    try:
        options = parse_sweep_flags(args)
    except RuntimeError as exc:
        print(f"geomopt reproduce: {exc}", file=sys.stderr)
        return 2
    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"geomopt reproduce: --set expects key=value, got {item!r}", file=sys.stderr)
            return 2
        overrides[key.strip()] = CommandLineText(value)
    if args.ladder is not None and args.name == "all":
        print("geomopt reproduce all: --ladder applies to one experiment; run that experiment alone", file=sys.stderr)
        return 2
    with sweep_session(args), sweep_options(**options):
        if args.ladder is not None:
            section = _ladder(args.name, args, overrides)
            print(f"wrote {section}; build the HTML report with `geomopt report {args.out}`")
            return 0
        if args.name != "all":
            _reproduce_one(args.name, args, overrides)
            print(f"build the HTML report with `geomopt report {args.out}`")
            return 0
        if overrides:
            print("geomopt reproduce all: --set applies to one experiment's config; run that experiment alone",
                  file=sys.stderr)
            return 2
        failed = []
        for name in EXPERIMENTS:  # every reproduction in turn; one that fails does not stop the others
            try:
                _reproduce_one(name, args, overrides)
            except Exception as exc:  # noqa: BLE001  (reported, and the exit code says so)
                failed.append(name)
                print(f"geomopt reproduce all: {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"{len(EXPERIMENTS) - len(failed)}/{len(EXPERIMENTS)} reproductions done"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; next: geomopt report {args.out}")
    _print_verdict_counts(Path(args.out))
    return 1 if failed else 0


def _print_verdict_counts(runs: Path) -> None:
    """One line per verdict over every claims.json under ``runs``, each inconclusive claim with what would decide it."""
    from geomopt.sweep.claims import INCONCLUSIVE, count_verdicts, read_claims
    claims = [(r["experiment"], c) for r, _ in read_claims(runs) for c in r["claims"]]
    counts = count_verdicts([c for _, c in claims])
    print(f"{len(claims)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    for name, c in claims:
        if c["verdict"] == INCONCLUSIVE:
            print(f"  inconclusive: {name}/{c['id']}: {c['why']}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geomopt reproduce`` to the top-level parser (its choices are the registered experiments)."""
    from geomopt.experiments import EXPERIMENTS
    p = sub.add_parser("reproduce", help="run one paper's headline experiment and write its report section")
    p.add_argument("name", choices=sorted(EXPERIMENTS) + ["all"], help="a reproduction, or all of them in turn")
    p.add_argument("--tier", choices=["quick", "mid", "full"], default="full",
                   help="protocol tier: quick (CI-sized, embedded data, minutes), mid (real data, up to about "
                        "45 minutes per reproduction on 2 cores), full (the paper's own protocol; default)")
    p.add_argument("--quick", action="store_true", help="the same as --tier quick")
    p.add_argument("--ladder", metavar="FIELD=[V1,V2,V3]",
                   help="a scale ladder: run the reproduction at each value of one config field (3 or more, a JSON "
                        "list) and plot each claim's effect against it (OUT/NAME-ladder-FIELD)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 (default: 3 with --quick, 5 in the full protocol); tables and claims "
                        "give the mean and 95%% interval over them")
    p.add_argument("--out", default="runs", help="runs directory (default: runs)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain run folders that hold a different run (refused otherwise; finished rows are kept)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override an experiment config field (JSON or plain text: epochs=3, datasets=digits,mnist1d)")
    add_sweep_flags(p)
    p.set_defaults(func=cmd_reproduce)
