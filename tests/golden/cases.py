"""Fixed-seed ``geomopt train`` runs whose metrics must not change when the code is restructured.

``python -m tests.golden.cases`` (from the repository root) rewrites ``metrics.json`` from the current
code: do that only for a change that is meant to change the numbers, and say so in the commit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).with_name("metrics.json")
COMMON = ["--data", "digits", "--train-size", "240", "--batch-size", "40", "--epochs", "2",
          "--seed", "3", "--no-progress"]
MLP = ["--widths", "24,24"]
CASES: dict[str, list[str]] = {
    "sgd": MLP + ["--optimizer", "sgd", "--lr", "0.1"],
    "momentum-wd-cosine": MLP + ["--optimizer", "momentum", "--lr", "0.05", "--weight-decay", "1e-3",
                                 "--schedule", "cosine"],
    "adam": MLP + ["--optimizer", "adam", "--lr", "0.003"],
    "adagrad-clip": MLP + ["--optimizer", "adagrad", "--lr", "0.05", "--max-grad-norm", "1.0"],
    "path-sgd": MLP + ["--optimizer", "path-sgd", "--lr", "0.05"],
    "path-sgd-unbalanced-momentum": MLP + ["--optimizer", "path-sgd", "--lr", "0.05", "--momentum", "0.9",
                                           "--init", "unbalanced", "--weight-decay", "1e-4"],
    "path-sgd-first-step": MLP + ["--optimizer", "path-sgd-first-step", "--lr", "0.05"],
    "kfac": MLP + ["--optimizer", "kfac", "--lr", "0.05"],
    "kfac-true-fisher": MLP + ["--optimizer", "kfac", "--lr", "0.05", "--fisher", "true",
                               "--update-freq", "2", "--inv-freq", "3"],
    "kfac-ggn-klclip": MLP + ["--optimizer", "kfac", "--lr", "0.05", "--fisher", "ggn", "--kl-clip", "0.001",
                              "--momentum", "0.9", "--weight-decay", "1e-4"],
    "kfac-adaptive": MLP + ["--optimizer", "kfac", "--lr", "0.05", "--adaptive-damping", "true",
                            "--adaptive-step", "true"],
    "ekfac": MLP + ["--optimizer", "ekfac", "--lr", "0.05"],
    "ekfac-diag-adaptive": MLP + ["--optimizer", "ekfac", "--lr", "0.05", "--diag-freq", "2",
                                  "--inv-freq", "4", "--adaptive-damping", "true"],
    "cnn-kfac": ["--model", "cnn", "--widths", "4,8", "--optimizer", "kfac", "--lr", "0.05"],
    "cnn-path-sgd": ["--model", "cnn", "--widths", "4,8", "--optimizer", "path-sgd", "--lr", "0.05"],
    "sgd-sharpness-mse": MLP + ["--optimizer", "sgd", "--lr", "0.05", "--loss", "mse",
                                "--track-sharpness", "3", "--sharpness-examples", "64"],
    "relu-rnn-path-sgd": ["--model", "relu-rnn", "--data", "rows-digits", "--widths", "16", "--init", "irnn",
                          "--optimizer", "path-sgd", "--lr", "0.01"],
    "relu-rnn-path-sgd-k12-first-step": ["--model", "relu-rnn", "--data", "rows-digits", "--widths", "16",
                                         "--init", "irnn", "--optimizer", "path-sgd-k12-first-step",
                                         "--lr", "0.01"],
    "bnlstm-sgd": ["--model", "bnlstm", "--data", "rows-digits", "--widths", "16", "--optimizer", "sgd",
                   "--lr", "0.1"],
    "urnn-adam": ["--model", "urnn", "--data", "rows-digits", "--widths", "16", "--optimizer", "adam",
                  "--lr", "0.003"],
}


def fingerprint() -> dict[str, str]:
    """What must match for the stored numbers to be reproduced bit for bit."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def run_case(name: str, out: Path) -> list[dict]:
    """The metrics records of case ``name`` (without wall times), trained in-process into ``out``."""
    from geomopt.cli import main

    args = COMMON + CASES[name]
    code = main(["train", *args, "--out", str(out)])
    if code != 0:
        raise RuntimeError(f"golden case {name}: geomopt train exited {code}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    return [{k: v for k, v in r.items() if k not in ("time", "wall", "seconds")} for r in records]


def write_golden(directory: Path) -> None:
    torch.set_num_threads(1)
    data = {"fingerprint": fingerprint(),
            "cases": {name: run_case(name, directory / name) for name in CASES}}
    GOLDEN.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        write_golden(Path(tmp))
    print(f"wrote {GOLDEN}", file=sys.stderr)
