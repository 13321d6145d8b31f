"""K-FAC / EKFAC cost, side by side in one process.

Part 1 -- per-step time over SGD. A step = zero_grad + forward + cross-entropy + backward +
optimizer.step() (statistics hooks included). update_freq=10, inv_freq=100; the contenders alternate
in blocks of `inv_freq` steps on the same model and batch, so one block holds exactly one inversion
and ten factor updates: the mean step over whole blocks is the amortized cost.

Part 2 -- time to build the curvature on one batch and to compute the preconditioned gradient,
on the same model and batch, against the public implementations (installed by the `bench` extra):
- geomopt: `compute_kfac` + `.solve(grad, damping, factored=True)` (pi-damped Cholesky inverses, as the
  optimizer); `compute_ekfac` (hooks, eigh) + `.solve(grad, damping)`;
- curvlinops `KFACLinearOperator` (empirical Fisher, expand) + `KFACInverseLinearOperator`;
- nngeometry `FIM(representation=PMatEKFAC)` (exact expectation over classes, C backward passes)
  + `solvePVec`; geomopt's counterpart there is `fisher='ggn'`.

Usage: python benchmarks/bench_kfac.py [--threads 1] [--blocks 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from geomopt.curvature import compute_ekfac, compute_kfac
from geomopt.nn import CNN, MLP
from geomopt.optim import EKFAC, KFAC


def machine() -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return f"{cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, load average {' '.join(load)}"


def cases():
    torch.manual_seed(0)
    yield ("MLP 784-512-512-10, batch 128", MLP((1, 28, 28), (512, 512), 10, seed=0),
           torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)))
    yield ("CNN 1x28x28 conv 16-32, batch 128", CNN((1, 28, 28), (16, 32), 10, seed=0),
           torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)))


def step_times(model, x, y, blocks: int, inv_freq: int = 100):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    makers = {
        "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9),
        "kfac": lambda m: KFAC(m, lr=1e-4, momentum=0.9, damping=0.1, update_freq=10, inv_freq=inv_freq),
        "ekfac": lambda m: EKFAC(m, lr=1e-4, momentum=0.9, damping=0.1, update_freq=10, inv_freq=inv_freq),
    }
    opts = {}
    for name, make in makers.items():
        model.load_state_dict(state)
        opts[name] = make(model)  # every optimizer hooks the model; only the active one's hooks record
    times = {n: [] for n in makers}
    for _ in range(blocks + 1):  # the first block is a warm-up
        for name, opt in opts.items():
            for other, o in opts.items():
                if hasattr(o, "_capture"):
                    o._capture.active = other == name and o._needs_stats(o._step_count)
            t = time.perf_counter()
            for _ in range(inv_freq):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
            times[name].append((time.perf_counter() - t) / inv_freq)
        model.load_state_dict(state)
    for o in opts.values():
        if hasattr(o, "remove_hooks"):
            o.remove_hooks()
    return {n: statistics.median(t[1:]) for n, t in times.items()}


def best_of(fn, repeats=3):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def libraries(model, x, y, damping=0.1):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    out = {}
    out["geomopt KFAC (empirical)"] = (best_of(lambda: compute_kfac(model, (x, y))),
                                        best_of(lambda: compute_kfac(model, (x, y)).solve(grad, damping, factored=True)))
    out["geomopt EKFAC (empirical)"] = (best_of(lambda: compute_ekfac(model, (x, y))),
                                         best_of(lambda: compute_ekfac(model, (x, y)).solve(grad, damping)))
    out["geomopt EKFAC (ggn, C passes)"] = (best_of(lambda: compute_ekfac(model, (x, y), fisher="ggn")),
                                             best_of(lambda: compute_ekfac(model, (x, y), fisher="ggn").solve(grad, damping)))
    try:
        from curvlinops import KFACInverseLinearOperator, KFACLinearOperator
        params = [p for p in model.parameters()]

        def build():
            return KFACLinearOperator(model, nn.CrossEntropyLoss(), params, [(x, y)], fisher_type="empirical",
                                      check_deterministic=False)

        def solve():
            inv = KFACInverseLinearOperator(build(), damping=damping)
            return inv @ [p.grad for p in params]
        out["curvlinops KFAC (empirical)"] = (best_of(build), best_of(solve))
    except Exception as exc:  # noqa: BLE001 - report, do not hide
        out["curvlinops KFAC"] = f"failed: {type(exc).__name__}: {exc}"[:200]
    try:
        from nngeometry.metrics import FIM
        from nngeometry.object import PMatEKFAC
        from nngeometry.object.vector import PVector
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))

        def build():
            f = FIM(model, loader, PMatEKFAC, variant="classif_logits")
            f.update_diag(loader)
            return f

        def solve():
            return build().solvePVec(PVector.from_model_grad(model), regul=damping)
        out["nngeometry EKFAC (classif_logits)"] = (best_of(build), best_of(solve))
    except Exception as exc:  # noqa: BLE001
        out["nngeometry EKFAC"] = f"failed: {type(exc).__name__}: {exc}"[:200]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}\n")
    print("| model | optimizer | amortized step (ms) | ratio to SGD |\n|---|---|---|---|")
    for name, model, x, y in cases():
        t = step_times(model, x, y, args.blocks)
        for opt, v in t.items():
            print(f"| {name} | {opt} | {1000 * v:.2f} | {v / t['sgd']:.3f} |", flush=True)
    print("\n| model | implementation | build curvature (ms) | build + preconditioned gradient (ms) |\n|---|---|---|---|")
    for name, model, x, y in cases():
        for lib, v in libraries(model, x, y).items():
            if isinstance(v, str):
                print(f"| {name} | {lib} | {v} | |", flush=True)
            else:
                print(f"| {name} | {lib} | {1000 * v[0]:.1f} | {1000 * v[1]:.1f} |", flush=True)
    print(f"\nMachine after: {machine()}")


if __name__ == "__main__":
    main()
