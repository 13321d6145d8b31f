r"""Data-parallel training with ``torch.distributed`` (launched by ``torchrun``).

Every process holds the whole model wrapped in ``DistributedDataParallel`` and reads shard ``r`` of
every global batch (a contiguous part of the batch's indices, sizes within one of each other), so
the data order stays the pure function of (seed, epoch) of the one-process run and a checkpoint
(epoch, batch) resumes with any number of processes. The gradient is the global-batch mean,

    grad = sum_r (n_r / N) grad_r,

(``grad_r`` the gradient of the mean loss over shard ``r``): a DDP communication hook weights each
bucket by ``n_r / N`` before the sum (the default hook's ``1 / world`` is the same for equal shards).
Before each backward pass one small all-reduce of ``(n_r loss_r, n_r, non-finite flags)`` gives the
global-batch loss (logged), ``N``, and which ranks met a NaN/inf loss, so every rank stops together.
Collectives time out (``timeout``) instead of hanging when a process dies.

When a process dies, stops answering for ``timeout`` seconds, or cannot join the process group, the
others raise :class:`ProcessLostError` (one sentence naming the rank, not the backend's traceback);
``geomopt train`` exits with :data:`EXIT_PROCESS_LOST` and says how to resume, and the launcher of
``--nproc N`` names the rank that was killed or stopped answering (:func:`launch`).
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

#: seconds a collective waits for the other processes before raising
DEFAULT_TIMEOUT = 300.0
#: exit status of ``geomopt train`` when a process of a data-parallel run died, stopped answering for
#: ``--timeout`` seconds, or could not join the process group
EXIT_PROCESS_LOST = 4

# what gloo / nccl / the TCP store say when the other side of a connection is gone or silent
_DEAD = ("connection reset", "connection closed", "broken pipe", "connection refused", "socket closed",
         "communicator was aborted", "end of file")
_SILENT = ("timed out", "timeout")


class ProcessLostError(RuntimeError):
    """A process of a data-parallel run died (``kind="died"``), stopped answering for the collective
    timeout (``"timeout"``), or a process could not join the process group (``"join"``)."""

    def __init__(self, message: str, kind: str, rank: int, world: int, timeout: float):
        super().__init__(message)
        self.kind, self.rank, self.world, self.timeout = kind, rank, world, timeout


def lost_process(exc: BaseException, ctx: DataParallel, timeout: float) -> ProcessLostError | None:
    """The :class:`ProcessLostError` that a backend's error ``exc`` on this rank stands for (None: another
    error, e.g. a bug). Gloo raises a RuntimeError whose text says "Connection reset by peer" when the
    other process died, "Timed out waiting ...ms" when it is alive but silent."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc).lower()
    where = f"rank {ctx.rank} of {ctx.world}"
    if any(k in text for k in _DEAD):
        return ProcessLostError(f"{where} lost its connection to another process of the run, which died "
                                f"({_first_line(exc)})", "died", ctx.rank, ctx.world, timeout)
    if any(k in text for k in _SILENT):
        return ProcessLostError(f"{where} waited --timeout {timeout:g} s for the other processes: one stopped "
                                "answering", "timeout", ctx.rank, ctx.world, timeout)
    return None


def _first_line(exc: BaseException) -> str:
    """The backend's own words, without its source location prefix ("[.../pair.cc:537] ")."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line


@dataclass
class DataParallel:
    """A process's place in a data-parallel run."""

    group: dist.ProcessGroup
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> DataParallel | None:
    """The run's data-parallel context when ``torch.distributed`` is initialized with several processes."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DataParallel(dist.group.WORLD, dist.get_rank(), dist.get_world_size())


def init_from_env(device_type: str, timeout: float = DEFAULT_TIMEOUT) -> DataParallel | None:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on
    CUDA, with a collective ``timeout`` in seconds); None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    if not timeout > 0:
        raise ValueError(f"the collective timeout must be positive, got {timeout}")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as exc:  # the store unreachable, too few processes, a port in use...
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
        address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise ProcessLostError(f"rank {rank} of {world} could not join the process group at {address} within "
                               f"--timeout {timeout:g} s ({_first_line(exc)})", "join", rank, world, timeout) from None
    return current()


def leave() -> None:
    """Destroy the process group so that its backend's worker threads end while Python is still running.

    ``DistributedDataParallel``'s reducer sits in reference cycles that keep the group's gloo backend,
    and its worker threads, alive past ``destroy_process_group`` until the collector runs. At
    interpreter shutdown a worker thread still releasing a finished all-reduce then needs the GIL,
    cannot take it, and the process aborts ("terminate called without an active exception", exit
    -6) after a successful run. Collecting first lets the backend's destructor join its threads here.
    """
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process); CPU stays."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s part of ``n`` items (the first ``n % world`` get one more)."""
    q, extra = divmod(n, world)
    start = rank * q + min(rank, extra)
    return start, start + q + (rank < extra)


