"""Every geometry of the library on one table: SGD, Adam, Path-SGD, K-FAC, EKFAC, Shampoo, SOAP and Muon on one
MLP and one CNN (Fashion-MNIST, or the embedded digits with ``--quick``).

Part 1 -- training. Each (model, optimizer) has its learning rate selected on a validation split (10% of the
training subset, never the test set) by the library's tuning machinery (:func:`geomopt.experiments.tuning.tune`:
mean over seeds of the last epochs' validation loss, a grid extended past a winning edge up to
--max-extensions times, default once), every run through
``geomopt train``'s engine (`TrainConfig`, the registry's optimizer with its defaults). At the selected rate,
means over the seeds: the training loss after each epoch, the validation loss and the test accuracy at the end,
seconds per epoch (wall clock, so the machine's load counts, and each epoch's evaluation on the training, validation
and test sets), and the training loss each method had reached when SGD's run ended (linear in time between the
evaluations at the start and at each epoch's end).

Part 2 -- step cost. A step = zero_grad + forward + cross-entropy + backward + optimizer.step() on one batch of
the same model, each contender (at its selected rate) taking turns round by round, `--steps` steps a turn (a
whole number of Shampoo's and SOAP's refresh cycles; rounds x steps = 100 holds one K-FAC/EKFAC inversion
cycle), CPU seconds of this process (`time.process_time`, one torch thread); the ratio of the total times over
all rounds to SGD's (amortized). The floor is `(SGD's step + the work the method cannot avoid) / SGD's step`,
the work timed in the same process on random float32 inputs of the model's exact shapes and weighted by how
often it runs:
- Path-SGD: the path scales, a forward and a backward matrix-vector product per layer with the squared weights;
- K-FAC / EKFAC: the operations of `bench_kfac.floor_ops` (factors every 10 steps, inverses / eigendecompositions
  every 100, the preconditioning products; EKFAC's eigenbasis diagonal every step);
- Shampoo: ``G G^T`` and ``G^T G``, the products ``L^-1/4 G R^-1/4`` every step, two eigendecompositions and
  the roots' assembly every `precondition_freq` steps (default 10);
- SOAP: the statistics, the rotations of ``G`` and ``M`` into the eigenbasis and of the direction out (six
  products), two eigendecompositions every 10 steps;
- Muon: 5 Newton-Schulz iterations in bfloat16 (three products each, on the matrix turned wide).
Elementwise work is left out, so each floor is optimistic. The machine and its load are printed.

Usage: python benchmarks/bench_geometry.py [--data fashion-mnist] [--train-size 6000] [--epochs 3] [--seeds 0,1]
       [--jobs 1] [--out runs-bench-geometry] [--optimizers sgd,adam,...] [--models mlp,cnn]
Quick (digits, one seed, about 2 minutes): python benchmarks/bench_geometry.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from geomopt.data import load_dataset
from geomopt.experiments.tuning import Problem, tune
from geomopt.optim import build_optimizer
from geomopt.sweep import Grid
from geomopt.train import TrainConfig, read_metrics
from geomopt.train.run import build_run_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kfac import floor_ops as kronecker_floor_ops  # noqa: E402
from bench_kfac import layer_shapes  # noqa: E402
from machine import describe_machine  # noqa: E402

OPTIMIZERS = ("sgd", "adam", "path-sgd", "kfac", "ekfac", "shampoo", "soap", "muon")
GRIDS = {"sgd": (0.03, 0.1, 0.3), "adam": (3e-4, 1e-3, 3e-3), "path-sgd": (0.01, 0.03, 0.1),
         "kfac": (0.01, 0.03, 0.1), "ekfac": (0.01, 0.03, 0.1), "shampoo": (3e-4, 1e-3, 3e-3),
         "soap": (1e-3, 3e-3, 1e-2), "muon": (0.01, 0.03, 0.1)}
MODELS = {"mlp": dict(model="mlp", widths=(256, 256)), "cnn": dict(model="cnn", widths=(16, 32))}


def config(args, model: str, optimizer: str, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(**MODELS[model], data=args.data, train_size=args.train_size, val_fraction=0.1,
                       optimizer=optimizer, lr=lr, epochs=args.epochs, batch_size=args.batch_size, seed=seed)


def training_table(args) -> dict[tuple[str, str], float]:
    """Part 1: tune every (model, optimizer), print its row; the selected learning rates."""
    problems = {(m, o): Problem(Grid(GRIDS[o], max_steps=args.max_extensions),
                                lambda lr, seed, m=m, o=o: config(args, m, o, lr, seed), Path(args.out) / m / o)
                for m in args.models for o in args.optimizers}
    tuned = tune(problems, args.seeds, jobs=args.jobs, desc="bench_geometry")
    chosen = {}
    for m in args.models:
        print(f"\n{m} on {args.data} ({args.train_size or 'all'} examples, 10% held out), {args.epochs} epochs, batch "
              f"{args.batch_size}, seeds {list(args.seeds)}: means over seeds at the selected lr")
        curves = {o: [[(r["time"], r["train_loss"]) for r in read_metrics(out) if r.get("kind") == "epoch"]
                      for _, out, _ in tuned[m, o].at()] for o in args.optimizers}
        budget = statistics.mean(c[-1][0] for c in curves["sgd"]) if "sgd" in curves else None
        header = " ".join(f"{'ep' + str(e):>7}" for e in range(1, args.epochs + 1))
        print(f"  {'optimizer':<9} {'lr':>8}  train loss: {header}  {'val loss':>8} {'test acc':>8} "
              f"{'s/epoch':>7} {'loss at SGD time':>16}")
        for o in args.optimizers:
            t = tuned[m, o]
            chosen[m, o] = t.value
            per_epoch = [statistics.mean(c[e][1] for c in curves[o]) for e in range(1, args.epochs + 1)]
            at_budget = [_loss_at(c, budget) for c in curves[o]] if budget is not None else [None]
            seconds = statistics.mean(float(summary["seconds"]) for _, _, summary in t.at())
            edge = "*" if t.selection.edge else " "
            print(f"  {o:<9} {t.value:>8.4g}{edge} {'':>11}" + " ".join(f"{v:>7.4f}" for v in per_epoch)
                  + f"  {statistics.mean(t.metric('val_loss')):>8.4f} {statistics.mean(t.metric('test_acc')):>8.4f}"
                  + f" {seconds / args.epochs:>7.2f} "
                  + (f"{statistics.mean(at_budget):>16.4f}" if None not in at_budget else f"{'-':>16}"))
        print("  (* the selected lr is at the edge of the extended grid)")
    return chosen


def _loss_at(curve: list[tuple[float, float]], seconds: float) -> float | None:
    """The training loss at ``seconds`` of a run, linear between its evaluations (the start, each epoch's end)."""
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if t0 <= seconds <= t1:
            return l0 + (l1 - l0) * (seconds - t0) / max(t1 - t0, 1e-12)
    return curve[-1][1] if seconds >= curve[-1][0] else None


def matrix_floor_ops(model: torch.nn.Module, name: str, refresh: int) -> list:
    """``(label, weight, make)`` for Shampoo / SOAP / Muon on every matrix parameter (``(out, in*kh*kw)``)."""
    ops, r = [], torch.randn

    def gemm(m, k, n, label, weight=1.0, dtype=torch.float32):
        ops.append((f"{label} ({m}x{k})@({k}x{n})", weight,
                    lambda: (lambda x=r(m, k, dtype=dtype), y=r(k, n, dtype=dtype): x @ y)))

    def eigh(d):
        def make():
            x = r(2 * d, d, dtype=torch.float64)
            spd = x.T @ x
            return lambda: torch.linalg.eigh(spd)
        ops.append((f"eigh ({d}x{d}) float64", 1 / refresh, make))

    for p in model.parameters():
        if p.dim() < 2:
            continue
        m, n = p.shape[0], p[0].numel()
        if name in ("shampoo", "soap"):
            gemm(m, n, m, "G G^T")
            gemm(n, m, n, "G^T G")
            eigh(m)
            eigh(n)
        if name == "shampoo":
            gemm(m, m, n, "L^-1/4 G")
            gemm(m, n, n, "(.) R^-1/4")
            gemm(m, m, m, "root assembly", 1 / refresh)
            gemm(n, n, n, "root assembly", 1 / refresh)
        if name == "soap":
            for label in ("Q_L^T G", "Q_L^T M", "Q_L N'"):
                gemm(m, m, n, label)
            for label in ("(.) Q_R", "(.) Q_R", "(.) Q_R^T"):
                gemm(m, n, n, label)
        if name == "muon":
            rows, cols = min(m, n), max(m, n)
            for _ in range(5):
                gemm(rows, cols, rows, "NS X X^T", dtype=torch.bfloat16)
                gemm(rows, rows, rows, "NS A A", dtype=torch.bfloat16)
                gemm(rows, rows, cols, "NS B X", dtype=torch.bfloat16)
    return ops


def floor_work(model: torch.nn.Module, x: torch.Tensor, name: str, opt: torch.optim.Optimizer) -> float:
    """CPU seconds per amortized step of the work ``name`` cannot avoid (module docstring), mean of 3 runs."""
    if name in ("kfac", "ekfac"):
        ops = [(label, weight, make) for label, _, weight, make in
               kronecker_floor_ops(layer_shapes(model, x), x.shape[0], name)]
    elif name == "path-sgd":
        shapes = [(p.shape[0], p[0].numel()) for p in model.parameters() if p.dim() >= 2]
        ops = [(f"path scales ({m}x{n})", 2.0, lambda m=m, n=n: (lambda w=torch.randn(m, n), v=torch.randn(n): w @ v))
               for m, n in shapes]
    else:
        ops = matrix_floor_ops(model, name, opt.defaults.get("precondition_freq", 1)) if name in (
            "shampoo", "soap", "muon") else []
    total = 0.0
    for _, weight, make in ops:
        fn = make()
        fn()
        t = time.process_time()
        for _ in range(3):
            fn()
        total += weight * (time.process_time() - t) / 3
    return total


def step_cost(args, chosen: dict[tuple[str, str], float]) -> None:
    """Part 2: per-step CPU time over SGD's, beside each method's floor."""
    torch.set_num_threads(1)
    for m in args.models:
        cfg = config(args, m, "sgd", 0.1, 0)
        bundle = load_dataset(cfg.data, train_size=cfg.train_size, seed=0, val_fraction=0.1)
        x, y = bundle.train.tensors[0][: args.batch_size], bundle.train.tensors[1][: args.batch_size]
        contenders = {}
        for o in args.optimizers:
            torch.manual_seed(0)
            model = build_run_model(cfg, bundle)
            contenders[o] = (model, build_optimizer(o, model, lr=chosen[m, o]))
        times = {o: [] for o in args.optimizers}
        for _ in range(args.rounds):
            for o, (model, opt) in contenders.items():
                t = time.process_time()
                for _ in range(args.steps):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                    opt.step()
                times[o].append((time.process_time() - t) / args.steps)
        sgd = statistics.median(times["sgd"])
        print(f"\n{m}: step cost over SGD (SGD's step {1000 * sgd:.2f} ms CPU; {args.rounds} rounds of "
              f"{args.steps} steps, ratio of the total times) beside the floor")
        print(f"  {'optimizer':<9} {'ms/step':>8} {'x SGD':>7} {'floor':>7} {'over floor':>10}")
        for o in args.optimizers:
            ratio = sum(times[o]) / sum(times["sgd"])
            floor = (sgd + floor_work(contenders[o][0], x, o, contenders[o][1])) / sgd
            print(f"  {o:<9} {1000 * statistics.median(times[o]):>8.2f} {ratio:>7.2f} {floor:>7.2f} "
                  f"{ratio / floor:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="runs-bench-geometry")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--max-extensions", type=int, default=1,
                        help="times the lr grid may be extended past an edge that wins (default 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="digits (embedded), one seed, 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.data, args.train_size, args.epochs, args.seeds, args.rounds = "digits", None, 2, "0", 2
    args.seeds = tuple(int(s) for s in args.seeds.split(","))
    args.optimizers = tuple(args.optimizers.split(","))
    args.models = tuple(args.models.split(","))
    if "sgd" not in args.optimizers:
        args.optimizers = ("sgd",) + args.optimizers  # the reference of every ratio
    print(f"machine: {describe_machine()}")
    start = time.time()
    chosen = training_table(args)
    step_cost(args, chosen)
    print(f"\nmachine at the end: {describe_machine()}; {time.time() - start:.0f} s wall")


if __name__ == "__main__":
    main()
