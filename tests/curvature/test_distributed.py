"""Data parallelism of the optimizers (geomopt.curvature.distributed) in real gloo processes.

Reference: one process taking the whole batch. Two processes, each with half of every batch and
the model in DistributedDataParallel (whose averaged mean-loss gradients are the full-batch gradient
for equal halves), must end with the same weights to 1e-10 in float64 -- for K-FAC/EKFAC only if
the factors and the diagonal are the global-batch averages and the inverses the same. Collectives
are counted by wrapping ``torch.distributed``'s functions.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from geomopt.curvature.distributed import assign
from geomopt.optim import EKFAC, KFAC, PathSGD
from tests.processes import run_processes

STEPS, BATCH = 5, 16  # a batch larger than the widths: factors of full rank
OPTIMIZERS = ("sgd", "path-sgd", "kfac", "ekfac", "kfac-adaptive")
MODELS = ("mlp", "cnn")
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all", "reduce", "gather", "scatter", "barrier",
               "broadcast_object_list", "all_gather_object")


def _model(name: str, act: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(nn.Linear(6, 9), act(), nn.Linear(9, 5), act(), nn.Linear(5, 3))
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), act(), nn.Conv2d(3, 2, 3), act(), nn.Flatten(),
                         nn.Linear(8, 3))


def _batches(name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    shape = (6,) if name == "mlp" else (1, 4, 4)
    return [(torch.randn(BATCH, *shape, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (BATCH,), generator=g)) for _ in range(STEPS)]


def _optimizer(name: str, model: nn.Module, group):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if name == "path-sgd":
        return PathSGD(model, lr=0.1, momentum=0.9, input_shape=(6,) if isinstance(model[0], nn.Linear) else (1, 4, 4))
    if name == "kfac":  # factors every step, inverses at steps 0, 2, 4
        return KFAC(model, kl_clip=None, lr=0.1, momentum=0.9, damping=1e-2, update_freq=1, inv_freq=2,
                    process_group=group)
    if name == "kfac-adaptive":  # the quadratic model (exact GGN of the global batch) sets step, momentum, damping
        return KFAC(model, momentum=0.0, lr=0.1, damping=1e-2, update_freq=1, inv_freq=2, adaptive_damping=True,
                    damping_interval=2, adaptive_step=True, process_group=group)
    # factors at 0, 2, 4, eigenbases at 0 and 4, the diagonal every step
    return EKFAC(model, kl_clip=None, lr=0.1, momentum=0.9, damping=1e-2, update_freq=2, inv_freq=4,
                 process_group=group)


class _Counter:
    """Counts calls of torch.distributed's collectives while ``on``."""

    def __init__(self):
        self.on, self.calls = False, []

    def install(self):
        for name in COLLECTIVES:
            fn = getattr(dist, name)

            def wrapped(*a, _fn=fn, _name=name, **k):
                if self.on:
                    self.calls.append(_name)
                return _fn(*a, **k)
            setattr(dist, name, wrapped)


def _train(model_name: str, opt_name: str, rank: int = 0, world: int = 1, counter: _Counter | None = None,
           device: str = "cpu"):
    """Final weights (on the CPU), and per step the collectives called inside ``optimizer.step()`` (float64);
    in a process group (of any size) the model is in DistributedDataParallel and the optimizer gets the group."""
    # EKFAC's diagonal in a degenerate eigenspace (e.g. dead ReLUs) depends on the basis LAPACK returns,
    # which rounding changes: smooth units keep the eigenvalues distinct (Path-SGD needs ReLU)
    model = _model(model_name, nn.Tanh if opt_name == "ekfac" else nn.ReLU).double().to(device)
    grouped = dist.is_available() and dist.is_initialized()
    net = DistributedDataParallel(model) if grouped else model
    opt = _optimizer(opt_name, model, dist.group.WORLD if grouped else None)
    per_step = []
    for x, y in _batches(model_name):
        lo, hi = rank * BATCH // world, (rank + 1) * BATCH // world

        def closure(x=x[lo:hi].to(device), y=y[lo:hi].to(device)):  # the global batch's loss (equal shards)
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            if grouped:
                loss = loss.detach().clone()
                dist.all_reduce(loss)
                loss /= world
            return loss
        adaptive = opt_name == "kfac-adaptive"
        if not adaptive:
            closure()
        if counter is not None:
            counter.on, counter.calls = True, []
        opt.step(closure if adaptive else None)
        if counter is not None:
            counter.on = False
            per_step.append(list(counter.calls))
    work = (opt.comm.work_done, opt.comm.work_total) if getattr(opt, "comm", None) is not None else None
    return [p.detach().cpu().clone() for p in model.parameters()], per_step, work


def _worker(rank: int, world: int, out: str) -> None:
    torch.set_default_dtype(torch.float64)
    counter = _Counter()
    counter.install()
    results = {combo: _train(*combo, rank=rank, world=world, counter=counter)
               for combo in itertools.product(MODELS, OPTIMIZERS)}
    torch.save(results, f"{out}/rank{rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    assert run_processes(2, _worker, str(out), timeout=120) == [0, 0]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_two_processes_match_one_with_the_whole_batch(two_processes, model_name, opt_name):
    reference, _, _ = _train(model_name, opt_name)
    for rank, results in enumerate(two_processes):
        weights = results[(model_name, opt_name)][0]
        for p, q in zip(weights, reference):
            assert (p - q).abs().max() <= 1e-10 * max(1.0, q.abs().max()), f"rank {rank}"


@pytest.mark.parametrize("model_name", MODELS)
def test_collectives_per_step(two_processes, model_name):
    for results in two_processes:
        # SGD and Path-SGD (scales from the weights alone): nothing beyond DDP's gradient all-reduce
        assert all(calls == [] for calls in results[(model_name, "sgd")][1])
        assert all(calls == [] for calls in results[(model_name, "path-sgd")][1])
        # K-FAC: one all-reduce of all factors every step; inversions (0, 2, 4): one bucket per owner
        kfac = results[(model_name, "kfac")][1]
        for k, calls in enumerate(kfac):
            assert calls == ["all_reduce"] + (["broadcast"] * 2 if k % 2 == 0 else []), (k, calls)
        # EKFAC: factors + diagonal in one all-reduce; at eigenbasis steps the factors first, then the
        # broadcasts, then the diagonal (which needs the new eigenbasis)
        ekfac = results[(model_name, "ekfac")][1]
        for k, calls in enumerate(ekfac):
            expected = ["all_reduce", "broadcast", "broadcast", "all_reduce"] if k % 4 == 0 else ["all_reduce"]
            assert calls == expected, (k, calls)


def test_inversion_work_is_split(two_processes):
    for opt_name in ("kfac", "ekfac"):
        done = [results[("mlp", opt_name)][2] for results in two_processes]
        total = done[0][1]
        assert sum(d for d, _ in done) == pytest.approx(total)
        assert all(0 < d < total for d, _ in done)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=7), st.integers(1, 4))
def test_assign_is_within_four_thirds_of_the_best_split(costs, world):
    owners = assign(costs, world)
    assert assign(costs, world) == owners and all(0 <= r < world for r in owners)
    loads = [sum(c for c, r in zip(costs, owners) if r == q) for q in range(world)]
    best = min(max(sum(c for c, r in zip(costs, split) if r == q) for q in range(world))
               for split in itertools.product(range(world), repeat=len(costs)))  # brute force
    assert max(loads) <= 4 / 3 * best + 1e-9
