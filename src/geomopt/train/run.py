"""Build everything a :class:`TrainConfig` names and train it with :func:`fit`."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from geomopt.curvature import read_batches
from geomopt.data import load_dataset, make_loader
from geomopt.nn import build_model, trusted_models
from geomopt.optim import build_optimizer
from geomopt.optim.registry import KRONECKER_OPTIONS
from geomopt.train import distributed
from geomopt.train.checkpoint import write_json
from geomopt.train.config import TrainConfig, read_json
from geomopt.train.engine import CHECKPOINT, METRICS, NonFiniteLossError, fit
from geomopt.train.callbacks import SharpnessTracker, TensorBoardLog
from geomopt.train.tasks import bits, task_objective

SCHEDULES = ("constant", "cosine", "step")
CONFIG = "config.json"


def lr_factor(schedule: str, total_steps: int):
    """Multiplier of the base learning rate at a given step (picklable, for LambdaLR)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    return _Schedule(schedule, max(total_steps, 1))


class _Schedule:
    def __init__(self, kind: str, total: int):
        self.kind, self.total = kind, total

    def __call__(self, step: int) -> float:
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, self.total) / self.total))
        if self.kind == "step":
            return 0.1 ** ((step >= 0.5 * self.total) + (step >= 0.75 * self.total))
        return 1.0


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``, with a clear error when CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch.cuda.is_available() is False on this machine")
    return device


# fields a resumed run may change: it trains on to the new number of epochs
EXTENDABLE = ("epochs", "checkpoint_every")


def build_run_model(config: TrainConfig, bundle) -> torch.nn.Module:
    """The network ``config`` describes for the data ``bundle``; its initialization is a pure function of
    ``config.seed``. A ``MODULE:FACTORY`` model is imported only when trusted (:mod:`geomopt.nn.factory`)."""
    return build_model(config.model, bundle.input_shape, bundle.num_classes, widths=config.widths, bias=config.bias,
                       dropout=config.dropout, init=config.init, seed=config.seed,
                       task=getattr(bundle, "task", None) or "classification", options=config.model_options)


def writable_dir(out_dir: Path) -> Path:
    """``out_dir``, created; a path that is a file or cannot be written raises ValueError in one line."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a directory: choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".geomopt-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write into {out_dir}: {exc.strerror or exc}; choose another --out") from None
    return out_dir


def _plan(config: TrainConfig, out_dir: Path, resume: bool, overwrite: bool) -> str:
    """What to do with ``out_dir``: ``"fresh"``, ``"resume"`` or ``"done"`` (same config, finished).

    A folder holding a different run is refused (naming what differs) unless ``overwrite``.
    """
    stored_path = out_dir / CONFIG
    if resume:
        refusal = _resume_refusal(TrainConfig.load(stored_path), config, out_dir)
        if refusal:
            raise ValueError(refusal)
        return "resume"
    holds_run = any((out_dir / name).exists() for name in (CONFIG, CHECKPOINT, "summary.json"))
    if overwrite or not holds_run:
        return "fresh"
    if not stored_path.exists():
        raise ValueError(f"{out_dir} holds files of an earlier run but no {CONFIG}: choose another --out, "
                         "or pass --overwrite to replace them")
    stored = TrainConfig.load(stored_path)
    diff = stored.differences(config)
    if diff:  # --resume is named only where it can help (not after a divergence with a lower learning rate)
        resume_hint = "" if _resume_refusal(stored, config, out_dir) else f", continue it with --resume {out_dir}"
        raise ValueError(f"{out_dir} holds a different run ({_describe_diff(diff)}): choose another --out"
                         f"{resume_hint}, or pass --overwrite to replace it")
    if (out_dir / "summary.json").is_file():
        return "done"
    return "resume" if (out_dir / CHECKPOINT).is_file() else "fresh"


def _resume_refusal(stored: TrainConfig, config: TrainConfig, out_dir: Path) -> str | None:
    """Why the run ``stored`` in ``out_dir`` cannot be resumed as ``config`` (None: it can)."""
    diff = stored.differences(config)
    if set(diff) - set(EXTENDABLE):
        return (f"--resume {out_dir}: the config differs from the stored one in {_describe_diff(diff)}; "
                f"only {list(EXTENDABLE)} may change on resume")
    if "epochs" in diff and config.schedule != "constant":
        return (f"--resume {out_dir} --epochs {config.epochs}: the {config.schedule} schedule was laid out "
                f"for {stored.epochs} epochs; extending it would change the rates already used. Start a new run instead")
    return None


def _describe_diff(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: stored {a!r}, given {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, stop_after_steps: int | None = None,
          timeout: float = distributed.DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Train the run ``config`` describes into ``out_dir`` (config.json, metrics.jsonl, checkpoint.pt).

    A folder that already holds this config is resumed (or, finished, returned as it is, with
    ``"skipped": True``); one that holds a different run raises ValueError naming what differs,
    unless ``overwrite``. A run that fails before its first checkpoint (other than by a NaN/inf loss)
    removes the folders it created. With ``resume=True`` the stored config.json must equal ``config`` except for
    ``epochs`` (a finished run trains on to the new number) and ``checkpoint_every``.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), this process joins the process
    group (collectives time out after ``timeout`` seconds) and trains data-parallel (see :func:`fit`);
    rank 0 decides what to do with ``out_dir`` and writes into it. A process that dies, stops answering
    or cannot join raises :class:`~geomopt.train.distributed.ProcessLostError` on the others.

    ``config`` comes from the caller: a ``MODULE:FACTORY`` model it names is trusted (imported) for the
    run; callers that read a config from a file check it first (:func:`geomopt.nn.factory.check_trusted`).
    """
    own_group = not (dist.is_available() and dist.is_initialized()) and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if own_group:
        distributed.init_from_env(resolve_device(config.device).type, timeout)
    out_dir, ctx = Path(out_dir), distributed.current()
    created = _missing_dirs(out_dir) if ctx is None or ctx.is_main else []
    try:
        with trusted_models(config.model):
            return _train(config, out_dir, resume=resume, overwrite=overwrite, progress=progress,
                          stop_after_steps=stop_after_steps)
    except Exception as exc:
        if created and not isinstance(exc, NonFiniteLossError) and not (out_dir / CHECKPOINT).exists():
            _remove_failed_start(out_dir, created)
        lost = distributed.lost_process(exc, ctx, timeout) if ctx is not None else None
        if lost is not None:  # the backend's words for a dead or silent process
            raise lost from None
        raise
    finally:
        if own_group:
            distributed.leave()


