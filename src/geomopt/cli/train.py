"""``geomopt train``: one network with the geomopt engine; one flag per :class:`TrainConfig` field."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from geomopt.cli.common import add_trust_flag
from geomopt.train.config import TrainConfig, field_hints, parse_text


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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geomopt train`` to the top-level parser."""
    p = sub.add_parser("train", help="train one network with the geomopt engine")
    _add_config_flags(p)
    p.add_argument("--out", help="output directory (config.json, metrics.jsonl, checkpoint.pt, summary.json)")
    p.add_argument("--config", help="a JSON file of TrainConfig fields; flags override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint; "
                   "with --epochs N, train a finished run on to N epochs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different run already in --out (refused otherwise; the same config resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_trust_flag(p, "the --config file or the --resume folder's config.json")
    p.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes on this machine (runs torchrun --standalone --nproc-per-node N)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="data-parallel: seconds a collective (and joining) waits for the other processes; past "
                        "it the run stops with exit code 4 (default: 300)")
    p.set_defaults(func=cmd_train)
