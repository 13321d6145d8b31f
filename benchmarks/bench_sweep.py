"""The sweep engine's backends side by side: 32 tiny trials through ``local --jobs 1`` (in the driver
process), ``local --jobs 2`` (two forked worker processes) and ``ray`` (a local Ray instance with 2
CPUs, one CPU per trial), in one process, taking turns round by round.

Two kinds of trial: ``noop`` (a job that returns at once: the pure cost of a trial on each backend)
and ``train`` (a real TrainConfig: a 16-unit MLP, one epoch on 200 digits). Per backend: wall time
of the sweep, the worker-seconds a trial costs beyond its job (``(wall * slots - sum of job
seconds) / trials``) and, for ``train``, the speed-up of ``--jobs 2`` over ``--jobs 1``. Then what
the driver does per trial (store the files atomically) and how many bytes a zoo trial sends back,
the numbers behind the 10,000-model estimate in RESULTS.md.

Usage: python benchmarks/bench_sweep.py [--trials 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from geomopt.sweep import Output, Trial, TrainJob, run_sweep
from geomopt.sweep.local import LocalBackend
from geomopt.sweep.ray_backend import RayBackend
from geomopt.sweep.trial import execute, store
from geomopt.train import TrainConfig

from machine import describe_machine


@dataclass(frozen=True)
class Noop:
    """A job that does nothing: what is left of a trial is the backend's own cost."""

    index: int

    def __call__(self, workdir: Path) -> dict:
        return {"index": self.index}


def tiny_config(seed: int) -> TrainConfig:
    return TrainConfig(data="digits", model="mlp", widths=(16,), epochs=1, train_size=200, batch_size=50, seed=seed)


BACKENDS = {"local --jobs 1": (lambda: LocalBackend(1), 1), "local --jobs 2": (lambda: LocalBackend(2), 2),
            "ray, 2 CPUs": (lambda: RayBackend(), 2)}


def sweep_once(backend: str, kind: str, n: int, root: Path) -> tuple[float, float]:
    """(wall seconds, sum of the trials' own seconds) of one sweep of n fresh trials."""
    make, _ = BACKENDS[backend]
    folder = Path(tempfile.mkdtemp(dir=root))
    trials = [Trial(Noop(i) if kind == "noop" else tiny_config(i), folder / f"t{i}") for i in range(n)]
    start = time.perf_counter()
    results = run_sweep(trials, backend=make(), progress=False)
    wall = time.perf_counter() - start
    assert all(r.status == "done" for r in results)
    return wall, sum(r.seconds for r in results)


def stats(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import ray  # here, not at the top: the local workers import this module to unpickle Noop
    print(f"machine: {describe_machine()}; os.getloadavg() = {tuple(round(v, 2) for v in os.getloadavg())}")
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init (local instance, 2 CPUs): {time.perf_counter() - start:.2f} s")
    n = args.trials
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for backend in BACKENDS:  # cold starts: forkserver, Ray workers importing torch and geomopt
            wall, _ = sweep_once(backend, "train", 2, root)
            print(f"cold start, 2 train trials on {backend}: {wall:.2f} s")
        walls: dict[tuple[str, str], list[float]] = {}
        overheads: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            order = list(BACKENDS) if r % 2 == 0 else list(reversed(BACKENDS))
            for kind in ("noop", "train"):
                for backend in order:
                    wall, own = sweep_once(backend, kind, n, root)
                    slots = BACKENDS[backend][1]
                    walls.setdefault((backend, kind), []).append(wall)
                    overheads.setdefault((backend, kind), []).append((wall * slots - own) / n * 1e3)
        print(f"\n{n} trials per sweep, {args.rounds} rounds; min / median / max; load now "
              f"{os.getloadavg()[0]:.2f}")
        print("| backend | trial | sweep wall (s) | overhead per trial (worker-ms) |")
        print("|---|---|---|---|")
        for kind in ("noop", "train"):
            for backend in BACKENDS:
                print(f"| {backend} | {kind} | {stats(walls[backend, kind])} | {stats(overheads[backend, kind])} |")
        one, two = walls["local --jobs 1", "train"], walls["local --jobs 2", "train"]
        ratios = [a / b for a, b in zip(one, two)]
        print(f"speed-up of local --jobs 2 over --jobs 1 (train, per round): {stats(ratios)}")
        ratios = [a / b for a, b in zip(one, walls["ray, 2 CPUs", "train"])]
        print(f"speed-up of ray (2 CPUs) over local --jobs 1 (train, per round): {stats(ratios)}")

        # what the driver does per finished trial, and what a trial sends back
        out = execute(TrainJob(tiny_config(0)), {}, True)
        sizes = {name: len(data) for name, data in out.files.items()}
        print(f"\nfiles a tiny train trial sends back (bytes): {sizes}")
        for checkpoint in (True, False):
            files = out.files if checkpoint else {k: v for k, v in out.files.items() if k != "checkpoint.pt"}
            output = Output(out.result, files, out.seconds)
            times = []
            for i in range(50):
                trial = Trial(tiny_config(0), root / "store" / f"{checkpoint}{i}", checkpoint=checkpoint)
                t0 = time.perf_counter()
                store(trial, output)
                times.append((time.perf_counter() - t0) * 1e3)
            print(f"driver store() per trial ({len(files)} files, {sum(map(len, files.values()))} bytes, "
                  f"checkpoint {checkpoint}): {stats(times)} ms")
    ray.shutdown()


if __name__ == "__main__":
    main()
