"""Prune a trained network step by step, measure each loss model against the real loss change,
then fine-tune with the mask through the training engine."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from geomopt.prune.masks import count_prunable, permanent_state_dict, prune_lowest, schedule_counts, sparsity
from geomopt.prune.scores import loss_statistics, predicted_loss_change, scores


@dataclass
class PruneStep:
    """One pruning step: what the loss model predicted and what happened (on the score examples)."""

    step: int
    removed: int
    sparsity: float
    loss_before: float
    loss_after: float
    predicted_change: float | None

    @property
    def actual_change(self) -> float:
        return self.loss_after - self.loss_before


def prune_model(model: nn.Module, loader: Iterable, *, criterion: str, target_sparsity: float, steps: int = 1,
                n_examples: int = 1000, locality: float = 0.0, compensate: bool = False,
                progress: bool = True) -> list[PruneStep]:
    """Globally prune ``target_sparsity`` of the Linear/Conv weights of ``model`` in ``steps`` steps.

    Each step recomputes the loss statistics (mean gradient, Gauss-Newton diagonal) on the
    masked network from the first ``n_examples`` of ``loader``, scores the remaining weights
    with ``criterion`` (see :mod:`geomopt.prune.scores`) and removes
    r = 1 - (1 - p)^(1/steps) of what is left; the last step reaches exactly the target.

    ``compensate`` (kobs only): after each step, move the remaining weights by the sum of the
    single-weight OBS compensations of the removed ones. Summing them ignores the interactions
    between removals; with hundreds of removals per step it can hurt (see the pruning docs), so it
    is off by default.
    """
    counts = schedule_counts(count_prunable(model), target_sparsity, steps)
    need_curvature = criterion in ("qm", "obd", "kobs")
    history = []
    for j, count in enumerate(tqdm(counts, desc=f"prune {criterion}", disable=not progress, leave=False), start=1):
        stats = loss_statistics(model, loader, n_examples=n_examples, gradient=criterion != "mp",
                                curvature=need_curvature, kronecker=criterion == "kobs")
        weights = {k: v.detach().clone() for k, v in _effective(model).items()}
        removed = prune_lowest(model, scores(model, criterion, stats if criterion != "mp" else None,
                                             locality=locality), count)
        if criterion == "kobs" and compensate:
            _compensate(model, stats, weights, removed)
        after = loss_statistics(model, loader, n_examples=n_examples, gradient=False, curvature=False)["loss"]
        predicted = predicted_loss_change(criterion, stats, removed, weights) if criterion != "mp" else None
        history.append(PruneStep(j, count, sparsity(model), stats["loss"], after, predicted))
    return history


@torch.no_grad()
def _compensate(model: nn.Module, stats: dict[str, Any], weights: dict[str, torch.Tensor],
                removed: dict[str, torch.Tensor]) -> None:
    """Kronecker OBS: move the remaining weights by the sum of the single-weight compensations of
    the removed ones (the mask keeps removed and earlier-pruned weights at zero)."""
    from geomopt.prune.scores import kfac_inverses, kronecker_obs_update
    for name, rm in removed.items():
        if not bool(rm.any()):
            continue
        a_inv, g_inv = kfac_inverses(stats["kfac"][name], 1e-3)
        module = model.get_submodule(name[:-len(".weight")]) if name != "weight" else model
        getattr(module, "weight_orig", module.weight).add_(kronecker_obs_update(weights[name], rm, a_inv, g_inv))


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    from geomopt.prune.scores import _effective_weights
    return _effective_weights(model)


def history_records(history: list[PruneStep]) -> list[dict[str, Any]]:
    return [{**asdict(h), "actual_change": h.actual_change} for h in history]


def prune_run(run_dir: str | Path, *, criterion: str, target_sparsity: float, steps: int, finetune_epochs: int,
              n_examples: int = 1000, locality: float = 0.0, lr: float | None = None, out: str | Path | None = None,
              compensate: bool = False, progress: bool = True) -> dict[str, Any]:
    """Prune the final checkpoint of a ``geomopt train`` run and fine-tune it with its own config.

    Writes ``prune.json`` (per-step predicted vs actual loss change, accuracies before and after
    pruning and after fine-tuning) and the fine-tuning run (metrics.jsonl, checkpoint) into ``out``
    (default ``RUN_DIR/prune-{criterion}-{sparsity}-{steps}``).
    """
    from geomopt.data import load_dataset, make_loader
    from geomopt.optim import build_optimizer
    from geomopt.train import TrainConfig, evaluate, fit, load_checkpoint, resolve_device, write_json
    from geomopt.nn.factory import check_trusted
    from geomopt.train.run import build_run_model
    from geomopt.train.checkpoint import load_model_state, save_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run_dir} is not a `geomopt train` run: it needs config.json and checkpoint.pt")
    config = TrainConfig.load(run_dir / "config.json")
    check_trusted(config.model, run_dir / "config.json")
    out = Path(out) if out else run_dir / f"prune-{criterion}-{target_sparsity:g}-{steps}"
    device = resolve_device(config.device)
    bundle = load_dataset(config.data, data_dir=config.data_dir, seed=config.seed, train_size=config.train_size,
                          label_noise=config.label_noise, val_fraction=config.val_fraction)
    model = build_run_model(config, bundle).to(device)
    load_model_state(model, load_checkpoint(run_dir / "checkpoint.pt", map_location=device)["model"],
                     run_dir / "checkpoint.pt")
    train_eval = make_loader(bundle.train, 1000, shuffle=False)
    test_loader = make_loader(bundle.test, 1000, shuffle=False)
    loss_fn = nn.functional.cross_entropy
    dense = evaluate(model, test_loader, loss_fn, device)
    history = prune_model(model, make_loader(bundle.train, 256, shuffle=True, seed=config.seed), criterion=criterion,
                          target_sparsity=target_sparsity, steps=steps, n_examples=n_examples, locality=locality,
                          compensate=compensate, progress=progress)
    pruned_train = evaluate(model, train_eval, loss_fn, device)
    pruned_test = evaluate(model, test_loader, loss_fn, device)
    record: dict[str, Any] = {
        "run_dir": str(run_dir), "criterion": criterion, "sparsity": target_sparsity, "steps": steps,
        "n_examples": n_examples, "locality": locality, "compensate": compensate,
        "achieved_sparsity": sparsity(model),
        "dense_test_loss": dense[0], "dense_test_acc": dense[1],
        "pruned_train_loss": pruned_train[0], "pruned_test_loss": pruned_test[0], "pruned_test_acc": pruned_test[1],
        "history": history_records(history),
    }
    if finetune_epochs > 0:
        optimizer = build_optimizer(config.optimizer, model, lr=lr if lr is not None else config.lr,
                                    momentum=config.momentum, weight_decay=config.weight_decay)
        summary = fit(model, optimizer, make_loader(bundle.train, config.batch_size, shuffle=True, seed=config.seed),
                      test_loader, epochs=finetune_epochs, out_dir=out, device=device, eval_train_loader=train_eval,
                      progress=progress)
        record.update(finetuned_test_loss=summary["test_loss"], finetuned_test_acc=summary["test_acc"],
                      finetuned_sparsity=sparsity(model))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "prune.json", record)
    # a run folder like any other: `geomopt measure OUT` reads config.json and the pruned weights
    write_json(out / "config.json", config.to_dict() if lr is None else config.replace(lr=lr).to_dict())
    save_checkpoint(out / "checkpoint.pt", {"model": permanent_state_dict(model), "pruned": True})
    return record


class GradualPruner:
    """Gradual pruning during training (Zhu & Gupta 2017): a ``step_callback`` for
    :func:`geomopt.train.fit` that, every ``every`` steps between ``start_step`` and ``end_step``,
    removes weights by ``criterion`` until the sparsity follows the cubic schedule
    s(t) = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3 (:func:`gradual_sparsity`).

    The masks are torch.nn.utils.prune masks, so the optimizer keeps updating ``weight_orig`` while
    pruned weights stay zero. Resuming such a run needs the masks attached before loading
    (:func:`geomopt.prune.apply_masks`); ``fit(resume=True)`` does not do it.
    """

    def __init__(self, loader: Iterable, *, criterion: str, final_sparsity: float, start_step: int, end_step: int,
                 every: int = 100, n_examples: int = 1000, locality: float = 0.0):
        if not 0 <= start_step < end_step or every < 1:
            raise ValueError(f"GradualPruner: need 0 <= start_step < end_step and every >= 1, got "
                             f"{start_step}, {end_step}, {every}")
        self.loader, self.criterion, self.final = loader, criterion, final_sparsity
        self.start, self.end, self.every, self.n_examples, self.locality = start_step, end_step, every, n_examples, \
            locality

    def __call__(self, step: int, model: nn.Module) -> dict[str, Any] | None:
        due = step == self.end or (self.start <= step < self.end and (step - self.start) % self.every == 0)
        if not due:
            return None
        from geomopt.prune.masks import gradual_sparsity, masks_from_state_dict
        total = count_prunable(model)
        pruned = sum(int((m == 0).sum()) for m in masks_from_state_dict(model.state_dict()).values())
        count = round(total * gradual_sparsity(step, self.start, self.end, self.final)) - pruned
        if count <= 0:
            return None
        stats = None
        if self.criterion != "mp":
            stats = loss_statistics(model, self.loader, n_examples=self.n_examples,
                                    curvature=self.criterion in ("qm", "obd", "kobs"),
                                    kronecker=self.criterion == "kobs")
        prune_lowest(model, scores(model, self.criterion, stats, locality=self.locality), count)
        model.train()
        return {"pruned": count, "sparsity": (pruned + count) / total}
