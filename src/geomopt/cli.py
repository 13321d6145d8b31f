"""geomopt: geometry-aware optimizers, generalization measures and paper reproductions from the shell.

Train networks with geometry-aware optimizers (Path-SGD, K-FAC, EKFAC), measure generalization,
prune, explore implicit regularization, and reproduce papers' headline experiments into an HTML report.
Exit codes: 0 ok, 2 bad input (config, files, output folder), 3 diverged run, 4 a process of a data-parallel
run died, stopped answering for --timeout seconds, or could not join (train --nproc N / torchrun), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from geomopt.train.config import TrainConfig, field_hints, parse_text


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``geomopt train: error: argument --lr: ... (see
    geomopt train --help)``, exit code 2 (bad input). Subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag_type(name: str, hint):
    def parse(text: str):
        where = f"--{name.replace('_', '-')}"
        try:
            return parse_text(text, hint, where)
        except ValueError as exc:  # argparse names the flag itself
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{where}: ")) from None
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _choices() -> dict[str, tuple[str, ...]]:
    from geomopt.curvature.capture import FISHERS
    from geomopt.data.registry import DATASETS, SEQUENCE_DATASETS
    from geomopt.nn.init import INITS
    from geomopt.nn.relu_rnn import RNN_INITS
    from geomopt.optim.registry import OPTIMIZERS
    from geomopt.train.run import SCHEDULES
    return {"init": INITS + RNN_INITS, "data": DATASETS + SEQUENCE_DATASETS, "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES, "fisher": tuple(FISHERS)}


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _model_type(text: str) -> str:
    """``--model``: a built-in name or ``MODULE:FACTORY`` (checked for its form here, imported when the run starts)."""
    from geomopt.nn.registry import MODELS, is_factory_reference
    if text in MODELS or is_factory_reference(text):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(MODELS)}, or your own "
                                     "MODULE:FACTORY such as mymodels:small_cnn)")


def _field_help(description: str, default: str) -> str:
    """A TrainConfig field's description and its default (unless the description says what None means)."""
    return description if default == "None" and "(None: " in description else f"{description} (default: {default})"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size``, ``--widths 256,256``, ...), parsed by the config schema;
    its help is the field's description and default."""
    import typing
    from geomopt.nn.registry import MODELS
    choices = _choices()
    for f in dataclasses.fields(TrainConfig):
        hint = field_hints(TrainConfig)[f.name]
        default = _shown(f.default if f.default is not dataclasses.MISSING else f.default_factory())
        extra = {"choices": choices[f.name]} if f.name in choices else {}
        if typing.get_origin(hint) is typing.Literal:
            extra = {"choices": typing.get_args(hint)}
        kind = _flag_type(f.name, hint)
        if f.name == "device":
            extra = {"metavar": "{cpu,cuda,cuda:N,auto}"}
        if f.name == "model":
            extra, kind = {"metavar": "{" + ",".join(MODELS) + "}|MODULE:FACTORY"}, _model_type
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=argparse.SUPPRESS,
                            help=_field_help(f.metadata["help"], default).replace("%", "%%"), **extra)


