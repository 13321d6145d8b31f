"""Wall time of every generalization measure, the NTK Gram vs nngeometry, and the sigma search's cost.

Setup: a small CNN (channels 16-32, max-pool, linear head) trained briefly on 1000 digits
training examples, CPU.

1. Each measure group of ``geomopt.measures.compute`` timed alone (margin, norms, path, bounds,
   sharpness, flatness) with the default settings.
2. Empirical NTK Gram ``(n, k, n, k)`` for n = 256 and 1024: ``geomopt.measures.ntk_gram``
   (torch.func vmap over jacrev) vs nngeometry's ``FMatDense(TorchHooksJacobianBackend)`` (if
   installed: ``pip install nngeometry``), alternating, median of ``--repeats``; max abs difference.
3. PAC-Bayes sigma search: our common-random-numbers + false-position search vs the 15-step
   bisection x 10 samples reference (Dziugaite et al.); loss evaluations (full passes) and the
   sigma found, against a precise root of the same Monte-Carlo objective (40-step bisection on the
   same draws) to compare accuracy.

Usage: python benchmarks/bench_measures.py [--repeats 3] [--threads N] [--sizes 256,1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from geomopt.data import load_dataset, make_loader
from geomopt.measures import DatasetObjective, bisection_sigma, compute, ntk_gram, search_sigma
from geomopt.nn import CNN

from machine import describe_machine


def trained_cnn(bundle, epochs: int = 8):
    model = CNN(bundle.input_shape, (16, 32), bundle.num_classes, seed=0)
    init = CNN(bundle.input_shape, (16, 32), bundle.num_classes, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = make_loader(bundle.train, 50, shuffle=True, seed=0)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch) if hasattr(loader.sampler, "set_epoch") else None
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval(), init


def time_measures(model, init, loader) -> None:
    print("\n## measure groups (1000 training examples)")
    for group in ("margin", "norms", "path", "bounds", "sharpness", "flatness"):
        t = time.perf_counter()
        res = compute(model, loader, init_model=init, measures=[group])
        dt = time.perf_counter() - t
        extra = ""
        if group == "flatness":
            extra = (f" (evaluations: isotropic {res['pacbayes_evaluations']}, "
                     f"magnitude {res['pacbayes_mag_evaluations']})")
        print(f"{group:10s} {dt:8.3f} s{extra}")


def nngeometry_gram(model, x, k):
    from nngeometry.backend import TorchHooksJacobianBackend
    from nngeometry.object import FMatDense
    ds = torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    loader = torch.utils.data.DataLoader(ds, batch_size=128)
    gen = TorchHooksJacobianBackend(model=model, function=lambda *d: model(d[0]))
    return FMatDense(generator=gen, examples=loader).data  # (k, n, k, n)


def time_ntk(model, bundle, sizes, repeats) -> None:
    print("\n## NTK Gram (n, k=10)")
    try:
        import nngeometry  # noqa: F401
        have = True
    except ImportError:
        have = False
        print("nngeometry not installed: only ours is timed (pip install nngeometry)")
    x_all = bundle.train.tensors[0]
    for n in sizes:
        x = x_all[:n]
        ours, theirs = [], []
        diff = float("nan")
        for _ in range(repeats):
            t = time.perf_counter()
            k = ntk_gram(model, x, chunk_size=128)
            ours.append(time.perf_counter() - t)
            if have:
                t = time.perf_counter()
                g = nngeometry_gram(model, x, 10)
                theirs.append(time.perf_counter() - t)
                diff = float((g.permute(1, 0, 3, 2) - k).abs().max() / k.abs().max())
        line = f"n={n:5d}  geomopt {statistics.median(ours):8.3f} s"
        if have:
            line += (f"   nngeometry {statistics.median(theirs):8.3f} s   ratio nngeometry/geomopt "
                     f"{statistics.median(theirs) / statistics.median(ours):5.2f}   max rel diff {diff:.1e}")
        print(line)


def sigma_search(model, loader) -> None:
    print("\n## PAC-Bayes sigma search (threshold 0.1 on the loss increase, 10 samples)")
    obj = DatasetObjective(model, loader)
    params = obj.params()
    for mode in ("isotropic", "magnitude"):
        precise = bisection_sigma(obj, params, mode=mode, samples=10, seed=0, steps=40, common_noise=True)
        t = time.perf_counter()
        fast = search_sigma(obj, params, mode=mode, samples=10, seed=0)
        t_fast = time.perf_counter() - t
        t = time.perf_counter()
        ref = bisection_sigma(obj, params, mode=mode, samples=10, seed=0, steps=15)
        t_ref = time.perf_counter() - t
        print(f"{mode:9s} ours: sigma {fast.sigma:.6f} in {fast.evaluations} evaluations ({t_fast:.2f} s), "
              f"|sigma - root of the same MC objective| = {abs(fast.sigma - precise.sigma):.1e}; "
              f"15x10 bisection: sigma {ref.sigma:.6f} in {ref.evaluations} evaluations ({t_ref:.2f} s), "
              f"|sigma - that root| = {abs(ref.sigma - precise.sigma):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sizes", default="256,1024")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench_measures: {describe_machine()}")
    bundle = load_dataset("digits", seed=0, train_size=1000)
    model, init = trained_cnn(bundle)
    loader = make_loader(bundle.train, 1000, shuffle=False)
    print(f"model: CNN 16-32 on digits, {sum(p.numel() for p in model.parameters())} parameters")
    time_measures(model, init, loader)
    time_ntk(model, bundle, [int(s) for s in args.sizes.split(",")], args.repeats)
    sigma_search(model, loader)


if __name__ == "__main__":
    main()
