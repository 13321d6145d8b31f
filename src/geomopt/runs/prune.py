"""Prune a trained run directory (``geomopt prune RUN_DIR``): the final checkpoint of a ``geomopt train`` run is
pruned step by step (:func:`geomopt.prune.prune_model`, each loss model checked against the real loss change), then
fine-tuned with the mask through the training engine with the run's own config."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from geomopt.data import load_dataset, make_loader
from geomopt.nn.factory import check_trusted
from geomopt.optim import build_optimizer
from geomopt.prune.masks import permanent_state_dict, sparsity
from geomopt.prune.run import PruneStep, prune_model
from geomopt.train import TrainConfig, evaluate, fit, load_checkpoint, resolve_device, write_json
from geomopt.train.checkpoint import load_model_state, save_checkpoint
from geomopt.train.run import build_run_model


def _history_records(history: list[PruneStep]) -> list[dict[str, Any]]:
    return [{**asdict(h), "actual_change": h.actual_change} for h in history]


def prune_run(run_dir: str | Path, *, criterion: str, target_sparsity: float, steps: int, finetune_epochs: int,
              n_examples: int = 1000, locality: float = 0.0, lr: float | None = None, out: str | Path | None = None,
              compensate: bool = False, progress: bool = True) -> dict[str, Any]:
    """Prune the final checkpoint of a ``geomopt train`` run and fine-tune it with its own config.

    Writes ``prune.json`` (per-step predicted vs actual loss change, accuracies before and after
    pruning and after fine-tuning) and the fine-tuning run (metrics.jsonl, checkpoint) into ``out``
    (default ``RUN_DIR/prune-{criterion}-{sparsity}-{steps}``).
    """
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
        "history": _history_records(history),
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