def _train_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given as flags (``--kl-clip none`` included: absent flags are not in ``args``)."""
    return {f.name: vars(args)[f.name] for f in dataclasses.fields(TrainConfig) if f.name in vars(args)}


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _resume_hint(out: Path, nproc: int | None = None) -> str:
    """How to go on from what ``out`` holds: resume from its checkpoint, or start again."""
    if (out / "checkpoint.pt").is_file():
        procs = f" --nproc {nproc}" if nproc and nproc > 1 else ""
        return f"the last checkpoint in {out} is intact: continue with `geomopt train --resume {out}{procs}`"
    return f"no checkpoint had been written in {out} yet: start the run again (same command)"


def cmd_train(args: argparse.Namespace) -> int:
    from geomopt.train import NonFiniteLossError, train
    from geomopt.train.distributed import EXIT_PROCESS_LOST, LAUNCHED, ProcessLostError, launch, report_lost
    if args.nproc is not None and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: start it
        code, lost = launch(args.nproc, _without_nproc(args.argv))
        if lost is not None:
            print(f"geomopt train: {lost}; {_resume_hint(Path(args.resume or args.out), args.nproc)}", file=sys.stderr)
        return code
    from geomopt.train.config import read_json
    overrides = _train_overrides(args)
    if args.resume:
        out = Path(args.resume)
        if args.config or (args.out is not None and Path(args.out) != out):
            print(f"geomopt train: --resume {out} continues that run with its stored config.json; "
                  "drop --config and --out (a changed config is refused)", file=sys.stderr)
            return 2
        if not (out / "config.json").exists():
            print(f"geomopt train: --resume {out}: no config.json there; nothing to resume", file=sys.stderr)
            return 2
        config = TrainConfig.load(out / "config.json").replace(**overrides)
        source = out / "config.json"
    else:
        if args.out is None:
            print("geomopt train: --out DIR is required (where config.json, metrics.jsonl and the checkpoint go)",
                  file=sys.stderr)
            return 2
        from_file = read_json(args.config, "a TrainConfig JSON file") if args.config else {}
        base = TrainConfig.from_dict(from_file, source=str(args.config)) if args.config else TrainConfig()
        config = base.replace(**overrides)
        out, source = Path(args.out), args.config
    if source is not None:  # a run folder or config file from someone else imports nothing by itself
        from geomopt.nn.factory import check_trusted
        check_trusted(config.model, source)
    try:
        summary = train(config, out, resume=bool(args.resume), overwrite=args.overwrite,
                        progress=not args.no_progress, timeout=args.timeout)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") != "0":  # data-parallel: rank 0 reports
            return 130
        if (out / "checkpoint.pt").is_file():
            print(f"\ninterrupted; {_resume_hint(out, int(os.environ.get('WORLD_SIZE', '1')))}", file=sys.stderr)
        else:
            print(f"\ninterrupted before the first checkpoint was written; nothing in {out} to resume: "
                  "start the run again (same command, or lower --checkpoint-every)", file=sys.stderr)
        return 130
    except NonFiniteLossError as exc:
        print(f"geomopt train: {exc}", file=sys.stderr)
        return 3
    except ProcessLostError as exc:  # data-parallel: another process died, went silent, or could not join
        report_lost(exc)
        if LAUNCHED not in os.environ:  # under `--nproc N` the launcher says it, once
            print(f"geomopt train: {exc}; {_resume_hint(out, exc.world)}", file=sys.stderr)
        return EXIT_PROCESS_LOST
    if os.environ.get("RANK", "0") != "0":  # data-parallel: rank 0 reports
        return 0
    if summary.get("skipped"):
        print(f"{out} already holds this finished run (same config); nothing to do. "
              f"Extend it with `geomopt train --resume {out} --epochs N`, or pass --overwrite to train it again")
    metric = summary["train_acc"] == summary["train_acc"]  # NaN for a regression task (no accuracy): MSE only
    lines = [f"{config.optimizer} on {config.model}/{config.data}: {summary['epochs']} epochs, {summary['steps']} steps, "
             f"{summary['seconds']:.1f} s"]
    for split in ("train", "test"):
        line = f"  {split:5s} loss {summary[f'{split}_loss']:.4f}"
        line += f"  acc {summary[f'{split}_acc']:.4f}" if metric else " (MSE)"
        if f"{split}_bits" in summary:
            line += f"  bits/char {summary[f'{split}_bits']:.4f}" if config.data == "chars" else \
                f"  bits/step {summary[f'{split}_bits']:.4f}"
        lines.append(line)
    lines.append(f"  outputs in {out}")
    print("\n".join(lines))
    return 0


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


def _add_trust_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--trust-config", action="store_true",
                        help=f"import the MODULE:FACTORY model that {what} names (importing runs its code: "
                             "refused unless you trust where the file comes from)")


def _add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """The sweep engine's flags (geomopt.sweep): backend, cluster address, resources, retries, timeout."""
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel trials of the local backend (default: number of CPU cores, at most 4)")
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="local process pool (default) or Ray tasks (pip install 'geomopt[ray]')")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance for the sweep)")
    parser.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs (and torch threads) per trial")
    parser.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial (ray backend)")
    parser.add_argument("--max-retries", type=int, default=2,
                        help="retries of a trial that raises or whose worker dies (default: 2)")
    parser.add_argument("--trial-timeout", type=float, default=None, metavar="SECONDS",
                        help="kill a trial running longer than this and record it as failed")


