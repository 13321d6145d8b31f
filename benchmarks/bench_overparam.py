"""Cost of `geomopt reproduce overparametrization`'s full protocol, from measured step times.

Times one SGD-momentum step (batch 64, one torch thread, as a sweep trial runs) of the two-layer
ReLU net ``x -> V relu(U x + b) + c`` at every width of the full protocol, for MNIST (784 inputs,
60,000 examples) and CIFAR-10 (3,072 inputs, 50,000 examples) shapes on random data, then prints
what the full protocol costs: runs = widths x seeds x label-noise levels per dataset, each
``--epochs`` epochs (the protocol stops a run at training cross-entropy 0.01, at most 1000 epochs:
small widths never get there and run the whole budget), on one machine with ``--slots`` one-core
trial slots and on a Ray cluster of ``--nodes`` x ``--cores`` slots, plus the per-trial overhead
measured by bench_sweep.py (``--overhead``, seconds).

Usage: python benchmarks/bench_overparam.py [--epochs 100] [--seeds 5] [--noises 2] [--steps 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from machine import describe_machine

DATASETS = {"mnist": (784, 60_000), "cifar10": (3072, 50_000)}
WIDTHS = [2 ** k for k in range(2, 14)]


def step_time(d: int, width: int, steps: int, batch: int = 64) -> float:
    """Median seconds of one SGD-momentum step of the two-layer net (d -> width -> 10)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, 10))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(batch, d), torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run assumed for the estimate")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--noises", type=int, default=2, help="label-noise levels per dataset")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per width")
    parser.add_argument("--slots", type=int, default=2, help="one-core trial slots of the single machine")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument("--overhead", type=float, default=0.034, help="per-trial overhead of the sweep (s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {describe_machine()}")
    print("| dataset | H | step (ms) | one run, hours |")
    print("|---|---|---|---|")
    total_runs, total_seconds, longest = 0, 0.0, 0.0
    for name, (d, m) in DATASETS.items():
        steps_per_epoch = math.ceil(m / 64)
        for width in WIDTHS:
            t = step_time(d, width, args.steps)
            run = t * steps_per_epoch * args.epochs
            longest = max(longest, run)
            runs = args.seeds * args.noises
            total_runs += runs
            total_seconds += runs * (run + args.overhead)
            print(f"| {name} | {width} | {1e3 * t:.2f} | {run / 3600:.2f} |", flush=True)
    slots = args.nodes * args.cores
    one_machine = total_seconds / args.slots
    # a cluster cannot finish before its longest run; with more slots than runs every run has its own
    cluster = max(total_seconds / slots, longest)
    print(f"\nfull protocol: {total_runs} runs x {args.epochs} epochs = {total_seconds / 3600:.1f} CPU-hours")
    print(f"one machine, {args.slots} slots: {one_machine / 3600:.1f} h ({one_machine / 86400:.1f} days)")
    print(f"Ray, {args.nodes} nodes x {args.cores} cores ({slots} slots): {cluster / 3600:.2f} h "
          f"(bounded below by the longest run, {longest / 3600:.2f} h)")


if __name__ == "__main__":
    main()
