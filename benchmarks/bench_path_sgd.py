"""Step time of PathSGD relative to SGD, side by side in one process.

A "step" is what a training loop pays per minibatch: zero_grad, forward, cross-entropy,
backward and optimizer.step(). The contenders alternate step by step on the same model
(so drift of the machine affects both alike) and the median over many steps is reported.

Contenders:
- sgd: torch.optim.SGD;
- path-sgd: geomopt.optim.PathSGD (rank-one factored scales for an MLP);
- path-sgd (generic): PathSGD with the generic squared-network autograd pass and dense gamma,
  i.e. the plain implementation; for a CNN this is the only path.

Usage: python benchmarks/bench_path_sgd.py [--device cpu|cuda] [--steps 30] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from geomopt.geometry import PathScales
from geomopt.nn import CNN, MLP
from geomopt.optim import PathSGD

from machine import describe_machine


def make_optimizer(kind: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    opt = PathSGD(model, lr=lr)
    if kind == "path-sgd (generic)":
        opt.scales = PathScales(model, factored=False)
    return opt


def bench(build, input_shape, batch: int, steps: int, device: torch.device, kinds: list[str]) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(batch, *input_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    models = {k: build().to(device) for k in kinds}
    opts = {k: make_optimizer(k, models[k], 1e-4) for k in kinds}
    times: dict[str, list[float]] = {k: [] for k in kinds}

    def step(k: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        opts[k].zero_grad(set_to_none=True)
        nn.functional.cross_entropy(models[k](x), y).backward()
        opts[k].step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for k in kinds:  # warm-up: allocations, buffers
        for _ in range(3):
            step(k)
    for _ in range(steps):
        for k in kinds:
            times[k].append(step(k))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {describe_machine(device)}")
    cases = [
        ("MLP 784-4000-4000-10, batch 100", lambda: MLP((784,), (4000, 4000), 10), (784,), 100,
         ["sgd", "path-sgd", "path-sgd (generic)"]),
        ("CNN 1x28x28, conv 32-64 + pool, fc 10, batch 100", lambda: CNN((1, 28, 28), (32, 64), 10), (1, 28, 28), 100,
         ["sgd", "path-sgd"]),
    ]
    print("| model | contender | median step (ms) | ratio to SGD |")
    print("|---|---|---|---|")
    for name, build, shape, batch, kinds in cases:
        med = bench(build, shape, batch, args.steps, device, kinds)
        for k in kinds:
            print(f"| {name} | {k} | {1e3 * med[k]:.2f} | {med[k] / med['sgd']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
