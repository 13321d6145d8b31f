"""Step time of RNN-Path (PathSGD on a ReLU RNN) relative to SGD, and our ReLU RNN vs torch.nn.RNN.

Side by side in one process, contenders alternating step by step, medians reported.

1. Optimizer step ratio: a "step" = zero_grad + forward + MSE + backward + optimizer.step() of the
   100-unit ReLU RNN on adding-problem batches (batch 16) at T = 100, 400, 750:
   - sgd: torch.optim.SGD;
   - rnn-path: geomopt.optim.PathSGD (kappa1 by doubling, the default);
   - rnn-path (autograd): kappa1 by the plain squared unrolled network (one batch-1 forward/backward
     over T steps), the reference implementation.
2. Model speed: forward + backward (no optimizer) of geomopt.nn.ReLURNN against
   torch.nn.RNN(nonlinearity='relu', batch_first=True) + the same Linear read-out, same sizes.
3. With --bnlstm: training steps per second (forward + backward) of geomopt.nn.BNLSTM against
   torch.nn.LSTM (fused kernels) at hidden 100 and 1000, T = 100 and 784, batch --batch.

Usage: python benchmarks/bench_rnn.py [--steps 20] [--threads N] [--lengths 100,400,750] [--bnlstm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from geomopt.data.sequences import adding_problem
from geomopt.geometry import RNNPathScales
from geomopt.nn import ReLURNN
from geomopt.optim import PathSGD

from machine import describe_machine


class TorchRNN(nn.Module):
    """torch.nn.RNN(relu) + Linear read-out of the last state: the reference for our model's speed."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, nonlinearity="relu", batch_first=True)
        self.output = nn.Linear(hidden, d_out)

    def forward(self, x):
        hs, _ = self.rnn(x)
        return self.output(hs[:, -1])


def make_optimizer(kind: str, model: nn.Module, T: int) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-6)
    opt = PathSGD(model, lr=1e-9, seq_len=T)
    if kind == "rnn-path (autograd)":
        opt.scales = RNNPathScales(model, T, method="autograd")
    return opt


def bench_steps(T: int, batch: int, steps: int, kinds: list[str]) -> dict[str, tuple[float, float]]:
    """Median (whole step, optimizer.step() alone) in seconds per contender."""
    x, y = adding_problem(batch, T, 0)
    models = {k: ReLURNN(2, 100, 1, init="irnn", seed=0) for k in kinds}
    opts = {k: make_optimizer(k, models[k], T) for k in kinds}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    opt_times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(steps + 3):
        for k in kinds:
            t0 = time.perf_counter()
            opts[k].zero_grad(set_to_none=True)
            F.mse_loss(models[k](x), y).backward()
            t1 = time.perf_counter()
            opts[k].step()
            t2 = time.perf_counter()
            if i >= 3:
                times[k].append(t2 - t0)
                opt_times[k].append(t2 - t1)
    return {k: (statistics.median(times[k]), statistics.median(opt_times[k])) for k in kinds}


def bench_models(T: int, batch: int, steps: int) -> dict[str, float]:
    x, y = adding_problem(batch, T, 0)
    models = {"geomopt ReLURNN": ReLURNN(2, 100, 1, init="irnn", seed=0), "torch.nn.RNN(relu)": TorchRNN(2, 100, 1)}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(steps + 3):
        for k, m in models.items():
            t0 = time.perf_counter()
            m.zero_grad(set_to_none=True)
            F.mse_loss(m(x), y).backward()
            if i >= 3:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_bnlstm(hidden: int, T: int, batch: int, steps: int) -> dict[str, float]:
    """Median forward+backward seconds of BNLSTM and torch.nn.LSTM, alternating."""
    from geomopt.nn import BNLSTM
    torch.manual_seed(0)
    x = torch.randn(batch, T, 1)
    models = {"BNLSTM": BNLSTM(1, hidden, max_steps=T), "torch.nn.LSTM": nn.LSTM(1, hidden, batch_first=True)}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(steps + 1):
        for k, m in models.items():
            t0 = time.perf_counter()
            out, _ = m(x)
            out[:, -1].sum().backward()
            if i:  # first round is warm-up
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lengths", default="100,400,750")
    parser.add_argument("--bnlstm", action="store_true", help="only the BN-LSTM vs torch.nn.LSTM comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(t) for t in args.lengths.split(",")]
    print(f"Machine: {describe_machine()}")
    if args.bnlstm:
        print(f"\n| hidden | T | model | median forward+backward (ms) | steps/s | ratio to torch.nn.LSTM |"
              "\n|---|---|---|---|---|---|")
        for hidden in (100, 1000):
            for T in (100, 784):
                med = bench_bnlstm(hidden, T, args.batch, args.steps)
                for k, v in med.items():
                    print(f"| {hidden} | {T} | {k} | {1e3 * v:.1f} | {1 / v:.2f} | {v / med['torch.nn.LSTM']:.2f} |",
                          flush=True)
        print(f"\n1-min load average at end {os.getloadavg()[0]:.2f}")
        return
    print(f"\n| T | contender | median step (ms) | ratio to SGD | of which optimizer.step() (ms) |\n|---|---|---|---|---|")
    kinds = ["sgd", "rnn-path", "rnn-path (autograd)"]
    for T in lengths:
        med = bench_steps(T, args.batch, args.steps, kinds)
        for k in kinds:
            ratio = med[k][0] / med["sgd"][0]
            bold = f"**{ratio:.3f}**" if k == "rnn-path" else f"{ratio:.3f}"
            print(f"| {T} | {k} | {1e3 * med[k][0]:.2f} | {bold} | {1e3 * med[k][1]:.3f} |", flush=True)
    print(f"\n| T | model | median forward+backward (ms) | steps/s | ratio to torch.nn.RNN |\n|---|---|---|---|---|")
    for T in lengths:
        med = bench_models(T, args.batch, args.steps)
        for k, v in med.items():
            print(f"| {T} | {k} | {1e3 * v:.2f} | {1 / v:.1f} | {v / med['torch.nn.RNN(relu)']:.3f} |", flush=True)
    print(f"\n1-min load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