def _missing_dirs(out_dir: Path) -> list[Path]:
    """``out_dir`` and those of its parents that do not exist yet (deepest first)."""
    return [d for d in (out_dir, *out_dir.parents) if not d.exists()]


def _remove_failed_start(out_dir: Path, created: list[Path]) -> None:
    """Undo a run that failed before its first checkpoint (bad data, a process that could not join, ...)
    in folders this call created: the files it wrote, then the folders, as long as they are empty."""
    for name in (CONFIG, METRICS, "summary.json"):
        (out_dir / name).unlink(missing_ok=True)
    for d in created:
        try:
            d.rmdir()
        except OSError:  # holds something else
            return


def _train(config: TrainConfig, out_dir: Path, *, resume: bool, overwrite: bool, progress: bool,
           stop_after_steps: int | None) -> dict[str, Any]:
    ctx = distributed.current()
    main = ctx is None or ctx.is_main
    plan: str | ValueError | dict = "fresh"
    if main:
        try:
            out_dir = writable_dir(out_dir)
            plan = _plan(config, out_dir, resume, overwrite)
            if plan == "done":
                plan = {**read_json(out_dir / "summary.json", "a run's summary.json"), "skipped": True}
        except ValueError as exc:  # raised on every rank
            plan = exc
    plan = distributed.broadcast_object(plan, ctx)
    if isinstance(plan, ValueError):
        raise plan
    if isinstance(plan, dict):
        return plan
    resume = plan == "resume"
    callbacks = [TensorBoardLog(config.to_dict())] if config.log == "tensorboard" and main else []
    device = distributed.local_device(resolve_device(config.device))
    bundle = load_dataset(config.data, data_dir=config.data_dir, seed=config.seed, train_size=config.train_size,
                          label_noise=config.label_noise, seq_len=config.seq_len, val_fraction=config.val_fraction)
    torch.manual_seed(config.seed)
    model = build_run_model(config, bundle).to(device)
    loss_fn, metric = task_objective(bundle.task, config.loss)
    kronecker = {k: getattr(config, k) for k in KRONECKER_OPTIONS} if config.optimizer in ("kfac", "ekfac") else {}
    optimizer = build_optimizer(config.optimizer, model, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, **kronecker)
    train_loader = make_loader(bundle.train, config.batch_size, shuffle=True, seed=config.seed)
    eval_batch = max(config.batch_size, 1000)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.schedule, config.epochs * len(train_loader)))
    if config.track_sharpness:
        with torch.random.fork_rng(devices=[]):  # iterating a DataLoader draws from the global RNG (dropout's)
            batches = read_batches(make_loader(bundle.train, eval_batch, shuffle=False), device,
                                   config.sharpness_examples, what="--sharpness-examples")
        callbacks.append(SharpnessTracker(config.track_sharpness, batches, loss_fn, seed=config.seed))
    if main:
        write_json(out_dir / CONFIG, config.to_dict())
        (out_dir / "summary.json").unlink(missing_ok=True)
    summary = fit(model, optimizer, train_loader, make_loader(bundle.test, eval_batch, shuffle=False),
                  epochs=config.epochs, out_dir=out_dir, scheduler=scheduler, device=device,
                  loss_fn=loss_fn, metric=metric,
                  eval_train_loader=make_loader(bundle.train, eval_batch, shuffle=False), resume=resume,
                  checkpoint_every=config.checkpoint_every, max_grad_norm=config.max_grad_norm,
                  progress=progress, extra_state={"config": config.to_dict()}, stop_after_steps=stop_after_steps,
                  target_train_loss=config.target_train_loss, callbacks=callbacks,
                  val_loader=make_loader(bundle.valid, eval_batch, shuffle=False) if bundle.valid is not None else None)
    if bundle.task == "sequence":  # per-step cross-entropy in bits (bits per character for a language model)
        summary.update({f"{k}_bits": bits(summary[f"{k}_loss"]) for k in ("train", "test", "val")
                        if f"{k}_loss" in summary})
    if main:
        write_json(out_dir / "summary.json", summary)
    return summary
