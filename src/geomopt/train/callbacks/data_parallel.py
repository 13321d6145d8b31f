"""Data-parallel reduction (``torchrun``; :mod:`geomopt.train.distributed`) as a callback.

Every process trains a ``DistributedDataParallel`` replica on its shard of every batch and evaluates
its shard of the evaluation data; the gradient is the global-batch mean (DDP's all-reduce, weighted by
shard size), and the loss each process sees (logged, checked for NaN/inf, returned to the optimizer) is
the global-batch loss. Only the main process writes files; checkpoints resume with any number of processes.
"""

from __future__ import annotations

import torch

from geomopt.train import distributed
from geomopt.train.callbacks.base import Callback, TrainState


class DataParallelSync(Callback):
    """Shards ``state``'s loaders, wraps the model in DDP (``state.replica``) and makes
    ``state.loss_value`` the global-batch loss (``state.non_finite_ranks``: the ranks whose loss was
    NaN/inf, so that every process stops together). :func:`geomopt.train.fit` adds it first whenever
    ``torch.distributed`` runs several processes."""

    def __init__(self) -> None:
        self.ddp: distributed.Replica | None = None

    def setup(self, state: TrainState) -> None:
        ctx = state.data_parallel
        state.train_loader = distributed.shard_loader(state.train_loader, ctx, name="training loader")
        state.eval_train_loader, state.test_loader, state.val_loader = (
            distributed.shard_loader(loader, ctx, every_rank=False) if loader is not None else None
            for loader in (state.eval_train_loader, state.test_loader, state.val_loader))
        self.ddp = distributed.Replica(state.model, ctx, torch.device(state.device))
        state.replica = self.ddp.module

    def on_before_backward(self, state: TrainState) -> None:
        state.loss_value, state.non_finite_ranks = self.ddp.global_loss(state.loss_value, state.targets.shape[0])
