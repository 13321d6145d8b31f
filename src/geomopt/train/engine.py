"""The one training engine used by every geomopt experiment.

``fit`` trains any ``nn.Module`` with any ``torch.optim.Optimizer`` on ``DataLoader``s and
writes, into ``out_dir``:

- ``metrics.jsonl``: one JSON object per line; ``{"kind": "step", "step", "epoch", "loss", "lr"}``
  for every step and ``{"kind": "epoch", "epoch", "step", "train_loss", "train_acc",
  "test_loss", "test_acc", "time"}`` after every epoch (and for epoch 0, before training), with
  ``"val_loss", "val_acc"`` when a validation loader is given;
- ``checkpoint.pt``: model, optimizer, scheduler, RNG state and position, written atomically
  at the end of every epoch (and every ``checkpoint_every`` steps).

``fit(..., resume=True)`` continues from the checkpoint: data order is a pure function of
(seed, epoch) through ``sampler.set_epoch`` and the RNG state is restored, so a resumed run
ends with exactly the numbers of an uninterrupted one. A non-finite loss stops the run with
:class:`NonFiniteLossError`; the last good checkpoint is kept.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from geomopt.train import distributed
from geomopt.train.checkpoint import load_checkpoint, load_model_state, save_checkpoint

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
    """The loss (or a parameter) became NaN or infinite; training stopped."""


class DivergedError(NonFiniteLossError):
    """The training loss rose above ``divergence_factor`` times its value before training; training stopped."""


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


def _truncate_metrics(path: Path, step: int, epoch: int) -> None:
    """Drop the records written after the checkpoint at (``step``, ``epoch``)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["kind"] == "epoch":
            if rec["epoch"] <= epoch:
                kept.append(line)
        elif rec.get("step", 0) <= step:  # "step" records and step_callback records
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


