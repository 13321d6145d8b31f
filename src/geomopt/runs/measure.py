"""Generalization measures of a trained run directory (``geomopt measure RUN_DIR``).

A run directory is what :func:`geomopt.train.train` writes (config.json, checkpoint.pt,
summary.json). The initial network is rebuilt from the config (initialization is a pure function
of the seed), so distances to init and the PAC-Bayes prior mean need nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from geomopt.data import load_dataset, make_loader
from geomopt.measures.core import compute
from geomopt.nn.factory import check_trusted
from geomopt.train.checkpoint import load_checkpoint, load_model_state, write_json
from geomopt.train.config import TrainConfig, same_config
from geomopt.train import evaluate
from geomopt.train.run import build_run_model

MEASURES_FILE = "measures.json"


def load_run(run_dir: str | Path):
    """(config, trained model, initial model, DatasetBundle) of a run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json; pass a `geomopt train` output directory")
    config = TrainConfig.load(run_dir / "config.json")
    check_trusted(config.model, run_dir / "config.json")
    bundle = load_dataset(config.data, data_dir=config.data_dir, seed=config.seed, train_size=config.train_size,
                          label_noise=config.label_noise, val_fraction=config.val_fraction)
    if getattr(bundle, "task", "classification") not in (None, "classification"):
        raise ValueError(f"{run_dir}: generalization measures need a classification run, got task {bundle.task!r}")
    init = build_run_model(config, bundle)
    model = build_run_model(config, bundle)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    load_model_state(model, state["model"], run_dir / "checkpoint.pt")
    return config, model.eval(), init.eval(), bundle


def measure_run(run_dir: str | Path, *, measures: str | list[str] = "all", progress: bool = True,
                overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Compute the measures of a trained run and write ``RUN_DIR/measures.json``.

    The stored result also holds the run's final train/test error and loss and the
    generalization gap (test error - train error). An existing measures.json computed with the
    same options and config, newer than the checkpoint, is returned unless ``overwrite``.
    """
    run_dir = Path(run_dir)
    stored = None if overwrite else stored_measures(run_dir, options, measures)
    if stored is not None:
        return stored
    key = {"measures": measures, **options}
    config, model, init, bundle = load_run(run_dir)
    train = make_loader(bundle.train, 1000, shuffle=False)
    result = compute(model, train, init_model=init, measures=measures, progress=progress, **options)
    if "train_error" not in result:  # groups that never evaluate the training loss
        train_loss, train_acc = evaluate(model, train, torch.nn.functional.cross_entropy)
        result.update({"train_loss": train_loss, "train_error": 1 - train_acc})
    test_loss, test_acc = evaluate(model, make_loader(bundle.test, 1000, shuffle=False),
                                   torch.nn.functional.cross_entropy)
    result.update({"test_loss": test_loss, "test_error": 1 - test_acc,
                   "gap": (1 - test_acc) - result["train_error"], "loss_gap": test_loss - result["train_loss"],
                   "options": key, "config": config.to_dict()})
    write_json(run_dir / MEASURES_FILE, result)
    return result


def _stored_config_matches(stored: Any, config_file: Path) -> bool:
    """Whether the config recorded with the measures is the run's (:func:`same_config`)."""
    try:
        return isinstance(stored, dict) and same_config(config_file, TrainConfig.from_dict(stored))
    except ValueError:
        return False


def stored_measures(run_dir: str | Path, options: dict[str, Any], measures: str | list[str] = "all"
                    ) -> dict[str, Any] | None:
    """``RUN_DIR/measures.json`` when it was computed with these options from the run's current config
    (and, when the checkpoint is there, not older than it); else None."""
    run_dir = Path(run_dir)
    path, ckpt = run_dir / MEASURES_FILE, run_dir / "checkpoint.pt"
    if not (path.is_file() and (run_dir / "config.json").is_file()):
        return None
    stored = json.loads(path.read_text())
    key = json.loads(json.dumps({"measures": measures, **options}))
    if stored.get("options") != key or not _stored_config_matches(stored.get("config"), run_dir / "config.json"):
        return None
    if ckpt.is_file() and ckpt.stat().st_mtime > path.stat().st_mtime:
        return None
    return stored
