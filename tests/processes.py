"""Run a test function in several real processes joined by a process group (spawned, not forked): gloo, or
nccl with one GPU per rank (``torch.cuda.set_device(rank)``)."""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geomopt.train.distributed import leave


def _entry(fn: Callable, rank: int, world: int, init: str, timeout: float, args: tuple, backend: str) -> None:
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        fn(rank, world, *args)
    finally:
        if dist.is_initialized():  # a worker may leave the group itself
            leave()


def run_processes(world: int, fn: Callable, *args, timeout: float = 60.0, collective_timeout: float = 30.0,
                  backend: str = "gloo") -> list[int]:
    """``fn(rank, world, *args)`` in ``world`` processes; their exit codes. Fails the test if one is still
    running after ``timeout`` seconds (a hang); ``collective_timeout``: the process group's timeout."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "rendezvous")
        procs = [ctx.Process(target=_entry, args=(fn, r, world, init, collective_timeout, args, backend)) for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        if hung:
            pytest.fail(f"rank(s) {hung} of {world} still running after {timeout} s: a hang")
        return [p.exitcode for p in procs]