def _sweep_options(args: argparse.Namespace) -> dict:
    """The sweep flags as :func:`geomopt.sweep.sweep_options` keywords; checks them (and that Ray is
    importable) before any run folder is written."""
    from geomopt.sweep import make_backend
    make_backend(args.backend, workers=args.jobs, address=args.address, cpus_per_trial=args.cpus_per_trial,
                 gpus_per_trial=args.gpus_per_trial)
    if args.max_retries < 0 or (args.trial_timeout is not None and args.trial_timeout <= 0):
        raise ValueError(f"--max-retries must be >= 0 and --trial-timeout > 0, got {args.max_retries}, "
                         f"{args.trial_timeout}")
    return {"backend": args.backend, "workers": args.jobs, "address": args.address,
            "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
            "max_retries": args.max_retries, "trial_timeout": args.trial_timeout}


def _sweep_session(args: argparse.Namespace):
    """One Ray session for all the sweeps of a command with --backend ray (else nothing)."""
    import contextlib
    if args.backend != "ray":
        return contextlib.nullcontext()
    from geomopt.sweep.ray_backend import ray_session
    return ray_session(args.address, args.jobs)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from geomopt.experiments import EXPERIMENTS
    from geomopt.sweep import sweep_options
    from geomopt.train.config import CommandLineText
    try:
        options = _sweep_options(args)
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
    with _sweep_session(args), sweep_options(**options):
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


def cmd_prune(args: argparse.Namespace) -> int:
    from geomopt.runs import prune_run
    record = prune_run(args.run_dir, criterion=args.criterion, target_sparsity=args.sparsity, steps=args.steps,
                       finetune_epochs=args.finetune_epochs, n_examples=args.examples, locality=args.locality,
                       lr=args.lr, out=args.out, compensate=args.compensate, progress=not args.no_progress)
    line = (f"{args.criterion}: sparsity {record['achieved_sparsity']:.4f} in {args.steps} step(s); test acc "
            f"{record['dense_test_acc']:.4f} dense -> {record['pruned_test_acc']:.4f} pruned")
    if "finetuned_test_acc" in record:
        line += f" -> {record['finetuned_test_acc']:.4f} after {args.finetune_epochs} fine-tuning epoch(s)"
    print(line)
    return 0


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


def cmd_zoo(args: argparse.Namespace) -> int:
    from geomopt.experiments.zoo import train_zoo
    try:
        options = _sweep_options(args)
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
            options = _sweep_options(args)
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


