"""The one training engine used by every geomopt experiment: a short loop, and callbacks for the rest.

``fit`` trains any ``nn.Module`` with any ``torch.optim.Optimizer`` on ``DataLoader``s. The loop
(:func:`fit`, :func:`_loop`, :func:`_optimizer_step`) only draws batches, takes optimizer steps and
evaluates the model after every epoch; everything else is a :class:`~geomopt.train.callbacks.Callback`
(:mod:`geomopt.train.callbacks`), called at named hooks: the metrics log ``metrics.jsonl`` (one JSON
object per line; ``{"kind": "step", "step", "epoch", "loss", "lr"}`` for every step and ``{"kind":
"epoch", "epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "time"}`` after every
epoch and for epoch 0, before training, with ``"val_loss", "val_acc"`` when a validation loader is
given), atomic checkpoints ``checkpoint.pt`` that resume exactly, the divergence guard
(:class:`NonFiniteLossError`), the learning-rate schedule, gradient clipping, data-parallel reduction,
stopping at a target loss, the progress bar, and the user's own callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from geomopt.train import distributed
from geomopt.train.callbacks import (CHECKPOINT, METRICS, Callback, Checkpoint, ClipGradNorm, DataParallelSync,
                                     DivergedError, DivergenceGuard, InterruptAfter, LRSchedule, MetricsLog,
                                     NonFiniteLossError, ProgressBar, StepFunction, TargetLoss, TrainState,
                                     read_metrics, restore)
from geomopt.train.callbacks.metrics import stored_epochs

__all__ = ["fit", "evaluate", "accuracy", "read_metrics", "NonFiniteLossError", "DivergedError", "CHECKPOINT",
           "METRICS"]


def accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Number of correct top-1 predictions (a count, summed over the batch)."""
    return (output.argmax(dim=-1) == target).sum()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, loss_fn: Callable[[Tensor, Tensor], Tensor],
             device: torch.device | str = "cpu",
             metric: Callable[[Tensor, Tensor], Tensor] | None = accuracy,
             data_parallel: distributed.DataParallel | None = None) -> tuple[float, float]:
    """Mean loss and mean metric (accuracy by default) of ``model`` over ``loader``, in eval mode.

    ``data_parallel``: ``loader`` yields this process's shard of the data; the means are over all shards.
    """
    was_training = model.training
    model.eval()
    total_loss, total_metric, count = 0.0, 0.0, 0
    for x, y in loader:
        n = y.shape[0]
        if n == 0:  # an empty shard of a small batch
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        total_loss += loss_fn(out, y).item() * n
        if metric is not None:
            total_metric += float(metric(out, y))
        count += n
    model.train(was_training)
    total_loss, total_metric, count = distributed.all_sum([total_loss, total_metric, count], data_parallel)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no examples")
    return total_loss / count, (total_metric / count if metric is not None else float("nan"))


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)



