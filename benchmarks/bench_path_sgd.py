"""Step time of PathSGD relative to SGD, side by side in one process, beside the memory-traffic floor.

A "step" is what a training loop pays per minibatch: zero_grad, forward, cross-entropy,
backward and optimizer.step(). Each contender takes turns with SGD step by step on the same data (so
drift of the machine affects them alike), one contender at a time: with a third one in the
alternation, the step after the generic pass (which frees hundreds of MB) paid for the allocator's
state, and the MLP's Path-SGD / SGD ratio ranged 0.86-1.05 over runs instead of 1.01-1.02; each repetition reports the median step of each
contender, and the table gives the ratio's min / median / max over the repetitions. Time is this
process's CPU time by default (``--clock cpu``, ``time.process_time``; with the default single torch
thread it is the step's own compute, not the other jobs of a shared machine), or wall time
(``--clock wall``; use it with ``--threads 2`` on an idle machine: with several threads CPU time also
counts their spin-waiting).

Floor. Path-SGD's extra work is memory-bound, so its price relative to SGD's step depends on the
machine. The floor ratio is ``1 + extra_bytes / bandwidth / t_sgd``: ``extra_bytes`` = the bytes
the implementation moves per step beyond SGD's update (counted from the model: weights read in
the scale passes outside the fused update pass, dense-gamma and direction temporaries of the
small parameters, the squared network's batch-1 activations of the generic path),
``bandwidth`` = this process's measured copy bandwidth (STREAM-like: read + write of a 512 MiB
buffer, best of 5) and ``t_sgd`` = SGD's measured median step. The last column divides the
measured ratio by the floor (target: at most 1.1).

Contenders:
- sgd: torch.optim.SGD;
- path-sgd: geomopt.optim.PathSGD (for an MLP: rank-one scales, the next step's scales computed
  in the update pass);
- path-sgd (generic): the plain squared-network autograd pass with dense gamma (the reference).

``--step-only``: ``optimizer.step()`` alone (random gradients, SGD and Path-SGD alternating) on the
MLP, and with ``--profile`` the torch profiler's table of Path-SGD's step (which kernels the time goes to).

Usage: python benchmarks/bench_path_sgd.py [--device cpu|cuda] [--steps 10] [--reps 7] [--threads 1]
                                          [--clock cpu|wall]
       python benchmarks/bench_path_sgd.py --step-only [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from geomopt.geometry import PathScales
from geomopt.geometry.path_norm import BLOCK_ELEMENTS
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def copy_bandwidth(device: torch.device, nbytes: int = 512 << 20, reps: int = 5) -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write) on a buffer far larger than any cache."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def _chain_extra_reads(scales: PathScales) -> set[int]:
    """Indices of the chain layers that the scale pass reads a second time (outside the update)."""
    chain = scales._chain
    n = len(chain)
    inner = range(1, n - 1)
    if not len(inner):
        return set()
    m = max(inner, key=lambda i: chain[i].weight.numel())
    return set(range(m + 1, n - 1)) | set(range(1, m))


def extra_bytes(opt: PathSGD, device: torch.device) -> int:
    """Bytes PathSGD moves per step beyond SGD's update (read g and w, write w), from the model."""
    model = opt.scales.model
    params = dict(model.named_parameters())
    item = next(iter(params.values())).element_size()
    if isinstance(opt.scales, PathScales) and opt.scales.factored:
        chain = opt.scales._chain
        total = sum(chain[i].weight.numel() for i in _chain_extra_reads(opt.scales))
        for name, p in params.items():
            large = p.dim() == 2 and p.numel() > BLOCK_ELEMENTS and device.type == "cpu"
            if not large:  # contraction read + dense gamma write/read + direction write/read
                total += 5 * p.numel()
        return total * item
    # generic path: powered copy (write + read), gamma (write + read), direction (write + read), and the
    # squared network's batch-1 activations forward and backward
    total = 6 * sum(p.numel() for p in params.values())
    acts: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out.numel()))
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.ones((1, *opt.scales.input_shape), device=device))
    for h in hooks:
        h.remove()
    return (total + 3 * sum(acts)) * item


