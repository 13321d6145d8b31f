"""geomopt: geometry-aware optimizers, generalization measures and paper reproductions from the shell.

Train networks with geometry-aware optimizers (Path-SGD, K-FAC, EKFAC), measure generalization,
prune, explore implicit regularization, and reproduce papers' headline experiments into an HTML report.
Exit codes: 0 ok, 2 bad input (config, files, output folder), 3 diverged run, 4 a process of a data-parallel
run died, stopped answering for --timeout seconds, or could not join (train --nproc N / torchrun), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from geomopt.cli import curvature, implicit, measure, prune, report, reproduce, results, train, zoo
from geomopt.cli.common import Parser

# the subcommands in the order ``geomopt --help`` lists them; each module registers its own parser(s)
COMMANDS = (train, reproduce, prune, measure, curvature, zoo, implicit, report, results)

START_HERE = """start here:
  1. make demo                      (once: the Path-SGD reproduction and runs/report/index.html;
                                     then `source .venv/bin/activate` puts geomopt on the PATH)
  2. geomopt train --model mlp --data digits --optimizer path-sgd --epochs 5 --out runs/x
                                    (one network; `geomopt train --help` lists every option)
  3. geomopt reproduce path-sgd --quick --out runs && geomopt report runs
                                    (a paper's headline experiment, then the HTML report)
`geomopt COMMAND --help` explains each command."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``--version``, and each subcommand module's ``register``."""
    from geomopt import __version__
    parser = Parser(prog="geomopt", description=__doc__, epilog=START_HERE,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"geomopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
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

