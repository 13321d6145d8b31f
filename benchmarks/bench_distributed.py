"""Data-parallel K-FAC / EKFAC: bytes communicated and time per step with 1 and 2 processes (gloo).

Each configuration runs in freshly spawned processes (gloo, one thread each); the configurations
take turns round by round (the machine is shared: min / median / max over rounds). Per step:

- ``grad``: DDP's gradient all-reduce payload (bytes of all gradients, each process);
- ``factors``: what the optimizer put into collectives (geomopt.curvature.distributed.FactorComm:
  the all-reduced factor/diagonal buckets and the inverse buckets it broadcast), per process,
  averaged over the steps (inversions every ``--inv-freq`` steps included);
- ``work``: each rank's share of the estimated inversion cost (d_A^3 + d_G^3 per layer).

Payloads, not wire bytes: a ring all-reduce moves 2 (W - 1) / W times its payload per process.
``--paper`` prints the same quantities for ResNet-18's factor sizes at 8 and 64 GPUs (no run).

    python benchmarks/bench_distributed.py [--steps 20 --rounds 3 --batch 256 --widths 512,512]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from geomopt.optim import EKFAC, KFAC  # noqa: E402


def _model(widths: list[int]) -> nn.Module:
    torch.manual_seed(0)
    layers, d = [], 784
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    return nn.Sequential(*layers, nn.Linear(d, 10))


def _worker(rank: int, world: int, init: str, name: str, args, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=300))
    model = _model(args.widths)
    net = DistributedDataParallel(model) if world > 1 else model
    cls = KFAC if name == "kfac" else EKFAC
    opt = cls(model, lr=0.01, damping=0.03, momentum=0.9, update_freq=args.update_freq, inv_freq=args.inv_freq)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(args.batch, 784, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    lo, hi = rank * args.batch // world, (rank + 1) * args.batch // world
    x, y = x[lo:hi], y[lo:hi]

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(args.inv_freq):  # warm-up: a whole inversion cycle
        step()
    comm = opt.comm
    sent0 = comm.bytes_sent if comm else 0
    work0 = (comm.work_done, comm.work_total) if comm else (0.0, 0.0)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if world > 1:
        dist.barrier()
    seconds = (time.perf_counter() - start) / args.steps
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) if world > 1 else 0
    factor_bytes = (comm.bytes_sent - sent0) / args.steps if comm else 0
    work = ((comm.work_done - work0[0]) / max(comm.work_total - work0[1], 1e-30)) if comm else 1.0
    torch.save({"seconds": seconds, "grad": grad_bytes, "factors": factor_bytes, "work": work},
               f"{out}/{name}-{world}-{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def _run(name: str, world: int, args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "rdv")
        mp.start_processes(_worker, args=(world, init, name, args, tmp), nprocs=world, start_method="spawn")
        return [torch.load(f"{tmp}/{name}-{world}-{r}.pt") for r in range(world)]


def _mb(b: float) -> str:
    return f"{b / 2 ** 20:8.2f}"


# ResNet-18 (ImageNet; convolutions without bias, fc with): (d_A, d_G) per K-FAC layer
RESNET18 = ([(3 * 49, 64)] + [(64 * 9, 64)] * 4
            + [(64 * 9, 128), (128 * 9, 128), (64, 128), (128 * 9, 128), (128 * 9, 128)]
            + [(128 * 9, 256), (256 * 9, 256), (128, 256), (256 * 9, 256), (256 * 9, 256)]
            + [(256 * 9, 512), (512 * 9, 512), (256, 512), (512 * 9, 512), (512 * 9, 512)]
            + [(513, 1000)])
RESNET18_PARAMS = 11_689_512  # torchvision's resnet18: weights, biases and BatchNorm affine parameters


def paper(inv_freq: int, update_freq: int) -> None:
    """ResNet-18 volumes per step (fp32 payloads; ring traffic per GPU = 2 (W-1)/W x an all-reduce payload)."""
    full = sum(a * a + g * g for a, g in RESNET18)
    tri = sum(a * (a + 1) // 2 + g * (g + 1) // 2 for a, g in RESNET18)
    diag = sum(a * g for a, g in RESNET18)
    eig = sum(a + g for a, g in RESNET18)
    print(f"ResNet-18: {len(RESNET18)} K-FAC layers, {RESNET18_PARAMS / 1e6:.2f} M parameters, "
          f"factors {full / 1e6:.2f} M entries ({tri / 1e6:.2f} M as triangles), largest A {max(RESNET18)[0]}")
    print(f"fp32, factors every {update_freq} step(s), inverses every {inv_freq} steps; MiB per GPU per step")
    print(f"{'W':>3} {'grad ring':>10} {'factors ring':>12} {'inverses recv':>13} {'ekfac recv':>10} "
          f"{'per step (kfac)':>15} {'layer-wise grad bcast':>21}")
    for w in (8, 64):
        ring = 2 * (w - 1) / w
        grad = ring * RESNET18_PARAMS * 4
        factors = ring * full * 4 / update_freq
        inv = (w - 1) / w * full * 4 / inv_freq  # each GPU receives every inverse it did not compute
        ekfac = (w - 1) / w * (full + diag) * 4 / inv_freq
        layerwise = (w - 1) / w * diag * 4  # instead of inverses: every step each layer's preconditioned gradient
        print(f"{w:>3} {_mb(grad):>10} {_mb(factors):>12} {_mb(inv):>13} {_mb(ekfac):>10} "
              f"{_mb(grad + factors + inv):>15} {_mb(layerwise):>21}")
    print(f"one all-reduce payload of all factors: {_mb(full * 4)} MiB ({_mb(tri * 4)} MiB as triangles); eigenvalues "
          f"{eig} entries; EKFAC's diagonal adds {diag / 1e6:.2f} M entries = the weights")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--widths", type=lambda s: [int(t) for t in s.split(",")], default=[512, 512])
    parser.add_argument("--update-freq", type=int, default=1)
    parser.add_argument("--inv-freq", type=int, default=10)
    parser.add_argument("--paper", action="store_true", help="only the on-paper ResNet-18 volumes")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()} on {os.cpu_count()} CPUs (shared machine); torch {torch.__version__}")
    if args.paper:
        for update_freq, inv_freq in ((1, 10), (10, 100)):
            paper(inv_freq, update_freq)
        return
    print(f"MLP 784-{'-'.join(map(str, args.widths))}-10, global batch {args.batch}, update_freq {args.update_freq}, "
          f"inv_freq {args.inv_freq}, {args.steps} timed steps per run, {args.rounds} rounds (turns alternate)")
    configs = [(n, w) for n in ("kfac", "ekfac") for w in (1, 2)]
    runs: dict[tuple[str, int], list[list[dict]]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for c in configs:
            runs[c].append(_run(*c, args))
    print(f"{'opt':6s} {'W':>2} {'ms/step min/med/max':>24} {'grad MiB':>8} {'factors MiB':>11} {'work per rank':>16}")
    for (name, w), rounds in runs.items():
        ms = [1e3 * r[0]["seconds"] for r in rounds]
        last = rounds[-1]
        work = "/".join(f"{r['work']:.2f}" for r in last)
        print(f"{name:6s} {w:>2} {min(ms):8.1f}/{statistics.median(ms):6.1f}/{max(ms):6.1f} "
              f"{_mb(last[0]['grad'])} {_mb(max(r['factors'] for r in last)):>11} {work:>16}")


if __name__ == "__main__":
    main()
