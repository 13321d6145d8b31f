"""The ``ray`` backend: every attempt is a Ray task with its resources (``num_cpus``, ``num_gpus``).

Connects to an existing cluster (``address``, else ``RAY_ADDRESS``) or starts a local Ray instance
for the sweep (shut down at the end); an already initialized Ray session is used as it is. Tasks
return the trial's files through the object store, so the worker nodes need geomopt installed but
no filesystem shared with the driver. Retries are the sweep engine's (``max_retries=0`` here), so
both backends count and record attempts alike; a timeout cancels the task with ``force=True``
(which kills its worker process). The sweep hands Ray at most as many tasks as the cluster has
room for, so that a trial's clock starts when it can run.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from typing import Any

from geomopt.sweep.trial import execute


def require_ray():
    """Import Ray, or raise a RuntimeError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("--backend ray needs Ray: pip install 'geomopt[ray]' (or use the default --backend "
                           "local)") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray connected (``address``, else ``RAY_ADDRESS``) or started locally (``num_cpus``) for the block,
    so that the sweeps inside share one session; a session already initialized is left as it is."""
    ray = require_ray()
    owned = not ray.is_initialized()
    if owned:
        address = address or os.environ.get("RAY_ADDRESS") or None
        ray.init(**({"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}))
    try:
        yield
    finally:
        if owned:
            ray.shutdown()


class RayBackend:
    """Run attempts as Ray tasks of ``cpus_per_trial`` CPUs (and torch threads) and ``gpus_per_trial`` GPUs.
    Without a Ray session, one is started for the sweep (see :func:`ray_session`) and ended with it."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                 num_cpus: int | None = None):
        if cpus_per_trial <= 0 or gpus_per_trial < 0:
            raise ValueError(f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got {cpus_per_trial}, "
                             f"{gpus_per_trial}")
        self._ray = require_ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus, self.gpus, self.num_cpus = cpus_per_trial, gpus_per_trial, num_cpus
        self._session = None
        self._refs: dict[Any, int] = {}
        self._remote = None
        self._slots, self._asked = 0, -math.inf

    def start(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            self._session = ray_session(self.address, self.num_cpus)
            self._session.__enter__()
        self._remote = ray.remote(execute).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0,
                                                   retry_exceptions=False)

    def capacity(self) -> int:
        """Trials the cluster has room for (asked again every 10 s: nodes may join or leave)."""
        if time.monotonic() - self._asked < 10:
            return self._slots
        resources = self._ray.cluster_resources()
        slots = int(resources.get("CPU", 0) // self.cpus)
        if self.gpus:
            slots = min(slots, int(resources.get("GPU", 0) // self.gpus))
        if slots < 1:
            raise RuntimeError(f"the Ray cluster ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} "
                               f"GPUs) has no room for a trial of {self.cpus:g} CPUs and {self.gpus:g} GPUs")
        self._slots, self._asked = slots, time.monotonic()
        return slots

    def submit(self, key: int, payload: tuple, scratch: str | None = None) -> None:
        """Start an attempt in a temporary folder of its worker (``scratch``, the driver's, is not used)."""
        threads = max(1, int(self.cpus))
        self._refs[self._remote.remote(*payload, threads=threads)] = key

    def poll(self, timeout: float) -> list[tuple[int, str, Any]]:
        """Finished attempts as (key, "ok" | "error" | "died", Output or error text)."""
        ray = self._ray
        if not self._refs:
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        done = []
        for ref in ready:
            key = self._refs.pop(ref)
            try:
                done.append((key, "ok", ray.get(ref)))
            except ray.exceptions.RayTaskError as exc:  # the job raised
                done.append((key, "error", str(exc)))
            except ray.exceptions.RayError as exc:  # the worker or its node died, the task was lost
                done.append((key, "died", f"{type(exc).__name__}: {exc}"))
        return done

    def cancel(self, key: int) -> None:
        for ref, k in list(self._refs.items()):
            if k == key:
                self._ray.cancel(ref, force=True)
                del self._refs[ref]

    def close(self) -> None:
        """Cancel the running tasks (killing their workers) and wait until Ray has settled them (at most
        30 s): a session shut down with replies still in flight aborts the driver ("Tried to complete
        task that was not pending")."""
        refs, self._refs = list(self._refs), {}
        if refs:  # a task whose reply is already in is left alone: cancelling it is the same race
            refs = self._ray.wait(refs, num_returns=len(refs), timeout=0)[1]
        for ref in refs:
            self._ray.cancel(ref, force=True)
        if refs:
            self._ray.wait(refs, num_returns=len(refs), timeout=30)
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None
