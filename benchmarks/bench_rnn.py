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
3. With --bnlstm (only this part): forward + backward of geomopt.nn.BNLSTM (fused, C gate kernels) against
   torch.nn.LSTM (oneDNN kernels, no normalization) at hidden 100 and 1000, T = 100 and 784, batch 16
   and 64 (--steps repetitions at T <= 100, --long-steps beyond), with the time of the matrix
   products alone (the floor of any step-by-step LSTM) and, with --reference, the step-by-step
   BNLSTM; the ATen kernels per time step of each (torch.profiler); then geomopt.nn.UnitaryRNN beside
   geomopt.nn.ReLURNN at hidden 100 and 512 (adding problem, T = 100, batch 16). Min / median / max.
   ``--device cuda``: the BN-LSTM table on the GPU (fused ATen loop, no C kernels, against cuDNN's LSTM;
   each time taken after ``torch.cuda.synchronize``: read the wall columns).

Usage: python benchmarks/bench_rnn.py [--steps 20] [--threads N] [--lengths 100,400,750]
       python benchmarks/bench_rnn.py --bnlstm [--steps 5] [--long-steps 2] [--hidden 100,1000]
              [--bn-lengths 100,784] [--batches 16,64] [--reference] [--aten-gates] [--device cuda --no-urnn]
       python benchmarks/bench_rnn.py --bnlstm --breakdown [--bn-lengths 100,784] [--steps 5]
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


VIEW_OPS = {"aten::" + n for n in ("as_strided", "select", "slice", "unbind", "view", "transpose", "t", "expand",
                                     "unsqueeze", "chunk", "split", "reshape", "_reshape_alias", "alias", "detach",
                                     "empty", "empty_like", "empty_strided", "lift_fresh", "resolve_conj", "resolve_neg",
                                     "permute", "contiguous", "numpy_T", "squeeze", "narrow", "result_type")}


def launches_per_step(model: nn.Module, x: torch.Tensor) -> float:
    """Top-level ATen operations (kernels; views and allocations not counted) of one forward + backward,
    per time step, counted by torch.profiler."""
    from torch.profiler import profile
    with profile() as prof:
        out, _ = model(x)
        out[:, -1].sum().backward()
    ops = 0
    for e in prof.events():
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        ops += e.name.startswith("aten::") and e.name not in VIEW_OPS and parent is None
    model.zero_grad(set_to_none=True)
    return ops / x.shape[1]


def clocks(device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """(wall, CPU time of this process): on a shared, oversubscribed machine the CPU time leaves out
    the time spent waiting for a core (with one torch thread it is the work done). On CUDA, after the
    device has finished the work queued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float], device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    now = clocks(device)
    return now[0] - start[0], now[1] - start[1]


def matmul_floor(hidden: int, T: int, batch: int, device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """(wall, CPU) seconds of the matrix products any step-by-step LSTM runs (forward W_h h, backward dh), no other work."""
    h, w = torch.randn(batch, hidden, device=device), torch.randn(4 * hidden, hidden, device=device)
    d = torch.randn(batch, 4 * hidden, device=device)
    start = clocks(device)
    for _ in range(T):
        torch.mm(h, w.t())
        torch.mm(d, w)
    torch.mm(d.t(), h)  # the weight gradient, once per sequence in the fused BN-LSTM (T times smaller here)
    return since(start, device)


def bench_bnlstm(hidden: int, T: int, batch: int, reps: int, reference: bool, compile: bool,
                 aten_gates: bool = False, device: torch.device = torch.device("cpu")
                 ) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of forward + backward of BNLSTM (fused; C gate kernels where they compile),
    torch.nn.LSTM, the matmul floor and, with ``reference``, the step-by-step BNLSTM, with ``compile``
    BNLSTM(compile=True), with ``aten_gates`` BNLSTM(native=False) (no C kernels); contenders
    alternate, after one short warm-up pass each (which compiles)."""
    from geomopt.nn import BNLSTM
    torch.manual_seed(0)
    x = torch.randn(batch, T, 1, device=device)
    models = {"BNLSTM": BNLSTM(1, hidden, max_steps=T), "torch.nn.LSTM": nn.LSTM(1, hidden, batch_first=True)}
    if reference:
        models["BNLSTM step-by-step"] = BNLSTM(1, hidden, max_steps=T, fused=False)
    if aten_gates:
        models["BNLSTM ATen gates"] = BNLSTM(1, hidden, max_steps=T, native=False)
    if compile:
        models["BNLSTM compile=True"] = BNLSTM(1, hidden, max_steps=T, compile=True)
    models = {k: m.to(device) for k, m in models.items()}
    for k, m in models.items():
        t0 = time.perf_counter()
        out, _ = m(x[:, :10])
        out[:, -1].sum().backward()
        if k == "BNLSTM compile=True" and time.perf_counter() - t0 > 1:
            print(f"(torch.compile of the step functions: {time.perf_counter() - t0:.0f} s)", flush=True)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in [*models, "matmul floor"]}
    for _ in range(reps):
        for k, m in models.items():
            m.zero_grad(set_to_none=True)
            start = clocks(device)
            out, _ = m(x)
            out[:, -1].sum().backward()
            times[k].append(since(start, device))
        times["matmul floor"].append(matmul_floor(hidden, T, batch, device))
    return times