class ShardSampler(Sampler[list[int]]):
    """Rank ``rank``'s part of every batch of index lists yielded by ``batches`` (with ``set_epoch``)."""

    def __init__(self, batches: Sampler[list[int]], rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.batches:
            start, stop = shard_bounds(len(idx), self.rank, self.world)
            yield list(idx)[start:stop]


def shard_loader(loader: DataLoader, ctx: DataParallel, *, name: str = "loader", every_rank: bool = True) -> DataLoader:
    """The same loader yielding only rank ``ctx.rank``'s part of each batch.

    Needs a loader of whole batches of indices (``batch_size=None`` and a sampler of index lists,
    as :func:`geomopt.data.make_loader` builds). ``every_rank``: check that no rank's part is empty.

    Raises:
        ValueError: another kind of loader, or (``every_rank``) a batch smaller than the number of processes.
    """
    sampler = loader.sampler
    if loader.batch_size is not None or not hasattr(sampler, "set_epoch"):
        raise ValueError(f"data-parallel training: the {name} must yield whole batches of indices "
                         "(DataLoader(dataset, sampler=EpochBatchSampler(...), batch_size=None), as "
                         "geomopt.data.make_loader builds)")
    if every_rank:
        sizes = {len(idx) for idx in sampler}
        if min(sizes) < ctx.world:
            raise ValueError(f"data-parallel training: the {name} has a batch of {min(sizes)} examples, fewer than "
                             f"the {ctx.world} processes (each needs at least one); use a batch size and a "
                             "training-set size whose remainder are at least the number of processes")
    return DataLoader(loader.dataset, sampler=ShardSampler(sampler, ctx.rank, ctx.world), batch_size=None,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


class _Weight:
    """State of :func:`_weighted_allreduce`: this rank's ``n_r / N`` of the current step."""

    def __init__(self, group: dist.ProcessGroup):
        self.group, self.value = group, 1.0


def _weighted_allreduce(state, bucket):  # no annotations: DDP checks them, and here they would be strings
    """DDP communication hook: all-reduce ``(n_r / N) grad_r`` (a ``dist.GradBucket``), summing to the global mean."""
    buffer = bucket.buffer().mul_(state.value)
    work = dist.all_reduce(buffer, group=state.group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class Replica:
    """The model wrapped in ``DistributedDataParallel`` with the ``n_r / N`` weighted gradient all-reduce."""

    def __init__(self, model: nn.Module, ctx: DataParallel, device: torch.device):
        self.ctx = ctx
        self.weight = _Weight(ctx.group)
        ids = [device.index] if device.type == "cuda" else None
        self.module = DistributedDataParallel(model, device_ids=ids, process_group=ctx.group)
        self.module.register_comm_hook(self.weight, _weighted_allreduce)

    def global_loss(self, local: float, n: int) -> tuple[float, list[int]]:
        """The global-batch mean loss and the ranks whose loss is NaN/inf; sets this step's gradient weight."""
        bad = torch.zeros(self.ctx.world, dtype=torch.float64)
        finite = torch.isfinite(torch.tensor(local)).item()
        bad[self.ctx.rank] = 0.0 if finite else 1.0
        buf = torch.cat([torch.tensor([local * n if finite else 0.0, float(n)], dtype=torch.float64), bad])
        dist.all_reduce(buf, group=self.ctx.group)
        total = buf[1].item()
        self.weight.value = n / total
        ranks = [r for r in range(self.ctx.world) if buf[2 + r] > 0]
        return (buf[0].item() / total if not ranks else float("nan")), ranks


def all_sum(values: list[float], ctx: DataParallel | None) -> list[float]:
    """Elementwise sum of ``values`` over the processes (float64); unchanged in one process."""
    if ctx is None:
        return values
    buf = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(buf, group=ctx.group)
    return buf.tolist()


def broadcast_object(obj, ctx: DataParallel | None):
    """Rank 0's ``obj`` on every process (e.g. the checkpoint it read)."""
    if ctx is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=ctx.group)
    return box[0]


#: set by :func:`launch` for its workers: it reports a lost process itself, once
LAUNCHED = "GEOMOPT_LAUNCHED"


def report_lost(exc: ProcessLostError) -> None:
    """Hand ``exc`` to torchrun in the reply file it names (``TORCHELASTIC_ERROR_FILE``): :func:`launch`
    reads it, and plain ``torchrun`` prints its message in its failure summary."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({"message": str(exc), "timestamp": int(time.time()),
                       "geomopt": {"kind": exc.kind, "rank": exc.rank, "timeout": exc.timeout}}, f)


def launch(nproc: int, argv: list[str]) -> tuple[int, str | None]:
    """Run ``python -m geomopt.cli ARGV`` in ``nproc`` processes on this machine with ``torchrun``
    (``torch.distributed.run``, standalone rendezvous). Returns the exit status (non-zero if any
    failed) and, when a process was lost (killed, silent past the timeout, unable to join), one
    sentence naming it, with status :data:`EXIT_PROCESS_LOST`; Ctrl-C gives 130 (rank 0 reports it).
    torchrun's own log lines are muted."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    args = parse_args(["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "-m", "geomopt.cli", *argv])
    os.environ[LAUNCHED] = "1"  # the workers inherit this process's environment
    logging.disable(logging.CRITICAL)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        run(args)
    except ChildFailedError as exc:
        return _explain(exc.failures, nproc)
    except SignalException as exc:  # torchrun has passed the signal on to the workers and waited for them
        if exc.sigval == signal.SIGINT:
            return 130, None  # Ctrl-C: rank 0 has said what it kept
        return 128 + exc.sigval, f"the launcher got {signal.Signals(exc.sigval).name} and stopped the processes"
    finally:
        logging.disable(logging.NOTSET)
        del os.environ[LAUNCHED]
        for sig, handler in handlers.items():  # torchrun's agent installs its own, process-wide, and leaves them
            signal.signal(sig, handler)
    return 0, None


def _explain(failures: dict, world: int) -> tuple[int, str | None]:
    """Exit status and sentence for torchrun's ``ProcessFailure`` by global rank. The launcher stops the
    other ranks with SIGTERM once one fails, so the cause is, in this order: a rank killed by another
    signal; the report of a rank that lost another (:func:`report_lost`; those it waited for in vain
    are the ranks that did not exit by themselves); a rank's own error (it printed it: its status);
    a SIGTERM from outside."""
    own = {r: f for r, f in sorted(failures.items()) if f.exitcode > 0}
    killed = {r: f for r, f in sorted(failures.items()) if f.exitcode < 0 and -f.exitcode != signal.SIGTERM}
    if killed:
        how = ", ".join(_signal_name(-f.exitcode) for f in killed.values())
        verb = "was" if len(killed) == 1 else "were"
        return EXIT_PROCESS_LOST, f"{_ranks(killed)} of {world} {verb} killed ({how}); the launcher stopped the others"
    reports = {r: f.error_file_data.get("geomopt") for r, f in own.items()
               if f.exitcode == EXIT_PROCESS_LOST and isinstance(f.error_file_data, dict)}
    reports = {r: info for r, info in reports.items() if info}
    if reports:
        rank, info = next(iter(reports.items()))
        silent = [r for r in range(world) if r not in own]
        if info["kind"] == "timeout" and silent:
            return EXIT_PROCESS_LOST, (f"{_ranks(silent)} of {world} stopped answering (rank {rank} waited --timeout "
                                       f"{info['timeout']:g} s); the launcher stopped the others")
        return EXIT_PROCESS_LOST, f"{failures[rank].message}; the launcher stopped the others"
    if own:
        return next(iter(own.values())).exitcode, None
    return EXIT_PROCESS_LOST, f"{_ranks(failures)} of {world} stopped by SIGTERM from outside the run"


def _ranks(ranks) -> str:
    ranks = list(ranks)
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