def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: DataLoader, test_loader: DataLoader,
        *, epochs: int, out_dir: str | Path, loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, device: str | torch.device = "cpu",
        metric: Callable[[Tensor, Tensor], Tensor] | None = accuracy, eval_train_loader: DataLoader | None = None,
        resume: bool = False, checkpoint_every: int = 0, max_grad_norm: float | None = None,
        progress: bool = True, extra_state: dict[str, Any] | None = None,
        stop_after_steps: int | None = None,
        step_callback: Callable[[int, nn.Module], dict[str, Any] | None] | None = None,
        target_train_loss: float | None = None, val_loader: DataLoader | None = None,
        divergence_factor: float | None = 10.0, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train ``model`` for ``epochs`` epochs; log, checkpoint, and return a summary dict.

    Args:
        model, optimizer, train_loader, test_loader: the usual PyTorch objects. The model must
            already be on ``device``. ``scheduler`` is stepped once per optimizer step (:class:`LRSchedule`).
        epochs: total number of epochs (a resumed run continues up to this number).
        out_dir: where metrics.jsonl and checkpoint.pt go.
        loss_fn: ``loss_fn(output, target)``, mean over the batch.
        metric: per-batch count of correct predictions (accuracy), or None (e.g. regression).
        eval_train_loader: loader for the per-epoch training metrics (default: ``train_loader``).
        resume: continue from ``out_dir/checkpoint.pt`` (:func:`~geomopt.train.callbacks.restore`): a
            resumed run ends with exactly the numbers of an uninterrupted one.
        checkpoint_every: also checkpoint every this many steps (0: at epoch ends only; :class:`Checkpoint`).
        max_grad_norm: clip the global gradient norm to this value (None: no clipping; :class:`ClipGradNorm`).
        progress: show a progress bar (:class:`ProgressBar`).
        extra_state: stored in the checkpoint (e.g. the config).
        stop_after_steps: stop as Ctrl-C would (``KeyboardInterrupt``) after this many global steps; for tests.
        step_callback: ``step_callback(step, model)`` called before training (step 0) and after every
            optimizer step; a returned dict is logged as ``{"kind": "callback", "step", ...}``
            (:class:`StepFunction`; e.g. :class:`geomopt.measures.TrajectoryComplexity`). If it has
            ``state_dict`` / ``load_state_dict`` its state is checkpointed and restored on resume.
        target_train_loss: stop at the end of the first epoch whose training loss (evaluated
            on ``eval_train_loader``) is at most this value (None: train all ``epochs``; :class:`TargetLoss`).
        val_loader: a validation split (held out of the training set, for choosing hyperparameters);
            evaluated every epoch as ``val_loss`` / ``val_acc``.
        divergence_factor: an epoch whose training loss exceeds this many times the loss before
            training stops the run as diverged (:class:`DivergedError`, a :class:`NonFiniteLossError`);
            None: only NaN/inf stop it (:class:`DivergenceGuard`).
        callbacks: the user's own :class:`~geomopt.train.callbacks.Callback` objects (e.g.
            :class:`~geomopt.train.callbacks.TensorBoardLog`); their hooks run after the engine's
            logging, schedule and guards, before the checkpoint (which stores their state).

    Data parallelism: under ``torchrun`` every process calls ``fit`` with the same arguments and trains
    on its shard of every batch (:class:`DataParallelSync`); rank 0 alone writes metrics and checkpoints.

    Returns:
        Summary: final train/test (and validation) loss and accuracy, steps, epochs, seconds, out_dir
        (and ``reached_target`` with ``target_train_loss``).

    Raises:
        NonFiniteLossError: the loss or the parameters became NaN/inf.
        TypeError: ``callbacks`` holds something that is not a Callback.
    """
    state = TrainState(model, optimizer, train_loader, eval_train_loader or train_loader, test_loader, val_loader,
                       loss_fn, metric, device, Path(out_dir), epochs, callbacks=[],
                       data_parallel=distributed.current())
    state.callbacks = [  # hooks run in this order: the user's after the log and guards, before the checkpoint
        *([DataParallelSync()] if state.data_parallel is not None else []), MetricsLog(),
        *([LRSchedule(scheduler)] if scheduler is not None else []),
        *([ClipGradNorm(max_grad_norm)] if max_grad_norm is not None else []), DivergenceGuard(divergence_factor),
        *([StepFunction(step_callback)] if step_callback is not None else []), *_user_callbacks(callbacks),
        *([TargetLoss(target_train_loss)] if target_train_loss is not None else []), ProgressBar(progress),
        Checkpoint(checkpoint_every, extra_state),
        *([InterruptAfter(stop_after_steps)] if stop_after_steps is not None else [])]
    if state.is_main:
        state.out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        restore(state)
    try:
        state.call("setup")
        if not state.resumed:
            _evaluate(state)  # epoch 0: the untrained model
        state.call("on_train_start")
        _loop(state)
        _summarize(state)
        state.call("on_train_end")
    finally:
        state.call("teardown")
    return state.summary


def _loop(state: TrainState) -> None:
    """Epochs of optimizer steps from ``state``'s position, until ``state.epochs`` or ``state.should_stop``."""
    state.model.train()
    while state.epoch < state.epochs and not state.should_stop:
        _set_epoch(state.train_loader, state.epoch)
        with torch.random.fork_rng(devices=[]):  # DataLoader.__iter__ draws a seed from the global RNG
            batches = iter(state.train_loader)
        for i, (x, y) in enumerate(batches):
            if i < state.batch:  # done before the checkpoint this run resumed from
                continue
            state.inputs, state.targets = x.to(state.device, non_blocking=True), y.to(state.device, non_blocking=True)
            state.loss_value = _optimizer_step(state)
            state.lr = state.optimizer.param_groups[0]["lr"]
            state.step, state.batch = state.step + 1, i + 1
            state.log({"kind": "step", "step": state.step, "epoch": state.epoch + 1, "loss": state.loss_value,
                       "lr": state.lr})
            state.call("on_step_end")
            if state.should_stop:
                break
        state.epoch, state.batch = state.epoch + 1, 0
        _evaluate(state)
        state.call("on_epoch_end")


