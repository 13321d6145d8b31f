"""Real processes for tests: a test function in several processes joined by a process group (spawned, not
forked): gloo, or nccl with one GPU per rank (``torch.cuda.set_device(rank)``); ``python -m geomopt`` in a
subprocess, and the processes it started."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, and by them, recursively (Linux: /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the process ended meanwhile
                continue
            found += children
            todo += children
    return found


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def geomopt(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """``python -m geomopt ARGS`` in a subprocess using this checkout (stdout, stderr: text pipes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "geomopt", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)
