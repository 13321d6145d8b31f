r"""Kronecker factors across data-parallel processes (``torch.distributed``), as in KAISA.

Pauloski, Zhang, Huang, Xu & Foster, "KAISA: An Adaptive Second-Order Optimizer Framework for Deep
Neural Networks", SC 2021 (gpauloski/kfac-pytorch): factors are all-reduced, and each layer's
inverse or eigendecomposition is computed by one process and broadcast to the others.

Every process runs the same model on its shard ``r`` of the global batch (``n_r`` examples, ``N =
sum_r n_r``). Its running statistics ``X_r = d X + (1 - d) F_r`` (``X`` the common value before the
update, ``F_r`` the statistics of its shard) are averaged with weights ``n_r / N``:

    sum_r (n_r / N) X_r = d X + (1 - d) (1/N) sum_r n_r F_r,

i.e. the update with the statistics of the global batch (a factor is a mean over examples). All the
tensors updated in one step go in one bucketed ``all_reduce`` (per dtype and device), with the
counts ``n_r`` of every layer appended. Inversions are split by :func:`assign` (each layer on the
process with the least estimated work so far, largest layers first) and each process broadcasts
all of its results in one bucket.

:class:`FactorComm` counts the bytes it sends and the work it does, for the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def default_group() -> dist.ProcessGroup | None:
    """The default process group when ``torch.distributed`` is initialized with several processes, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def assign(costs: Sequence[float], world: int) -> list[int]:
    """Owner rank of every job: longest processing time first (Graham 1969; makespan within 4/3 of the
    optimum), ties to the lowest rank. Deterministic, so every process computes the same assignment."""
    if world < 1:
        raise ValueError(f"assign: world size must be >= 1, got {world}")
    load = [0.0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(world), key=lambda q: (load[q], q))
        owners[i] = r
        load[r] += costs[i]
    return owners


def _buckets(tensors: Sequence[Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    return groups


def _unflatten_into(flat: Tensor, tensors: Sequence[Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


class FactorComm:
    """The collectives of a Kronecker-factored optimizer in one process group.

    Args:
        group: the process group (``torch.distributed.group.WORLD`` for all processes).

    Attributes:
        bytes_sent: bytes this process has put into collectives (all-reduce buffers and the
            buckets it broadcast); ``collectives``: how many it called.
        work_done, work_total: estimated cost of the inversions this process ran, and of all of them.
    """

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self._staged: list[tuple[list[Tensor], int]] = []
        self.bytes_sent = self.collectives = 0
        self.work_done = self.work_total = 0.0

    def stage(self, tensors: list[Tensor], count: int) -> None:
        """Queue running statistics this process updated from ``count`` examples, for :meth:`flush`."""
        self._staged.append((tensors, int(count)))

    def flush(self) -> None:
        """Replace every staged tensor by the count-weighted mean over processes, in one ``all_reduce``
        per dtype/device (one in practice); a tensor no process recorded (total count 0) is kept."""
        if not self._staged:
            return
        staged, self._staged = self._staged, []
        tensors = [t for ts, _ in staged for t in ts]
        owner = [j for j, (ts, _) in enumerate(staged) for _ in ts]
        for idx in _buckets(tensors).values():
            layers = sorted({owner[i] for i in idx})
            ref = tensors[idx[0]]
            counts = torch.tensor([float(staged[j][1]) for j in layers], dtype=ref.dtype, device=ref.device)
            weight = {j: staged[j][1] for j in layers}
            flat = torch.cat([tensors[i].reshape(-1) * weight[owner[i]] for i in idx] + [counts])
            dist.all_reduce(flat, group=self.group)
            self.bytes_sent += flat.numel() * flat.element_size()
            self.collectives += 1
            total = dict(zip(layers, flat[-len(layers):].tolist()))
            offset = 0
            for i in idx:
                t = tensors[i]
                if total[owner[i]] > 0:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t)).div_(total[owner[i]])
                offset += t.numel()

    def run_split(self, costs: Sequence[float], run: Callable[[int], None],
                  results: Callable[[int], list[Tensor]]) -> None:
        """Run job ``i`` (``run(i)``) on its owner (:func:`assign` by ``costs``); then every owner
        broadcasts the tensors ``results(i)`` of its jobs in one bucket (in the dtype of the first
        job's first result), copied in place elsewhere (``results(i)`` must return tensors of the
        right shapes on every process)."""
        owners = assign(costs, self.world)
        self.work_total += float(sum(costs))
        for i, r in enumerate(owners):
            if r == self.rank:
                run(i)
                self.work_done += float(costs[i])
        if not owners:
            return
        ref = results(0)[0]
        for r in range(self.world):
            tensors = [t for i, q in enumerate(owners) if q == r for t in results(i)]
            if not tensors:
                continue
            flat = torch.cat([t.reshape(-1).to(ref.dtype) for t in tensors])
            dist.broadcast(flat, src=dist.get_global_rank(self.group, r), group=self.group)
            self.collectives += 1
            if r == self.rank:
                self.bytes_sent += flat.numel() * flat.element_size()
            else:
                _unflatten_into(flat, tensors)
