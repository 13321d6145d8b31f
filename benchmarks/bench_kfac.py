"""K-FAC / EKFAC cost, side by side in one process.

Part 1 -- per-step time over SGD. A step = zero_grad + forward + cross-entropy + backward +
optimizer.step() (statistics hooks included). update_freq=10, inv_freq=100: a cycle of `inv_freq`
steps holds exactly one inversion and ten factor updates, so the mean step over whole cycles is the
amortized cost. The contenders run on the same model and batch and take turns cycle by cycle; median
over `--blocks` cycles each (this 2-core virtual machine's speed drifts by tens of percent over
minutes, so ratios move by about 10% from run to run: compare code versions by alternating runs).
Contenders: SGD with momentum, K-FAC, EKFAC (the paper's algorithm: diagonal every step), EKFAC with
`diag_freq=10`.

Part 2 -- time to build the curvature on one batch and to compute the preconditioned gradient,
on the same model and batch, against the public implementations (installed by the `bench` extra):
- geomopt: `compute_kfac` + `.solve(grad, damping, factored=True)` (pi-damped Cholesky inverses, as the
  optimizer); `compute_ekfac` (hooks, eigh) + `.solve(grad, damping)`;
- curvlinops `KFACLinearOperator` (empirical Fisher, expand) + `KFACInverseLinearOperator`;
- nngeometry `FIM(representation=PMatEKFAC)` (exact expectation over classes, C backward passes)
  + `solvePVec`; geomopt's counterpart there is `fisher='ggn'`.

Part 1 and 1b (the MLP over batch sizes, `--batches`, default 128,512,2048) print beside each
measured ratio what the algorithm cannot avoid: the multiply-adds every step must do besides SGD's
forward + backward (`3 B T d_out d_in` per layer, `T` positions per example: 1 for a Linear layer,
output pixels for a convolution), as a ratio to SGD's, and the floor of the time ratio they imply
at this machine's peak matmul rate, `1 + extra / (peak * SGD step time)` (no kernel beats the peak,
so no implementation of the algorithm can go below it). Counted per layer (`d_in` with the bias):
- K-FAC: `G^-1 M A^-1`, `d_out d_in (d_out + d_in)`, plus the factors every `update_freq` steps,
  `B T (d_in^2 + d_out^2) / update_freq`;
- EKFAC: the back-rotation `U_G X U_A^T`, `d_out d_in (d_out + d_in)`, the factors as K-FAC, the
  every-step eigenbasis diagonal (Linear: `a U_A`, `g U_G` and the product of their squares,
  `B (d_in^2 + d_out^2 + d_out d_in)`; convolution: the per-example gradients `B T d_out d_in` and
  each side's rotation in the cheaper order, as `eigenbasis_diagonal`), and the rotation into the
  eigenbasis (Linear: `min(B d_out d_in, d_out d_in (d_out + d_in))`, from the diagonal's rotated
  examples; convolution: dense);
- EKFAC with `diag_freq=10`: the diagonal on one step in ten; on the others the rotation in is dense,
  or for a Linear layer, if cheaper, from its rotated examples `B (d_in^2 + d_out^2 + d_out d_in)`.
Eigendecompositions and inverses (every `inv_freq` steps) and elementwise work are left out, so the
floors are optimistic.

Usage: python benchmarks/bench_kfac.py [--threads 1] [--blocks 3] [--rounds 3] [--batches 128,512,2048]
       [--sweep-blocks 1] [--models mlp,cnn] [--contenders sgd,kfac,ekfac,...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomopt.curvature import compute_ekfac, compute_kfac, layer_handler
from geomopt.nn import CNN, MLP
from geomopt.optim import EKFAC, KFAC

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402


def layer_shapes(model: nn.Module, x: Tensor) -> list[tuple[int, int, int]]:
    """``(d_out, d_in, T)`` of every supported layer (``d_in`` with the bias column, ``T`` positions per
    example), from one forward pass."""
    shapes = []

    def hook(module, inputs, output):
        d_out, d_in = layer_handler(module).shape(module)
        shapes.append((d_out, d_in, output[0, 0].numel() if output.dim() == 4 else 1))
    handles = [m.register_forward_hook(hook) for m in model.modules() if layer_handler(m) is not None]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


def extra_macs(shapes: list[tuple[int, int, int]], batch: int, update_freq: int = 10) -> dict[str, float]:
    """Multiply-adds per step that each algorithm must do besides SGD's forward + backward
    (``3 B T d_out d_in`` per layer, under "sgd_macs"); see the module docstring."""
    out = {n: 0.0 for n in STEP_MAKERS}
    sgd = 0.0
    b = batch
    for d_out, d_in, t in shapes:
        sgd += 3 * b * t * d_out * d_in
        solve = d_out * d_in * (d_out + d_in)  # G^-1 M A^-1, or one dense rotation (U_G^T M U_A or back)
        factors = b * t * (d_in * d_in + d_out * d_out) / update_freq
        if t == 1:  # rotated examples (a U_A, g U_G), their squares' product; rotation in from them
            rotated = b * (d_in * d_in + d_out * d_out)
            diag = rotated + b * d_out * d_in
            rotate_in = min(b * d_out * d_in, solve)  # on diagonal steps, from the rotated examples
            rotate_off = min(rotated + b * d_out * d_in, solve)  # between them, rotating the examples first
        else:  # per-example gradients, each side rotated in the cheaper order (eigenbasis_diagonal)
            diag = (b * t * d_out * d_in + (b * t * d_in * d_in if t <= d_out else b * d_out * d_in * d_in)
                    + (b * t * d_out * d_out if t <= d_in else b * d_in * d_out * d_out))
            rotate_in = rotate_off = solve
        out["kfac"] += solve + factors
        for name, diag_freq in (("ekfac", 1), ("ekfac diag_freq=10", 10)):
            # back-rotation every step; the diagonal and the rotation in on diagonal steps, the rotation between
            out[name] += solve + factors + ((diag_freq - 1) * rotate_off + rotate_in + diag) / diag_freq
    return {"sgd_macs": sgd, **out}


def peak_mac_rate(repeats: int = 5) -> float:
    """Multiply-adds per second of float32 matmuls on this machine: the best of square and tall shapes
    (best of ``repeats`` each; the rate drifts by tens of percent with the machine's load, so it is
    measured again before every table and the largest value so far is used)."""
    rates = []
    for m, k, n in ((1024, 1024, 1024), (2048, 2048, 2048), (512, 2048, 784)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        rates.append(m * k * n / best_of(lambda: a @ b, repeats))
    return max(rates)


def floors(model: nn.Module, x: Tensor, sgd_seconds: float, peak: float) -> dict[str, tuple[float, float]]:
    """Per contender: (extra multiply-adds / SGD's, floor of the step-time ratio at the peak GEMM rate =
    1 + extra multiply-adds / (peak * SGD's measured step time)); the peak is at least SGD's own rate."""
    macs = extra_macs(layer_shapes(model, x), x.shape[0])
    sgd = macs.pop("sgd_macs")
    peak = max(peak, sgd / sgd_seconds)
    return {k: (v / sgd, 1 + v / (peak * sgd_seconds)) for k, v in macs.items()}


def cases():
    torch.manual_seed(0)
    yield ("MLP 784-512-512-10, batch 128", MLP((1, 28, 28), (512, 512), 10, seed=0),
           torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)))
    yield ("CNN 1x28x28 conv 16-32, batch 128", CNN((1, 28, 28), (16, 32), 10, seed=0),
           torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)))


STEP_MAKERS = {
    "sgd": lambda m, f: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9),
    "kfac": lambda m, f: KFAC(m, lr=1e-4, momentum=0.9, damping=0.1, update_freq=10, inv_freq=f),
    "ekfac": lambda m, f: EKFAC(m, lr=1e-4, momentum=0.9, damping=0.1, update_freq=10, inv_freq=f),
    "ekfac diag_freq=10": lambda m, f: EKFAC(m, lr=1e-4, momentum=0.9, damping=0.1, update_freq=10, inv_freq=f,
                                             diag_freq=10),
}


def step_times(model, x, y, blocks: int, inv_freq: int = 100, contenders=None):
    """Amortized step time per contender: median over ``blocks`` cycles of ``inv_freq`` steps (after a
    warm-up cycle), the contenders taking turns cycle by cycle. (Turns of 10 steps instead gave the same
    ratios within this machine's run-to-run noise, and are further from real use.)"""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opts = {}
    for name, make in STEP_MAKERS.items():
        if contenders and name not in contenders:
            continue
        model.load_state_dict(state)
        opts[name] = make(model, inv_freq)  # every optimizer hooks the model; only the active one's hooks record
    times = {n: [] for n in opts}
    for _ in range(blocks + 1):  # the first cycle is a warm-up
        for name, opt in opts.items():
            for o in opts.values():
                if hasattr(o, "_capture"):
                    o._capture.active = False
            if hasattr(opt, "_arm"):
                opt._arm()  # records exactly when its next step needs statistics
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


def print_step_table(label: str, model, x, y, blocks: int, peak: float, contenders=None) -> float:
    """Print one table's rows; returns the peak rate used (at least ``peak``)."""
    peak = max(peak, peak_mac_rate())
    t = step_times(model, x, y, blocks, contenders=contenders)
    bounds = floors(model, x, t["sgd"], peak)
    for opt, v in t.items():
        mac, floor = bounds[opt]
        print(f"| {label} | {opt} | {1000 * v:.2f} | {v / t['sgd']:.3f} | {mac:.2f} | {floor:.2f} |", flush=True)
    return peak


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
    parser.add_argument("--rounds", type=int, default=3, help="rounds of part 2 (best per contender; 0 skips it)")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--models", default="mlp,cnn", help="models of part 1 (mlp, cnn)")
    parser.add_argument("--contenders", default=",".join(STEP_MAKERS),
                        help="optimizers of part 1 and 1b (sgd always runs; e.g. 'sgd,ekfac' to time another "
                             "checkout's code through PYTHONPATH)")
    parser.add_argument("--batches", default="128,512,2048", help="MLP batch sizes of part 1b ('' to skip)")
    parser.add_argument("--sweep-blocks", type=int, default=1, help="timed blocks per batch size in part 1b")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {describe_machine()}\n")
    peak = 0.0
    header = ("| {} | optimizer | amortized step (ms) | ratio to SGD | extra multiply-adds / SGD's | "
              "floor of the ratio at peak rate |\n|---|---|---|---|---|---|")
    print(header.format("model"))
    contenders = {"sgd", *args.contenders.split(",")}
    unknown = contenders - set(STEP_MAKERS)
    if unknown:
        parser.error(f"unknown contender(s) {sorted(unknown)}; choose from {list(STEP_MAKERS)}")
    models = set(args.models.split(","))
    for name, model, x, y in cases():
        if name.split()[0].lower() in models:
            peak = print_step_table(name, model, x, y, args.blocks, peak, contenders)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if batches:
        print("\n" + header.format("MLP 784-512-512-10 batch"))
    for batch in batches:
        torch.manual_seed(0)
        model = MLP((1, 28, 28), (512, 512), 10, seed=0)
        x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
        peak = print_step_table(str(batch), model, x, y, args.sweep_blocks, peak, contenders)
    if args.rounds:
        print("\n| model | implementation | build curvature (ms) | build + preconditioned gradient (ms) |\n|---|---|---|---|")
    for name, model, x, y in cases() if args.rounds else ():
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
    print(f"\nPeak float32 matmul rate used for the floors: {2 * peak / 1e9:.1f} GFLOP/s ({args.threads} thread(s))")
    print(f"Machine after: {describe_machine()}")


if __name__ == "__main__":
    main()
