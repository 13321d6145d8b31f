"""K-FAC / EKFAC cost, side by side in one process.

Part 1 -- per-step time over SGD. A step = zero_grad + forward + cross-entropy + backward +
optimizer.step() (statistics hooks included). update_freq=10, inv_freq=100: a cycle of `inv_freq`
steps holds exactly one inversion and ten factor updates, so the mean step over whole cycles is the
amortized cost. Times are CPU seconds of this process (`time.process_time`, one torch thread), so other
processes on a shared machine count only through what they do to this one's speed. The contenders run
on the same model and batch and take turns cycle by cycle; each ratio is a contender's cycle over SGD's
cycle of the same round, min / median / max over `--blocks` rounds.
Contenders: SGD with momentum, K-FAC, EKFAC (the paper's algorithm: diagonal every step), EKFAC with
`diag_freq=10`.

The floor of each ratio is what the algorithm cannot avoid, timed on this machine in the same process:
`(SGD's step + floor) / SGD's step`, where the floor is the CPU time of the operations listed in
`floor_ops` (the batch factors every `update_freq` steps, the eigendecompositions or Cholesky inverses
every `inv_freq` steps, K-FAC's two products `G^-1 M A^-1`, EKFAC's back-rotation `U_G X U_A^T`, its
per-example projection to the eigenbasis, diagonal and rotation in), each run on random float32
inputs of the layer's exact shapes (mean of 3 runs, timed right after the contender's cycle in every
round, so that both see the same machine) and weighted by how often it runs. Elementwise
work is left out, so the floor is optimistic; `--show-floor` prints every operation with its time.
The column "extra multiply-adds / SGD's" counts the same products (`3 B T d_out d_in` per layer for
SGD's forward + backward).

Part 2 -- time to build the curvature on one batch and to compute the preconditioned gradient,
on the same model and batch, against the public implementations (installed by the `bench` extra):
- geomopt: `compute_kfac` + `.solve(grad, damping, factored=True)` (pi-damped Cholesky inverses, as the
  optimizer); `compute_ekfac` (hooks, eigh) + `.solve(grad, damping)`;
- curvlinops `KFACLinearOperator` (empirical Fisher, expand) + `KFACInverseLinearOperator`;
- nngeometry `FIM(representation=PMatEKFAC)` (exact expectation over classes, C backward passes)
  + `solvePVec`; geomopt's counterpart there is `fisher='ggn'`.

Part 1b: the MLP over batch sizes (`--batches`, default 128,512,2048), the same columns.

Usage: python benchmarks/bench_kfac.py [--threads 1] [--blocks 3] [--rounds 3] [--batches 128,512,2048]
       [--sweep-blocks 1] [--models mlp,cnn] [--contenders sgd,kfac,ekfac,...] [--show-floor]
Quick (about 2 minutes): python benchmarks/bench_kfac.py --rounds 0 --batches '' --blocks 3 --contenders sgd,ekfac
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
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
    """Multiply-adds per step of the work each algorithm must do besides SGD's forward + backward
    (``3 B T d_out d_in`` per layer, under "sgd_macs"): the products of :func:`floor_ops`, each weighted by
    how often it runs; eigendecompositions and inverses are left out here (not in the timed floor)."""
    out = {n: 0.0 for n in STEP_MAKERS}
    sgd = sum(3 * batch * t * d_out * d_in for d_out, d_in, t in shapes)
    for name in out:
        for _, macs, weight, _ in floor_ops(shapes, batch, name, update_freq=update_freq, inv_freq=None):
            out[name] += macs * weight
    return {"sgd_macs": sgd, **out}


def floor_ops(shapes: list[tuple[int, int, int]], batch: int, name: str, *, update_freq: int = 10,
              inv_freq: int | None = 100) -> list[tuple[str, float, float, Callable[[], Callable[[], object]]]]:
    """The work optimizer ``name`` must do per amortized step besides SGD's, as ``(label, multiply-adds,
    weight, make)``: ``make()`` returns a function running the operation on random float32 inputs of the
    exact shapes (``weight`` = runs per step: 1, ``1 / update_freq`` for the factors, ``1 / inv_freq`` for
    the eigendecompositions / inverses, which are timed but have no multiply-add count; ``inv_freq=None``
    leaves them out). Per layer (``d_in`` with the bias, ``T`` positions per example, ``B`` examples):

    - every Kronecker optimizer: the batch factors ``a^T a`` ``(d_in, BT) x (BT, d_in)`` and ``g^T g``;
    - K-FAC: ``G^-1 M A^-1`` (two products) and the two Cholesky inverses;
    - EKFAC: the back-rotation ``U_G X U_A^T`` (two products), the two eigendecompositions, and on every
      diagonal step (every step, or one in ``diag_freq``): Linear (T = 1): the rotated examples
      ``g U_G``, ``a U_A``, the diagonal ``(gU_G)^2^T (aU_A)^2`` and the rotation in from them
      ``(gU_G)^T (aU_A)`` (``B d_out d_in`` each); convolution: the per-example gradients as one batched
      product ``(B, d_out, T) x (B, T, d_in)``, each side rotated in the cheaper order (as
      :func:`geomopt.curvature.eigenbasis_diagonal`), and the dense rotation in ``U_G^T M U_A``;
    - EKFAC ``diag_freq=10``: between diagonal steps the rotation in is dense, or for a Linear layer,
      if cheaper, the rotated examples and ``(gU_G)^T (aU_A)``.
    Elementwise work (squares, the division by ``s + damping``, momentum) is left out: the floor is
    optimistic.
    """
    ops = []
    if name == "sgd":
        return ops
    r = torch.randn
    for li, (d_out, d_in, t) in enumerate(shapes):
        b, bt = batch, batch * t

        def gemm(m, k, n, label, weight):
            ops.append((f"layer {li} {label} ({m}x{k})@({k}x{n})", m * k * n, weight,
                        lambda: (lambda x=r(m, k), y=r(k, n): x @ y)))

        def eig(d, label):
            if inv_freq is None:
                return
            def make():
                x = r(2 * d, d)
                spd = x.T @ x / (2 * d)
                if name == "kfac":
                    return lambda: torch.cholesky_inverse(torch.linalg.cholesky(spd + 0.1 * torch.eye(d)))
                return lambda: torch.linalg.eigh(spd)
            ops.append((f"layer {li} {label} ({d}x{d})", 0.0, 1 / inv_freq, make))

        gemm(d_in, bt, d_in, "factor a^T a", 1 / update_freq)
        gemm(d_out, bt, d_out, "factor g^T g", 1 / update_freq)
        gemm(d_out, d_out, d_in, "G^-1 M" if name == "kfac" else "U_G X", 1)
        gemm(d_out, d_in, d_in, "(.) A^-1" if name == "kfac" else "(.) U_A^T", 1)
        eig(d_in, "inverse of A" if name == "kfac" else "eigh A")
        eig(d_out, "inverse of G" if name == "kfac" else "eigh G")
        if name == "kfac":
            continue
        diag_freq = 10 if "diag_freq=10" in name else 1
        w, off = 1 / diag_freq, 1 - 1 / diag_freq
        if t == 1:
            rotated = b * (d_in * d_in + d_out * d_out)
            gemm(b, d_out, d_out, "g U_G", w)
            gemm(b, d_in, d_in, "a U_A", w)
            gemm(d_out, b, d_in, "diagonal (gU_G)^2^T (aU_A)^2", w)
            dense = d_out * d_in * (d_out + d_in)
            if min(b * d_out * d_in, dense) == dense:  # the rotation in on diagonal steps
                gemm(d_out, d_out, d_in, "rotation in U_G^T M", w)
                gemm(d_out, d_in, d_in, "rotation in (.) U_A", w)
            else:
                gemm(d_out, b, d_in, "rotation in (gU_G)^T (aU_A)", w)
            if off and rotated + b * d_out * d_in < dense:
                gemm(b, d_out, d_out, "g U_G (between)", off)
                gemm(b, d_in, d_in, "a U_A (between)", off)
                gemm(d_out, b, d_in, "rotation in (gU_G)^T (aU_A) (between)", off)
            elif off:
                gemm(d_out, d_out, d_in, "rotation in U_G^T M (between)", off)
                gemm(d_out, d_in, d_in, "rotation in (.) U_A (between)", off)
            continue
        ops.append((f"layer {li} per-example gradients ({b}: {d_out}x{t} @ {t}x{d_in})", b * t * d_out * d_in, w,
                    lambda b=b, t=t, d_out=d_out, d_in=d_in: (lambda x=r(b, d_out, t), y=r(b, t, d_in): x @ y)))
        if t <= d_out:
            gemm(bt, d_in, d_in, "a U_A", w)
        else:
            gemm(b * d_out, d_in, d_in, "M_n U_A", w)
        if t <= d_in:
            gemm(bt, d_out, d_out, "g U_G", w)
        else:
            ops.append((f"layer {li} U_G^T M_n ({b}: {d_out}x{d_out} @ {d_out}x{d_in})", b * d_out * d_out * d_in, w,
                        lambda b=b, d_out=d_out, d_in=d_in: (lambda x=r(d_out, d_out), y=r(b, d_out, d_in): x @ y)))
        gemm(d_out, d_out, d_in, "rotation in U_G^T M", 1)
        gemm(d_out, d_in, d_in, "rotation in (.) U_A", 1)
    return ops


def floor_seconds(ops: list, repeats: int = 3, show: str | None = None) -> float:
    """CPU seconds per amortized step of the operations ``ops`` (from :func:`floor_ops`, each made once
    and warmed up), each the mean of ``repeats`` runs -- a mean, as the step times are means over a
    cycle, so that both see the same interference from the machine's other processes -- times its
    weight. ``show``: print every operation with its time, prefixed by this label."""
    total = 0.0
    for label, macs, weight, fn in ops:
        t = time.process_time()
        for _ in range(repeats):
            fn()
        sec = (time.process_time() - t) / repeats
        total += weight * sec
        if show:
            rate = f", {2 * macs / sec / 1e9:.0f} GFLOP/s" if macs else ""
            print(f"    {show}: {label}: {1000 * sec:.3f} ms x {weight:g}{rate}", flush=True)
    return total


def cases():
    torch.manual_seed(0)
    yield ("MLP 784-512-512-10, batch 128", MLP((1, 28, 28), (512, 512), 10, seed=0),
           torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)))
    yield ("CNN 1x28x28 conv 16-32, batch 128", CNN((1, 28, 28), (16, 32), 10, seed=0),
           torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)))


STEP_MAKERS = {
    "sgd": lambda m, f: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9),
    "kfac": lambda m, f: KFAC(m, lr=1e-4, momentum=0.9, damping=0.1, kl_clip=None, update_freq=10, inv_freq=f),
    "ekfac": lambda m, f: EKFAC(m, lr=1e-4, momentum=0.9, damping=0.1, kl_clip=None, update_freq=10, inv_freq=f),
    "ekfac diag_freq=10": lambda m, f: EKFAC(m, lr=1e-4, momentum=0.9, damping=0.1, kl_clip=None, update_freq=10,
                                             inv_freq=f, diag_freq=10),
}


def step_times(model, x, y, blocks: int, inv_freq: int = 100, contenders=None,
               show_floor: bool = False) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """CPU seconds (``time.process_time``) per amortized step of each contender in each of ``blocks`` cycles
    of ``inv_freq`` steps (after a warm-up cycle), the contenders taking turns cycle by cycle, so that
    block ``i`` of every contender ran at about the same time; and, right after each cycle, the
    contender's :func:`floor_seconds` (shown for the last block with ``show_floor``). (Turns of 10 steps
    instead gave the same ratios within this machine's run-to-run noise, and are further from real use.)"""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opts = {}
    for name, make in STEP_MAKERS.items():
        if contenders and name not in contenders:
            continue
        model.load_state_dict(state)
        opts[name] = make(model, inv_freq)  # every optimizer hooks the model; only the active one's hooks record
    times = {n: [] for n in opts}
    shapes = layer_shapes(model, x)
    ops = {n: [(label, macs, w, make()) for label, macs, w, make in floor_ops(shapes, x.shape[0], n, inv_freq=inv_freq)]
           for n in opts}
    floors = {n: [] for n in opts}
    for block in range(blocks + 1):  # the first cycle is a warm-up
        for name, opt in opts.items():
            for o in opts.values():
                if hasattr(o, "geometry"):
                    o.geometry.recorder.capture.active = False
            if hasattr(opt, "_arm"):
                opt._arm()  # records exactly when its next step needs statistics
            t = time.process_time()
            for _ in range(inv_freq):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
            times[name].append((time.process_time() - t) / inv_freq)
            floors[name].append(floor_seconds(ops[name], show=name if show_floor and block == blocks else None))
        model.load_state_dict(state)
    for o in opts.values():
        if hasattr(o, "remove_hooks"):
            o.remove_hooks()
    return {n: t[1:] for n, t in times.items()}, {n: f[1:] for n, f in floors.items()}