def _kept(ckpt_path: Path) -> str:
    if ckpt_path.exists():
        return f"the last good checkpoint {ckpt_path} is kept"
    return "no checkpoint had been written yet"


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: DataLoader, test_loader: DataLoader,
        *, epochs: int, out_dir: str | Path, loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, device: str | torch.device = "cpu",
        metric: Callable[[Tensor, Tensor], Tensor] | None = accuracy, eval_train_loader: DataLoader | None = None,
        resume: bool = False, checkpoint_every: int = 0, max_grad_norm: float | None = None,
        progress: bool = True, extra_state: dict[str, Any] | None = None,
        stop_after_steps: int | None = None,
        step_callback: Callable[[int, nn.Module], dict[str, Any] | None] | None = None,
        target_train_loss: float | None = None, val_loader: DataLoader | None = None,
        divergence_factor: float | None = 10.0, sink: Any = None) -> dict[str, Any]:
    """Train ``model`` for ``epochs`` epochs; log, checkpoint, and return a summary dict.

    Args:
        model, optimizer, train_loader, test_loader: the usual PyTorch objects. The model must
            already be on ``device``. ``scheduler`` is stepped once per optimizer step.
        epochs: total number of epochs (a resumed run continues up to this number).
        out_dir: where metrics.jsonl and checkpoint.pt go.
        loss_fn: ``loss_fn(output, target)``, mean over the batch.
        metric: per-batch count of correct predictions (accuracy), or None (e.g. regression).
        eval_train_loader: loader for the per-epoch training metrics (default: ``train_loader``).
        resume: continue from ``out_dir/checkpoint.pt``.
        checkpoint_every: also checkpoint every this many steps (0: at epoch ends only).
        max_grad_norm: clip the global gradient norm to this value (None: no clipping).
        extra_state: stored in the checkpoint (e.g. the config), returned by resume.
        stop_after_steps: stop (as if interrupted) after this many global steps; for tests.
        step_callback: ``step_callback(step, model)`` called before training (step 0) and after
            every optimizer step; a returned dict is logged as ``{"kind": "callback", "step", ...}``
            (e.g. :class:`geomopt.measures.TrajectoryComplexity`). If it has ``state_dict`` /
            ``load_state_dict`` its state is checkpointed and restored on resume.
        target_train_loss: stop at the end of the first epoch whose training loss (evaluated
            on ``eval_train_loader``) is at most this value (None: train all ``epochs``).
        val_loader: a validation split (held out of the training set, for choosing hyperparameters);
            evaluated every epoch as ``val_loss`` / ``val_acc``.
        divergence_factor: an epoch whose training loss exceeds this many times the loss before
            training stops the run as diverged (:class:`DivergedError`, a :class:`NonFiniteLossError`);
            None: only NaN/inf stop it.
        sink: also receives every metrics record: ``sink.open(out_dir, step)`` once the starting step
            is known, ``sink(record)``, ``sink.flush()`` with the metrics file, ``sink.close()`` at the
            end (e.g. :class:`geomopt.train.tensorboard.TensorBoardLog`); rank 0 only.

    Data parallelism: when ``torch.distributed`` is initialized with several processes (``torchrun``),
    every process calls ``fit`` with the same arguments; each trains a ``DistributedDataParallel``
    replica on its shard of every batch and evaluates its shard of the evaluation data
    (:mod:`geomopt.train.distributed`); the closure returns the global-batch loss; rank 0 alone
    writes the metrics (global-batch losses, means over all shards) and the checkpoints, which
    resume with any number of processes.

    Returns:
        Summary: final train/test (and validation) loss and accuracy, steps, epochs, seconds, out_dir.

    Raises:
        NonFiniteLossError: the loss or the parameters became NaN/inf.
    """
    out_dir = Path(out_dir)
    ctx = distributed.current()
    main = ctx is None or ctx.is_main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out_dir / CHECKPOINT, out_dir / METRICS
    eval_train_loader = eval_train_loader or train_loader
    replica = model
    if ctx is not None:
        train_loader = distributed.shard_loader(train_loader, ctx, name="training loader")
        eval_train_loader, test_loader, val_loader = (
            distributed.shard_loader(loader, ctx, every_rank=False) if loader is not None else None
            for loader in (eval_train_loader, test_loader, val_loader))
        ddp = distributed.Replica(model, ctx, torch.device(device))
        replica = ddp.module
    epoch, batch_in_epoch, step, elapsed = 0, 0, 0, 0.0
    if resume:
        state = load_checkpoint(ckpt_path, map_location=device if ctx is None else "cpu") if main else None
        state = distributed.broadcast_object(state, ctx)
        load_model_state(model, state["model"], ckpt_path)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"{ckpt_path}: the optimizer state does not fit this run's optimizer ({exc}); "
                             "train again with --overwrite") from None
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        epoch, batch_in_epoch, step, elapsed = state["epoch"], state["batch"], state["step"], state["elapsed"]
        if hasattr(step_callback, "load_state_dict") and state.get("callback") is not None:
            step_callback.load_state_dict(state["callback"])
        if main:
            _truncate_metrics(metrics_path, step, epoch)
    elif main:  # a fresh run: nothing of an earlier run in this directory may be resumed by mistake
        ckpt_path.unlink(missing_ok=True)
        metrics_path.write_text("")

    def checkpoint(ep: int, batch: int) -> None:
        if not _all_finite(model):
            raise NonFiniteLossError(f"a parameter became NaN/inf at step {step} (epoch {ep}); {_kept(ckpt_path)}; "
                                     "lower the learning rate")
        if not main:
            return
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "epoch": ep, "batch": batch, "step": step, "elapsed": elapsed + time.perf_counter() - start,
            "extra": extra_state or {},
            "callback": step_callback.state_dict() if hasattr(step_callback, "state_dict") else None,
        })

    metrics_file = metrics_path.open("a") if main else None
    sink = sink if main else None
    if sink is not None:
        sink.open(out_dir, step)
    start = time.perf_counter()

    def log(record: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
        if sink is not None:
            sink(record)

    def flush() -> None:
        if metrics_file is not None:
            metrics_file.flush()
        if sink is not None:
            sink.flush()

    def epoch_record(ep: int) -> dict[str, Any]:
        train_loss, train_acc = evaluate(model, eval_train_loader, loss_fn, device, metric, ctx)
        test_loss, test_acc = evaluate(model, test_loader, loss_fn, device, metric, ctx)
        rec = {"kind": "epoch", "epoch": ep, "step": step, "train_loss": train_loss, "train_acc": train_acc,
               "test_loss": test_loss, "test_acc": test_acc}
        if val_loader is not None:
            rec["val_loss"], rec["val_acc"] = evaluate(model, val_loader, loss_fn, device, metric, ctx)
        rec["time"] = round(elapsed + time.perf_counter() - start, 3)
        log(rec)
        return rec

    last = epoch_record(0) if epoch == 0 and batch_in_epoch == 0 else None

    flush()
    initial_loss = distributed.broadcast_object(  # epoch 0's, from rank 0's metrics
        next((r["train_loss"] for r in read_metrics(out_dir) if r["kind"] == "epoch"), None) if main else None, ctx)

    def check_divergence(rec: dict[str, Any]) -> None:
        if (divergence_factor is not None and initial_loss is not None
                and rec["train_loss"] > divergence_factor * max(initial_loss, 1e-12)):
            raise DivergedError(f"diverged: the training loss rose from {initial_loss:.4g} before training to "
                                f"{rec['train_loss']:.4g} after epoch {rec['epoch']} (more than {divergence_factor:g}x); "
                                f"the run stopped; {_kept(ckpt_path)}; lower the learning rate (K-FAC/EKFAC: raise "
                                "--damping or set --kl-clip)")

    def callback() -> None:
        if step_callback is not None:
            rec = step_callback(step, model)
            if rec is not None:
                log({"kind": "callback", "step": step, **rec})

    def reached(rec: dict[str, Any] | None) -> bool:
        return target_train_loss is not None and rec is not None and rec["train_loss"] <= target_train_loss

    if last is not None:
        callback()
    if resume and target_train_loss is not None and batch_in_epoch == 0 and epoch > 0:
        done = distributed.broadcast_object(
            [r for r in read_metrics(out_dir) if r["kind"] == "epoch" and r["epoch"] == epoch] if main else None, ctx)
        if done and reached(done[-1]):
            epochs = epoch  # the resumed run had already reached its target
    steps_per_epoch = len(train_loader)
    bar = tqdm(total=epochs * steps_per_epoch, initial=step, disable=not (progress and main), leave=False,
               desc=str(out_dir.name), dynamic_ncols=True)
    model.train()
    try:
        while epoch < epochs:
            _set_epoch(train_loader, epoch)
            with torch.random.fork_rng(devices=[]):  # DataLoader.__iter__ draws a seed from the global RNG
                batches = iter(train_loader)
            for i, (x, y) in enumerate(batches):
                if i < batch_in_epoch:
                    continue
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)

                def closure(x=x, y=y) -> Tensor:  # torch's protocol: optimizers may re-evaluate the loss
                    optimizer.zero_grad(set_to_none=True)  # (LBFGS; K-FAC/EKFAC's adaptive damping)
                    loss = loss_fn(replica(x), y)
                    value, where = loss.item(), ""
                    if ctx is not None:  # the global-batch loss; every rank stops if one met NaN/inf
                        value, bad = ddp.global_loss(value, y.shape[0])
                        where = f" on rank(s) {bad} of {ctx.world}" if bad else ""
                    if not math.isfinite(value):
                        raise NonFiniteLossError(
                            f"the loss became {value}{where} at step {step + 1} (epoch {epoch + 1}); the run stopped; "
                            f"{_kept(ckpt_path)}; lower the learning rate or clip gradients")
                    loss.backward()
                    if max_grad_norm is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                    return loss if ctx is None else torch.tensor(value, dtype=torch.float64)

                try:
                    loss = optimizer.step(closure)
                    value = loss.item() if isinstance(loss, Tensor) else float(loss)
                except FloatingPointError as exc:  # e.g. K-FAC factors with NaN/inf: a divergence, not a crash
                    if isinstance(exc, NonFiniteLossError):
                        raise
                    raise NonFiniteLossError(f"the optimizer met non-finite values at step {step + 1} (epoch "
                                             f"{epoch + 1}): {exc}; {_kept(ckpt_path)}") from exc
                lr = optimizer.param_groups[0]["lr"]
                if scheduler is not None:
                    scheduler.step()
                step += 1
                batch_in_epoch = i + 1
                log({"kind": "step", "step": step, "epoch": epoch + 1, "loss": value, "lr": lr})
                callback()
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}", refresh=False)
                if checkpoint_every and step % checkpoint_every == 0 and batch_in_epoch < steps_per_epoch:
                    flush()
                    checkpoint(epoch, batch_in_epoch)
                if stop_after_steps is not None and step >= stop_after_steps:
                    raise KeyboardInterrupt
            epoch += 1
            batch_in_epoch = 0
            last = epoch_record(epoch)
            flush()
            check_divergence(last)
            checkpoint(epoch, 0)
            if reached(last):
                break
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if sink is not None:
            sink.close()
    if last is None:  # resumed a finished run: report its stored final epoch
        last = distributed.broadcast_object([r for r in read_metrics(out_dir) if r["kind"] == "epoch"][-1]
                                            if main else None, ctx)
    summary = {"epochs": epoch, "steps": step, "seconds": round(elapsed + time.perf_counter() - start, 3),
               "train_loss": last["train_loss"], "train_acc": last["train_acc"],
               "test_loss": last["test_loss"], "test_acc": last["test_acc"], "out_dir": str(out_dir)}
    if "val_loss" in last:
        summary["val_loss"], summary["val_acc"] = last["val_loss"], last["val_acc"]
    if target_train_loss is not None:
        summary["reached_target"] = reached(last)
    return summary


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``out_dir/metrics.jsonl``."""
    path = Path(out_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
