"""What several subcommands share: the one-line-error parser, the --trust-config flag and the sweep engine's flags."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``geomopt train: error: argument --lr: ... (see
    geomopt train --help)``, exit code 2 (bad input). Subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_trust_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--trust-config", action="store_true",
                        help=f"import the MODULE:FACTORY model that {what} names (importing runs its code: "
                             "refused unless you trust where the file comes from)")


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
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


def parse_sweep_flags(args: argparse.Namespace) -> dict:
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


def sweep_session(args: argparse.Namespace):
    """One Ray session for all the sweeps of a command with --backend ray (else nothing)."""
    import contextlib
    if args.backend != "ray":
        return contextlib.nullcontext()
    from geomopt.sweep.ray_backend import ray_session
    return ray_session(args.address, args.jobs)