def print_step_table(label: str, model, x, y, blocks: int, contenders=None, show_floor: bool = False) -> None:
    """One table's rows: per contender its median step; its step over SGD's of the same block (min / median
    / max over blocks); the floor of that ratio, ``1 + floor / SGD's step`` with the floor timed right after
    the contender's cycle (median over blocks); and the median over blocks of ratio / floor."""
    t, floor = step_times(model, x, y, blocks, contenders=contenders, show_floor=show_floor)
    macs = extra_macs(layer_shapes(model, x), x.shape[0])
    for opt, v in t.items():
        ratios = [a / b for a, b in zip(v, t["sgd"])]
        floors = [1 + f / b for f, b in zip(floor[opt], t["sgd"])]
        print(f"| {label} | {opt} | {1000 * statistics.median(v):.2f} | {min(ratios):.2f} / "
              f"**{statistics.median(ratios):.2f}** / {max(ratios):.2f} | {macs[opt] / macs['sgd_macs']:.2f} | "
              f"{min(floors):.2f} / {statistics.median(floors):.2f} / {max(floors):.2f} | "
              f"**{statistics.median(r / f for r, f in zip(ratios, floors)):.2f}** |", flush=True)


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
    parser.add_argument("--show-floor", action="store_true", help="print every operation of the floors and its time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {describe_machine()}\n")
    header = ("| {} | optimizer | amortized step (CPU ms, median) | ratio to SGD (min / median / max) | "
              "extra multiply-adds / SGD's | floor of the ratio (min / median / max) | ratio / floor (median) |\n|---|---|---|---|---|---|---|")
    print(header.format("model"))
    contenders = {"sgd", *args.contenders.split(",")}
    unknown = contenders - set(STEP_MAKERS)
    if unknown:
        parser.error(f"unknown contender(s) {sorted(unknown)}; choose from {list(STEP_MAKERS)}")
    models = set(args.models.split(","))
    for name, model, x, y in cases():
        if name.split()[0].lower() in models:
            print_step_table(name, model, x, y, args.blocks, contenders, args.show_floor)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if batches:
        print("\n" + header.format("MLP 784-512-512-10 batch"))
    for batch in batches:
        torch.manual_seed(0)
        model = MLP((1, 28, 28), (512, 512), 10, seed=0)
        x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
        print_step_table(str(batch), model, x, y, args.sweep_blocks, contenders, args.show_floor)
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
    print(f"Machine after: {describe_machine()}")


if __name__ == "__main__":
    main()