def bench_urnn(hidden: int, T: int, batch: int, reps: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of forward + MSE + backward of UnitaryRNN and ReLURNN (same hidden size,
    adding problem), alternating."""
    from geomopt.nn import UnitaryRNN
    x, y = adding_problem(batch, T, 0)
    models = {"ReLURNN": ReLURNN(2, hidden, 1, seed=0), "UnitaryRNN": UnitaryRNN(2, hidden, 1, seed=0)}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    for i in range(reps + 1):
        for k, m in models.items():
            m.zero_grad(set_to_none=True)
            start = clocks()
            F.mse_loss(m(x), y).backward()
            if i:  # the first round is warm-up
                times[k].append(since(start))
    return times


def print_rows(config: str, times: dict[str, list[tuple[float, float]]], ref: str, bold: str) -> None:
    """Wall and CPU min / median / max, and the wall and CPU medians over the reference's."""
    wall = {k: [w for w, _ in v] for k, v in times.items()}
    cpu = {k: [c for _, c in v] for k, v in times.items()}
    ref_wall, ref_cpu = statistics.median(wall[ref]), statistics.median(cpu[ref])
    for k in times:
        w, c = statistics.median(wall[k]), statistics.median(cpu[k])
        ratio = f"**{c / ref_cpu:.2f}**" if k == bold else f"{c / ref_cpu:.2f}"
        print(f"| {config} | {k} | {1e3 * min(wall[k]):.1f} | {1e3 * w:.1f} | {1e3 * max(wall[k]):.1f} | "
              f"{1e3 * min(cpu[k]):.1f} | {1e3 * c:.1f} | {1e3 * max(cpu[k]):.1f} | {w / ref_wall:.2f} | {ratio} |",
              flush=True)


HEADER = ("| {} | contender | wall min (ms) | wall median (ms) | wall max (ms) | CPU min (ms) | CPU median (ms) | "
          "CPU max (ms) | wall ratio | CPU ratio |\n|---|---|---|---|---|---|---|---|---|---|")


def breakdown(T: int, batch: int, reps: int) -> None:
    """Where a BNLSTM training step goes (hidden 100, per time step, thread CPU time, medians over ``reps``):
    before the fused Function (input terms ``BN(W_x x) + b`` of all steps, plans), its forward, between
    (loss, gradient materialization), its backward, after it (input-term backward, parameter gradients);
    then the ATen operations inside the Function by torch.profiler (self CPU per time step; the profiler
    adds its own overhead to each call, so these are relative weights)."""
    from torch.profiler import profile

    from geomopt.nn import BNLSTM
    from geomopt.nn.bn_rnn import fused as bn_rnn
    fn = bn_rnn._FusedLSTMLayer
    marks: dict[str, float] = {}
    forward, backward = fn.forward, fn.backward

    def timed(name, f):
        def wrapper(*a):
            marks[name + "0"] = time.thread_time()
            out = f(*a)
            marks[name + "1"] = time.thread_time()
            return out
        return staticmethod(wrapper)

    torch.manual_seed(0)
    x = torch.randn(batch, T, 1)
    model = BNLSTM(1, 100, max_steps=T)
    parts: dict[str, list[float]] = {k: [] for k in ("input terms, plans", "forward loop (Function)", "loss, grads",
                                                     "backward loop (Function)", "input-term backward, rest")}
    fn.forward, fn.backward = timed("f", forward), timed("b", backward)
    try:
        for i in range(reps + 1):
            model.zero_grad(set_to_none=True)
            t0 = time.thread_time()
            out, _ = model(x)
            t1 = time.thread_time()
            out[:, -1].sum().backward()
            t2 = time.thread_time()
            if i:  # the first pass is warm-up
                for k, v in zip(parts, (marks["f0"] - t0, marks["f1"] - marks["f0"], marks["b0"] - marks["f1"],
                                        marks["b1"] - marks["b0"], t2 - marks["b1"])):
                    parts[k].append(1e6 * v / T)
    finally:
        fn.forward, fn.backward = forward, backward
    total = sum(statistics.median(v) for v in parts.values())
    print(f"\nBNLSTM training step, hidden 100, T = {T}, batch {batch}: thread CPU time per time step (medians of "
          f"{reps}; sum {total:.0f} us)\n\n| part | us per step |\n|---|---|")
    for k, v in parts.items():
        print(f"| {k} | {statistics.median(v):.1f} |")
    with profile() as prof:
        out, _ = model(x)
        out[:, -1].sum().backward()
    inside: dict[str, float] = {}
    for e in prof.events():
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("_FusedLSTMLayer"):
            parent = parent.cpu_parent
        if parent is not None and e.cpu_parent is parent and e.name.startswith("aten::"):
            key = f"{parent.name}: {e.name}"
            inside[key] = inside.get(key, 0.0) + e.self_cpu_time_total
    print("\n| inside the Function (torch.profiler) | self CPU us per step |\n|---|---|")
    for k, v in sorted(inside.items(), key=lambda kv: -kv[1])[:16]:
        print(f"| {k} | {v / T:.1f} |")


def print_bnlstm(args: argparse.Namespace) -> None:
    from geomopt.nn import BNLSTM
    x = torch.randn(16, 20, 1)
    counts = {"BNLSTM": launches_per_step(BNLSTM(1, 100, max_steps=20), x),
              "BNLSTM step-by-step": launches_per_step(BNLSTM(1, 100, max_steps=20, fused=False), x),
              "torch.nn.LSTM": launches_per_step(nn.LSTM(1, 100, batch_first=True), x)}
    print("\nATen kernels per time step (forward + backward, views not counted, T = 20): "
          + ", ".join(f"{k} {v:.1f}" for k, v in counts.items()))
    if args.breakdown:
        for T in [int(t) for t in args.bn_lengths.split(",")]:
            breakdown(T, 16, args.steps)
        return
    print("\nRatios: medians over torch.nn.LSTM's.\n\n" + HEADER.format("hidden, T, batch"))
    for hidden in [int(h) for h in args.hidden.split(",")]:
        for T in [int(t) for t in args.bn_lengths.split(",")]:
            for batch in [int(b) for b in args.batches.split(",")]:
                reps = args.steps if T <= 100 else args.long_steps
                times = bench_bnlstm(hidden, T, batch, reps, args.reference, args.compile, args.aten_gates,
                                     torch.device(args.device))
                print_rows(f"{hidden}, {T}, {batch}", times, "torch.nn.LSTM", "BNLSTM")
    if not args.no_urnn:
        print("\nRatios: medians over geomopt.nn.ReLURNN's (adding problem, MSE).\n\n"
              + HEADER.format("hidden, T, batch"))
        for hidden in (100, 512):
            print_rows(f"{hidden}, 100, 16", bench_urnn(hidden, 100, 16, args.steps), "ReLURNN", "UnitaryRNN")
    print(f"\nload average at end {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="repetitions (default 20; 5 with --bnlstm)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lengths", default="100,400,750")
    parser.add_argument("--bnlstm", action="store_true", help="only the BN-LSTM vs torch.nn.LSTM comparison")
    parser.add_argument("--hidden", default="100,1000", help="--bnlstm: hidden sizes")
    parser.add_argument("--bn-lengths", default="100,784", help="--bnlstm: sequence lengths")
    parser.add_argument("--batches", default="16,64", help="--bnlstm: batch sizes")
    parser.add_argument("--long-steps", type=int, default=2, help="--bnlstm: repetitions for T > 100")
    parser.add_argument("--reference", action="store_true", help="--bnlstm: also the step-by-step BNLSTM")
    parser.add_argument("--compile", action="store_true", help="--bnlstm: also BNLSTM(compile=True)")
    parser.add_argument("--aten-gates", action="store_true",
                        help="--bnlstm: also BNLSTM(native=False): no C gate kernels, as without a compiler")
    parser.add_argument("--no-urnn", action="store_true", help="--bnlstm: skip the uRNN table")
    parser.add_argument("--device", default="cpu", help="--bnlstm: cpu or cuda (the BN-LSTM table only)")
    parser.add_argument("--breakdown", action="store_true",
                        help="--bnlstm: only where a BNLSTM step's time goes (hidden 100, batch 16, each --bn-lengths)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(t) for t in args.lengths.split(",")]
    if args.device != "cpu" and not (args.bnlstm and args.no_urnn and not args.breakdown):
        parser.error("--device applies to the BN-LSTM table only: pass --bnlstm --no-urnn (without --breakdown)")
    print(f"Machine: {describe_machine(args.device)}; load average {os.getloadavg()}")
    if args.bnlstm:
        args.steps = args.steps or 5
        print_bnlstm(args)
        return
    args.steps = args.steps or 20
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