def cmd_report(args: argparse.Namespace) -> int:
    from geomopt.report import build_report
    runs = Path(args.results if args.results is not None else args.runs)
    default = Path("runs") / "ledger-report" if args.results is not None else runs / "report"
    path = build_report(runs, Path(args.out) if args.out else default)
    print(f"wrote {path}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from geomopt.experiments import ledger
    if args.action == "check":
        return ledger.main_check(args.ledger)
    for target in ledger.add(args.runs, args.ledger):
        print(f"filed {target}")
    print(f"wrote {Path(args.ledger) / 'README.md'}; check it with `geomopt results check {args.ledger}`")
    return 0


START_HERE = """start here:
  1. make demo                      (once: the Path-SGD reproduction and runs/report/index.html;
                                     then `source .venv/bin/activate` puts geomopt on the PATH)
  2. geomopt train --model mlp --data digits --optimizer path-sgd --epochs 5 --out runs/x
                                    (one network; `geomopt train --help` lists every option)
  3. geomopt reproduce path-sgd --quick --out runs && geomopt report runs
                                    (a paper's headline experiment, then the HTML report)
`geomopt COMMAND --help` explains each command."""


def build_parser() -> argparse.ArgumentParser:
    from geomopt.experiments import EXPERIMENTS
    from geomopt import __version__
    parser = _Parser(prog="geomopt", description=__doc__, epilog=START_HERE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"geomopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one network with the geomopt engine")
    _add_config_flags(p)
    p.add_argument("--out", help="output directory (config.json, metrics.jsonl, checkpoint.pt, summary.json)")
    p.add_argument("--config", help="a JSON file of TrainConfig fields; flags override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint; "
                   "with --epochs N, train a finished run on to N epochs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different run already in --out (refused otherwise; the same config resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_trust_flag(p, "the --config file or the --resume folder's config.json")
    p.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes on this machine (runs torchrun --standalone --nproc-per-node N)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="data-parallel: seconds a collective (and joining) waits for the other processes; past "
                        "it the run stops with exit code 4 (default: 300)")
    p.set_defaults(func=cmd_train)

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
    _add_sweep_flags(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("prune", help="prune a trained run by a loss-model criterion, then fine-tune with the mask")
    p.add_argument("run_dir", help="a `geomopt train` output directory (config.json, checkpoint.pt)")
    p.add_argument("--criterion", default="qm", choices=["mp", "lm", "qm", "obd", "kobs"],
                   help="kobs: Optimal Brain Surgeon with K-FAC factors (Linear layers)")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of Linear/Conv weights to remove")
    p.add_argument("--steps", type=int, default=1, help="pruning steps (scores recomputed on the masked net)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="epochs of training with the pruning mask after pruning (default: 0, none)")
    p.add_argument("--examples", type=int, default=1000, help="examples to estimate gradient and curvature on")
    p.add_argument("--locality", type=float, default=0.0, help="lambda of the 0.5 lambda theta^2 penalty")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the run's)")
    p.add_argument("--compensate", action="store_true",
                   help="kobs: apply the OBS compensating update (sum of single-weight updates) after each step")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/prune-CRITERION-SPARSITY-STEPS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_trust_flag(p, "RUN_DIR's config.json")
    p.set_defaults(func=cmd_prune)

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
    _add_trust_flag(p, "RUN_DIR's config.json")
    p.set_defaults(func=cmd_measure)

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
    _add_trust_flag(p, "RUN_DIR's config.json")
    p.set_defaults(func=cmd_curvature)

    p = sub.add_parser("zoo", help="train a grid of small networks (a model zoo) from a TOML file")
    p.add_argument("--grid", required=True, help="zoo.toml with [base], [grid] and optional [measure] tables")
    p.add_argument("--out", default="runs/zoo", help="zoo directory (default: runs/zoo)")
    p.add_argument("--overwrite", action="store_true", help="retrain run folders that hold a different run")
    p.add_argument("--no-measures", action="store_true", help="do not compute measures.json in each trial")
    p.add_argument("--no-checkpoints", action="store_true",
                   help="do not bring the final checkpoints back (less data; measures cannot be recomputed)")
    _add_trust_flag(p, "the grid file")
    _add_sweep_flags(p)
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
    _add_trust_flag(p, "a run's config.json (with --recompute)")
    _add_sweep_flags(p)
    p.set_defaults(func=cmd_correlate)

    from geomopt.implicit.cli import add_implicit_parser
    add_implicit_parser(sub)  # geomopt implicit sensing | completion | deep-linear

    p = sub.add_parser("report", help="build the self-contained HTML report from a runs directory")
    p.add_argument("runs", nargs="?", default="runs",
                   help="the folder `geomopt reproduce --out` wrote (its reproductions' sections and claims; default: runs)")
    p.add_argument("--results", nargs="?", const="results", default=None, metavar="LEDGER",
                   help="render the results ledger instead (default folder: results; report in runs/ledger-report)")
    p.add_argument("--out", help="report directory (default: RUNS/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("results", help="the results ledger: file reproductions into it, or recompute and check it")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("check", help="recompute every claim of the ledger from its stored raw numbers; exit 1 "
                                         "when a stored verdict does not follow or a file was edited by hand")
    q.add_argument("ledger", nargs="?", default="results", help="the ledger folder (default: results)")
    q = actions.add_parser("add", help="file every reproduction under RUNS into the ledger (results/<name>/<tier>/) "
                                       "with its provenance, and regenerate the ledger's README.md")
    q.add_argument("runs", help="a folder `geomopt reproduce --out` wrote")
    q.add_argument("--ledger", default="results", help="the ledger folder (default: results)")
    p.set_defaults(func=cmd_results)
    return parser


def main(argv: list[str] | None = None) -> int:
    from geomopt.nn.factory import trusted_models
    from geomopt.sweep import SweepError
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        with trusted_models(*([args.model] if "model" in vars(args) else []),  # typed here: the user's own
                            everything=getattr(args, "trust_config", False)):
            return args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C: the sweeps have stopped their workers and stored finished trials
        detail = str(exc) or "interrupted; what was finished is kept: run the same command again to continue"
        print(f"\ngeomopt {args.command}: {detail}", file=sys.stderr)
        return 130
    except (ValueError, ImportError, OSError) as exc:  # bad input, a missing optional package, a file system error
        if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, FileNotFoundError):
            exc = f"cannot use {exc.filename}: {exc.strerror}"
        print(f"geomopt {args.command}: {exc}", file=sys.stderr)
        return 2
    except SweepError as exc:
        print(f"geomopt {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