def bench(build, input_shape, batch: int, steps: int, reps: int, device: torch.device, kinds: list[str],
          clock=time.process_time) -> tuple[dict[str, list[float]], dict[str, torch.optim.Optimizer]]:
    """Median step time of each contender in each repetition (contenders alternate step by step)."""
    torch.manual_seed(0)
    x = torch.randn(batch, *input_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    models = {k: build().to(device) for k in kinds}
    opts = {k: make_optimizer(k, models[k], 1e-4) for k in kinds}

    def step(k: str) -> float:
        _sync(device)
        t0 = clock()
        opts[k].zero_grad(set_to_none=True)
        nn.functional.cross_entropy(models[k](x), y).backward()
        opts[k].step()
        _sync(device)
        return clock() - t0

    for k in kinds:  # warm-up: allocations, buffers
        for _ in range(3):
            step(k)
    medians: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(reps):
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(steps):
            for k in kinds:
                times[k].append(step(k))
        for k in kinds:
            medians[k].append(statistics.median(times[k]))
    return medians, opts


def step_only(device: torch.device, steps: int, profile: bool, clock=time.process_time) -> None:
    """Median ``optimizer.step()`` time of SGD and Path-SGD on the 784-4000-4000-10 MLP, random gradients."""
    torch.manual_seed(0)
    opts = {}
    for kind in ("sgd", "path-sgd"):
        model = MLP((784,), (4000, 4000), 10).to(device)
        for p in model.parameters():
            p.grad = 1e-3 * torch.randn_like(p)
        opts[kind] = make_optimizer(kind, model, 1e-6)
    times: dict[str, list[float]] = {k: [] for k in opts}
    for i in range(steps + 3):
        for kind, opt in opts.items():
            _sync(device)
            t0 = clock()
            opt.step()
            _sync(device)
            if i >= 3:
                times[kind].append(clock() - t0)
    for kind, ts in times.items():
        print(f"optimizer.step() {kind}: median {1e3 * statistics.median(ts):.2f} ms "
              f"(min {1e3 * min(ts):.2f}, max {1e3 * max(ts):.2f}) over {len(ts)} steps")
    if profile:
        from torch.profiler import profile as torch_profile
        with torch_profile() as prof:
            for _ in range(3):
                opts["path-sgd"].step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="steps per contender in each repetition")
    parser.add_argument("--reps", type=int, default=7, help="repetitions (min/median/max over them)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: process CPU time (default); wall: elapsed time")
    parser.add_argument("--step-only", action="store_true", help="time optimizer.step() alone on the MLP")
    parser.add_argument("--profile", action="store_true", help="with --step-only: profile Path-SGD's step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = CLOCKS["wall"] if device.type == "cuda" else CLOCKS[args.clock]
    print(f"machine: {describe_machine(device)}; clock: {'wall' if clock is time.perf_counter else 'cpu'}")
    if args.step_only:
        step_only(device, max(args.steps, 10), args.profile, clock)
        return
    bandwidth = copy_bandwidth(device)
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write, 512 MiB, best of 5)")
    cases = [
        ("MLP 784-4000-4000-10, batch 100", lambda: MLP((784,), (4000, 4000), 10), (784,), 100,
         ["sgd", "path-sgd", "path-sgd (generic)"]),
        ("CNN 1x28x28, conv 32-64 + pool, fc 10, batch 100", lambda: CNN((1, 28, 28), (32, 64), 10), (1, 28, 28), 100,
         ["sgd", "path-sgd"]),
    ]
    print("| model | contender | median step (ms) | ratio to SGD min / median / max | extra MB | floor | "
          "ratio / floor |")
    print("|---|---|---|---|---|---|---|")
    for name, build, shape, batch, kinds in cases:
        for k in kinds[1:]:  # each contender alternates with SGD alone (see the module's docstring)
            medians, opts = bench(build, shape, batch, args.steps, args.reps, device, ["sgd", k], clock)
            t_sgd = statistics.median(medians["sgd"])
            ratios = [a / b for a, b in zip(medians[k], medians["sgd"])]
            med = statistics.median(ratios)
            if k == kinds[1]:
                print(f"| {name} | sgd | {1e3 * t_sgd:.2f} | 1 | 0 | 1 | - |", flush=True)
            extra = extra_bytes(opts[k], device)
            floor = 1 + extra / bandwidth / t_sgd
            print(f"| {name} | {k} | {1e3 * statistics.median(medians[k]):.2f} | {min(ratios):.3f} / {med:.3f} / "
                  f"{max(ratios):.3f} | {extra / 1e6:.2f} | {floor:.3f} | {med / floor:.3f} |", flush=True)
    if hasattr(os, "getloadavg"):
        print("load average at the end (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
