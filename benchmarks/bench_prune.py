"""Time to score every prunable weight, per criterion, on an MLP 300-100 and a small CNN.

Scores need the mean gradient (lm, qm) and the exact Gauss-Newton diagonal (qm, obd) over
``--examples`` examples; the diagonal comes from per-example, per-class backward passes
vectorized with torch.func.vmap (no Python loop over examples). As a contrast, the same diagonal
by a Python loop over examples and classes (one autograd backward each) is timed on a subset
and extrapolated.

Usage: python benchmarks/bench_prune.py [--examples 1000] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from geomopt.nn import CNN, MLP
from geomopt.prune import CRITERIA, loss_statistics, scores

from machine import describe_machine


def loop_ggn_diag(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds for the per-example, per-class Python loop (the obvious implementation)."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    t0 = time.perf_counter()
    for xi in x:
        logits = model(xi.unsqueeze(0))[0]
        p = torch.softmax(logits, -1).detach()
        for c in range(logits.shape[0]):
            s = p.sqrt()[c] * (torch.eye(logits.shape[0])[c] - p)
            grads = torch.autograd.grad(logits, weights, grad_outputs=s, retain_graph=True)
            _ = [g ** 2 for g in grads]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine(torch.device('cpu'))}")
    torch.manual_seed(0)
    cases = [("MLP 784-300-100-10", MLP((784,), (300, 100), 10), (784,)),
             ("CNN 1x28x28 conv 16-32 + pool, fc 10", CNN((1, 28, 28), (16, 32), 10), (1, 28, 28))]
    print(f"| model | criterion | seconds to score all weights ({args.examples} examples) |")
    print("|---|---|---|")
    for name, model, shape in cases:
        x = torch.randn(args.examples, *shape)
        y = torch.randint(0, 10, (args.examples,))
        loader = [(x, y)]
        for criterion in CRITERIA:
            t0 = time.perf_counter()
            stats = None
            if criterion != "mp":
                stats = loss_statistics(model, loader, n_examples=args.examples, curvature=criterion in ("qm", "obd"))
            scores(model, criterion, stats)
            print(f"| {name} | {criterion} | {time.perf_counter() - t0:.2f} |", flush=True)
        subset = 20
        est = loop_ggn_diag(model, x[:subset]) * args.examples / subset
        print(f"| {name} | GGN diagonal by a Python loop over examples x classes (extrapolated from {subset}) | "
              f"{est:.2f} |", flush=True)


if __name__ == "__main__":
    main()
