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

Part 1b -- the MLP over batch sizes (`--batches`, default 128,512,2048), with the arithmetic lower
bound of the ratio beside the measured one: multiply-adds that every step of the algorithm must do
over SGD's forward + backward (~3 B d_out d_in per layer). K-FAC: `G^-1 M A^-1`, `d_out d_in (d_out +
d_in)`, plus the factors every `update_freq` steps, `B (d_in^2 + d_out^2) / update_freq`; EKFAC: the
back-rotation `U_G X U_A^T`, `d_out d_in (d_out + d_in)`, plus the every-step eigenbasis diagonal,
`B (d_in^2 + d_out^2 + d_out d_in)` (the rotation of the gradient into the eigenbasis is left out:
it is formed from the diagonal's rotated per-example quantities when that is cheaper). Eigendecompositions and
inverses (every `inv_freq` steps) and elementwise work are left out, so the bound is optimistic.

Usage: python benchmarks/bench_kfac.py [--threads 1] [--blocks 3] [--rounds 3] [--batches 128,512,2048] [--sweep-blocks 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geomopt.curvature import compute_ekfac, compute_kfac
from geomopt.nn import CNN, MLP
from geomopt.optim import EKFAC, KFAC

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402


def lower_bounds(model: nn.Module, batch: int, update_freq: int = 10) -> dict[str, float]:
    """Arithmetic lower bounds of the K-FAC / EKFAC step-time ratio to SGD (see the module docstring)."""
    shapes = [(m.out_features, m.in_features + (m.bias is not None)) for m in model.modules() if isinstance(m, nn.Linear)]
    sgd = sum(3 * batch * o * i for o, i in shapes)
    rot = sum(o * i * (o + i) for o, i in shapes)
    factors = sum(batch * (o * o + i * i) for o, i in shapes)
    diag = sum(batch * (o * o + i * i + o * i) for o, i in shapes)
    return {"sgd": 1.0, "kfac": 1 + (rot + factors / update_freq) / sgd, "ekfac": 1 + (rot + diag) / sgd}


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
    parser.add_argument("--rounds", type=int, default=3, help="rounds of part 2 (best per contender)")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--batches", default="128,512,2048", help="MLP batch sizes of part 1b ('' to skip)")
    parser.add_argument("--sweep-blocks", type=int, default=1, help="timed blocks per batch size in part 1b")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {describe_machine()}\n")
    print("| model | optimizer | amortized step (ms) | ratio to SGD |\n|---|---|---|---|")
    for name, model, x, y in cases():
        t = step_times(model, x, y, args.blocks)
        for opt, v in t.items():
            print(f"| {name} | {opt} | {1000 * v:.2f} | {v / t['sgd']:.3f} |", flush=True)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if batches:
        print("\n| MLP 784-512-512-10 batch | optimizer | amortized step (ms) | ratio to SGD | arithmetic lower bound |"
              "\n|---|---|---|---|---|")
    for batch in batches:
        torch.manual_seed(0)
        model = MLP((1, 28, 28), (512, 512), 10, seed=0)
        x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
        t = step_times(model, x, y, args.sweep_blocks)
        bounds = lower_bounds(model, batch)
        for opt, v in t.items():
            print(f"| {batch} | {opt} | {1000 * v:.2f} | {v / t['sgd']:.3f} | {bounds[opt]:.2f} |", flush=True)
    print("\n| model | implementation | build curvature (ms) | build + preconditioned gradient (ms) |\n|---|---|---|---|")
    for name, model, x, y in cases():
        # rounds of all contenders, best per contender: the first round in a process pays one-off costs
        # (allocator growth, library initialization) that would fall on whichever contender runs first
        rounds = [libraries(model, x, y) for _ in range(args.rounds)]
        for lib, v in rounds[0].items():
            if not isinstance(v, str):
                v = tuple(min(r[lib][i] for r in rounds) for i in range(2))
            if isinstance(v, str):
                print(f"| {name} | {lib} | {v} | |", flush=True)
            else:
                print(f"| {name} | {lib} | {1000 * v[0]:.1f} | {1000 * v[1]:.1f} |", flush=True)
    print(f"\nMachine after: {describe_machine()}")


if __name__ == "__main__":
    main()
