"""geomopt's Muon and SOAP beside heavyball's, side by side in one process.

First the same steps: on square matrices, our ``Muon(orthogonalize="svd", nesterov=False)`` and heavyball's
``Muon`` with ``zeroth_power_mode = "svd"`` and ``nesterov=False`` take the same steps (the largest parameter
difference after `--check-steps` steps is printed; tests/optim/test_heavyball.py asserts it). Then the speed:
a step = zero_grad + forward + cross-entropy + backward + optimizer.step() of an MLP 784-256-256-10 on a batch
of 100 random images, each contender at its defaults (Muon: Newton-Schulz; SOAP: basis refreshed every 10
steps, heavyball's `precondition_frequency=10`), taking turns for `--rounds` rounds of `--steps` steps; CPU
seconds of this process (`time.process_time`, one torch thread); ratios of total times to SGD's and to the peer.
heavyball runs eagerly (its `compile_mode = None`) unless `--compile` (torch.compile, minutes on a CPU).
What differs between the implementations is listed in tests/optim/test_heavyball.py.

Usage: python benchmarks/bench_heavyball.py [--rounds 5] [--steps 20] [--compile]
Needs heavyball: pip install 'geomopt[peers]' (or pip install --no-deps heavyball opt-einsum).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from pathlib import Path

import heavyball
import heavyball.utils as hb_utils
import torch

from geomopt.nn import MLP
from geomopt.optim import SOAP, Muon

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402


def same_steps(steps: int) -> float:
    """The largest parameter difference between the two Muons (exact orthogonalization) after ``steps`` steps."""
    mode = hb_utils.zeroth_power_mode
    hb_utils.zeroth_power_mode = "svd"
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(d, d, generator=gen) for d in (16, 64)]
    ours, theirs = [w.clone().requires_grad_() for w in init], [w.clone().requires_grad_() for w in init]
    opt = Muon(ours, lr=0.02, momentum=0.9, nesterov=False, weight_decay=0.01, orthogonalize="svd")
    peer = heavyball.Muon(theirs, lr=0.02, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=0, nesterov=False)
    for _ in range(steps):
        for p, q in zip(ours, theirs):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        peer.step()
    hb_utils.zeroth_power_mode = mode
    return max((p - q).abs().max().item() for p, q in zip(ours, theirs))


def contenders() -> dict:
    return {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.01),
            "geomopt Muon": lambda ps: Muon(ps, lr=0.02),
            "heavyball Muon": lambda ps: heavyball.Muon(ps, lr=0.02),
            "geomopt SOAP": lambda ps: SOAP(ps, lr=3e-3),
            "heavyball SOAP": lambda ps: heavyball.SOAP(ps, lr=3e-3, precondition_frequency=10)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--check-steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="let heavyball torch.compile its steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.compile:
        hb_utils.compile_mode = None
    print(f"machine: {describe_machine()}; heavyball {importlib.metadata.version('heavyball')}, "
          f"{'compiled' if args.compile else 'eager'}")
    print(f"same steps (Muon, exact orthogonalization, momentum 0.9, {args.check_steps} steps): largest parameter "
          f"difference {same_steps(args.check_steps):.2e}")
    x, y = torch.randn(100, 1, 28, 28), torch.randint(0, 10, (100,))
    runs = {}
    for name, make in contenders().items():
        torch.manual_seed(0)
        model = MLP((1, 28, 28), (256, 256), 10)
        runs[name] = (model, make(list(model.parameters())))
    times = {name: 0.0 for name in runs}
    for _ in range(args.rounds + 1):  # round 0 warms up (heavyball's first steps build its state)
        for name, (model, opt) in runs.items():
            t = time.process_time()
            for _ in range(args.steps):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            times[name] += (time.process_time() - t) if _ else 0.0
    steps = args.rounds * args.steps
    print(f"\nMLP 784-256-256-10, batch 100, {args.rounds} rounds of {args.steps} steps (CPU time, one thread)")
    print(f"  {'contender':<16} {'ms/step':>8} {'x SGD':>7} {'x peer':>7}")
    for name, total in times.items():
        peer = {"geomopt Muon": "heavyball Muon", "geomopt SOAP": "heavyball SOAP"}.get(name)
        vs = f"{total / times[peer]:>7.2f}" if peer else f"{'':>7}"
        print(f"  {name:<16} {1000 * total / steps:>8.2f} {total / times['sgd']:>7.2f} {vs}")
    print(f"\nmachine at the end: {describe_machine()}")


if __name__ == "__main__":
    main()