def _optimizer_step(state: TrainState) -> float:
    """One ``optimizer.step(closure)`` on ``state``'s batch; the step's loss. The closure follows torch's
    protocol (optimizers may evaluate it several times: L-BFGS; K-FAC/EKFAC's adaptive damping)."""
    def closure() -> Tensor:
        state.optimizer.zero_grad(set_to_none=True)
        state.loss = state.loss_fn(state.replica(state.inputs), state.targets)
        state.loss_value = state.loss.item()
        state.call("on_before_backward")  # may make loss_value the global batch's (data-parallel)
        state.loss.backward()
        state.call("on_after_backward")
        return state.loss if state.data_parallel is None else torch.tensor(state.loss_value, dtype=torch.float64)

    try:
        loss = state.optimizer.step(closure)
    except FloatingPointError as exc:  # e.g. K-FAC factors with NaN/inf: a divergence, not a crash
        if isinstance(exc, NonFiniteLossError):
            raise
        raise NonFiniteLossError(f"the optimizer met non-finite values at step {state.step + 1} (epoch "
                                 f"{state.epoch + 1}): {exc}; {state.kept()}") from exc
    return loss.item() if isinstance(loss, Tensor) else float(loss)


def _evaluate(state: TrainState) -> None:
    """Evaluate the model on the training, test (and validation) data; log it as ``state.record``."""
    def on(loader: DataLoader) -> tuple[float, float]:
        return evaluate(state.model, loader, state.loss_fn, state.device, state.metric, state.data_parallel)

    (train_loss, train_acc), (test_loss, test_acc) = on(state.eval_train_loader), on(state.test_loader)
    state.record = {"kind": "epoch", "epoch": state.epoch, "step": state.step, "train_loss": train_loss,
                    "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
    if state.val_loader is not None:
        state.record["val_loss"], state.record["val_acc"] = on(state.val_loader)
    state.record["time"] = round(state.seconds(), 3)
    state.log(state.record)


def _summarize(state: TrainState) -> None:
    """``state.summary``: the position and the last epoch record's numbers."""
    if state.record is None:  # resumed a finished run: its stored final epoch
        state.record = stored_epochs(state)[-1]
    last = state.record
    state.summary.update({"epochs": state.epoch, "steps": state.step, "seconds": round(state.seconds(), 3),
                          **{k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
                          "out_dir": str(state.out_dir)})
    if "val_loss" in last:
        state.summary["val_loss"], state.summary["val_acc"] = last["val_loss"], last["val_acc"]


def _user_callbacks(callbacks: Sequence[Callback]) -> list[Callback]:
    """``callbacks`` as a list, each checked to be a :class:`Callback`."""
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Sequence):
        raise TypeError(f"fit: callbacks must be a list of geomopt.train.Callback objects, got "
                        f"{type(callbacks).__name__}")
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"fit: callbacks[{i}] is a {type(callback).__name__}, not a geomopt.train.Callback "
                            "(a function of (step, model) goes in step_callback=)")
    return list(callbacks)
