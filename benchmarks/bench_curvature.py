"""Hessian spectra on one model and data: geomopt.curvature vs PyHessian and curvlinops, in one process.

Model: a ReLU MLP 64-32-32-10 trained briefly on 1000 digits examples (float32, full batch). Reference:
the dense float64 Hessian (``HessianOperator(...).to_dense()`` of the float64 copy; the operators are
tested against ``torch.autograd.functional.hessian`` in tests/curvature) and ``torch.linalg.eigvalsh``.

Tasks, each contender timed end to end (operator construction included), contenders alternating,
``--repeats`` rounds, min / median / max seconds:

- top eigenvalue to 1e-3 relative: ours ``lanczos_top_eigenvalues(tol=1e-3)`` (Ritz residual rule) and
  ``power_iteration(tol=1e-3)``; PyHessian ``eigenvalues(tol=1e-3)`` (power iteration); curvlinops +
  ``scipy.sparse.linalg.eigsh(tol=1e-3)`` (ARPACK Lanczos);
- trace to 1% relative: ours ``hutchinson_trace(tol=0.01)`` (stops at stderr <= 0.5%), plain and
  Hutch++ (``deflate=40``); PyHessian ``trace(tol=0.01, maxIter=2000)`` (its rule: the running mean
  changes by < 1%); curvlinops ``hutchpp_trace`` with the number of products ours' Hutch++ used;
- spectral density: ``--lanczos-steps`` Lanczos steps from one start vector: ours ``slq_density``;
  PyHessian ``density``; curvlinops ``fast_lanczos`` (the quadrature inside
  ``lanczos_approximate_spectrum``); accuracy = L1 distance of the Gaussian-smoothed quadrature to the
  exact eigenvalues smoothed alike (sigma = 1% of the spectral range);
- Hessian-vector products per second (one product, repeated).

Usage: python benchmarks/bench_curvature.py [--repeats 3] [--threads 1]
(needs ``pip install --no-deps pyhessian curvlinops-for-pytorch``, see requirements-peers.txt)
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import os
import statistics
import time

import numpy as np
import torch
from torch import nn

from geomopt.curvature import (HessianOperator, hutchinson_trace, lanczos_top_eigenvalues, power_iteration,
                               slq_density)
from geomopt.data import load_dataset
from geomopt.nn import MLP

from machine import describe_machine


def setup(n: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    bundle = load_dataset("digits", seed=seed, train_size=n)
    x, y = bundle.train.tensors
    x = x.flatten(1)
    model = MLP((64,), (32, 32), 10, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(100):  # a partly trained network: the spectrum of a random init is untypical
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


class Counted:
    """Counts Hessian-vector products of a peer by wrapping one of its functions."""

    def __init__(self):
        self.n = 0


def pyhessian_comp(model, x, y, counter: Counted):
    ph = importlib.import_module("pyhessian.hessian")  # the package re-exports a class of the same name
    original = getattr(ph, "_geomopt_original_hvp", ph.hessian_vector_product)
    ph._geomopt_original_hvp = original

    def hvp(grads, params, v):
        counter.n += 1
        return original(grads, params, v)
    ph.hessian_vector_product = hvp
    return ph.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)


def curvlinops_op(model, x, y, counter: Counted):
    from curvlinops import HessianLinearOperator
    op = HessianLinearOperator(model, nn.CrossEntropyLoss(), [p for p in model.parameters()], [(x, y)],
                               check_deterministic=False)
    original = op._matmat

    def matmat(X):
        counter.n += X[0].shape[-1]
        return original(X)
    op._matmat = matmat
    return op


def smoothed(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    g = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return g @ weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lanczos-steps", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine('cpu')}; load averages {os.getloadavg()} (shared machine)")
    model, x, y = setup(args.examples)
    d = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    dense = HessianOperator(copy.deepcopy(model).double(), (x.double(), y)).to_dense()
    evals = torch.linalg.eigvalsh((dense + dense.T) / 2).numpy()
    top, trace = float(evals[-1]), float(evals.sum())
    print(f"model MLP 64-32-32-10, {d} parameters, {len(y)} digits examples, full batch; exact (float64, "
          f"{time.perf_counter() - t0:.1f} s): top eigenvalue {top:.6g}, trace {trace:.6g}, "
          f"range [{evals[0]:.4g}, {evals[-1]:.4g}]")

    def ours_top():
        res = lanczos_top_eigenvalues(HessianOperator(model, (x, y)), 1, tol=1e-3,
                                      generator=torch.Generator().manual_seed(0))
        return float(res.values[0]), res.products

    def ours_power():
        res = power_iteration(HessianOperator(model, (x, y)), tol=1e-3, max_iter=200,
                              generator=torch.Generator().manual_seed(0))
        return float(res.values[0]), res.products

    def pyhessian_top():
        c = Counted()
        torch.manual_seed(0)
        value = pyhessian_comp(model, x, y, c).eigenvalues(maxIter=200, tol=1e-3, top_n=1)[0][0]
        return float(value), c.n

    def curvlinops_top():
        from scipy.sparse.linalg import eigsh
        c = Counted()
        op = curvlinops_op(model, x, y, c).to_scipy()
        value = eigsh(op, k=1, which="LA", tol=1e-3, v0=np.random.default_rng(0).standard_normal(d),
                      return_eigenvectors=False)[0]
        return float(value), c.n

    probes = {}

    def ours_trace():
        res = hutchinson_trace(HessianOperator(model, (x, y)), tol=0.01, max_samples=3000, block=20,
                               generator=torch.Generator().manual_seed(0))
        return res.estimate, res.products

    def ours_hutchpp():
        res = hutchinson_trace(HessianOperator(model, (x, y)), tol=0.01, max_samples=3000, block=20, deflate=40,
                               generator=torch.Generator().manual_seed(0))
        probes["ours"] = res.products
        return res.estimate, res.products

    def pyhessian_trace():
        c = Counted()
        torch.manual_seed(0)
        return float(np.mean(pyhessian_comp(model, x, y, c).trace(maxIter=2000, tol=1e-2))), c.n

    def curvlinops_trace():
        from curvlinops import hutchpp_trace
        c = Counted()
        torch.manual_seed(0)
        m = probes.get("ours", 120) // 3 * 3
        return float(hutchpp_trace(curvlinops_op(model, x, y, c), m)), c.n

    lo, hi = float(evals[0]), float(evals[-1])
    sigma = 0.01 * (hi - lo)
    grid = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 2000)
    exact_density = smoothed(evals, np.full(d, 1.0 / d), grid, sigma)

    def l1(nodes, weights):
        return float(np.trapezoid(np.abs(smoothed(nodes, weights, grid, sigma) - exact_density), grid))

    def ours_density():
        dens = slq_density(HessianOperator(model, (x, y)), steps=args.lanczos_steps, probes=1,
                           generator=torch.Generator().manual_seed(0))
        return l1(dens.nodes[0].numpy(), dens.weights[0].numpy()), dens.products

    def pyhessian_density():
        c = Counted()
        torch.manual_seed(0)
        nodes, weights = pyhessian_comp(model, x, y, c).density(iter=args.lanczos_steps, n_v=1)
        return l1(np.array(nodes[0]), np.array(weights[0])), c.n

    def curvlinops_density():
        from curvlinops.papyan2020traces.spectrum import fast_lanczos
        c = Counted()
        torch.manual_seed(0)
        nodes, vecs = fast_lanczos(curvlinops_op(model, x, y, c), args.lanczos_steps)
        return l1(nodes.double().numpy(), (vecs[0].double() ** 2).numpy()), c.n

    tasks = [("top eigenvalue (rel. error)", top, [("ours Lanczos", ours_top), ("ours power", ours_power),
                                                  ("PyHessian", pyhessian_top), ("curvlinops+eigsh", curvlinops_top)]),
             ("trace (rel. error)", trace, [("ours Hutch++ (deflate 40)", ours_hutchpp),
                                           ("ours Hutchinson", ours_trace), ("PyHessian", pyhessian_trace),
                                           ("curvlinops Hutch++ (ours' product count)", curvlinops_trace)]),
             (f"density, {args.lanczos_steps} Lanczos steps (L1 to exact, smoothed)", None,
              [("ours SLQ", ours_density), ("PyHessian", pyhessian_density), ("curvlinops", curvlinops_density)])]
    print("\n| task | contender | seconds min / median / max | products | error |")
    print("|---|---|---|---|---|")
    for title, exact, contenders in tasks:
        times: dict[str, list[float]] = {name: [] for name, _ in contenders}
        outs: dict[str, tuple] = {}
        for _ in range(args.repeats):
            for name, fn in contenders:  # alternating contenders within each round
                t = time.perf_counter()
                try:
                    outs[name] = fn()
                except Exception as exc:  # a peer that does not run on this torch: reported, not fatal
                    outs[name] = exc
                times[name].append(time.perf_counter() - t)
        for name, _ in contenders:
            if isinstance(outs[name], Exception):
                print(f"| {title} | {name} | fails: {type(outs[name]).__name__}: {str(outs[name]).splitlines()[0]} "
                      "| - | - |")
                continue
            value, products = outs[name]
            err = abs(value - exact) / abs(exact) if exact is not None else value
            ts = times[name]
            print(f"| {title} | {name} | {min(ts):.3f} / {statistics.median(ts):.3f} / {max(ts):.3f} | {products} "
                  f"| {err:.2e} |")

    v = torch.randn(d)
    vs = [t.reshape(p.shape) for t, p in zip(v.split([p.numel() for p in model.parameters()]), model.parameters())]
    ours = HessianOperator(model, (x, y))
    ours_nocache = HessianOperator(model, (x, y), cache=False)
    ph = pyhessian_comp(model, x, y, Counted())
    cl = curvlinops_op(model, x, y, Counted())
    phm = importlib.import_module("pyhessian.hessian")
    hvps = [("ours (cached linearization)", lambda: ours.mv(v)), ("ours (cache=False)", lambda: ours_nocache.mv(v)),
            ("PyHessian (cached graph)", lambda: phm.hessian_vector_product(ph.gradsH, ph.params, vs)),
            ("curvlinops", lambda: cl @ vs)]
    reps = 20
    rates: dict[str, list[float]] = {name: [] for name, _ in hvps}
    for _ in range(args.repeats):
        for name, fn in hvps:
            fn()  # warm
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            rates[name].append(reps / (time.perf_counter() - t))
    print("\n| Hessian-vector products per second | min / median / max |")
    print("|---|---|")
    for name, rs in rates.items():
        print(f"| {name} | {min(rs):.1f} / {statistics.median(rs):.1f} / {max(rs):.1f} |")
    print(f"\nload averages at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
