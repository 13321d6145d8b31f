"""The exploring-generalization reproduction on a tiny grid: outputs, section, verdict, unknown keys."""

from __future__ import annotations

import csv
import json

import pytest

from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.exploring_generalization import NAME, reproduce

TINY = {"data": "digits", "widths": [16], "sizes": [60, 120], "epochs": 3, "lr": 0.1, "target_train_loss": 0.5,
        "zoo_widths": [8, 16], "zoo_depths": [1], "zoo_lrs": [0.1], "zoo_batch_sizes": [32],
        "zoo_weight_decays": [0.0, 0.01], "zoo_train_size": 120, "zoo_epochs": 3, "min_train_acc": 0.0,
        "measure": {"sharpness_steps": 2, "sharpness_restarts": 1, "flatness_samples": 2}}


def test_tiny_reproduction_writes_tables_figures_and_a_section(tmp_path):
    assert EXPERIMENTS[NAME].reproduce is reproduce
    path = reproduce(tmp_path, quick=True, jobs=1, overrides=TINY)
    root = tmp_path / NAME
    section = json.loads(path.read_text())
    assert {f["file"] for f in section["figures"]} == {"labels.png", "correlation.png"}
    assert all((root / f["file"]).is_file() for f in section["figures"])
    with (root / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["labels"], int(r["size"])) for r in rows} == {(k, n) for k in ("true", "random") for n in (60, 120)}
    assert any(p.startswith("Our result: ") and "claim" in p or "not available" in p for p in section["paragraphs"])
    assert section["tables"][1]["rows"]  # the zoo's correlation table
    # random labels: the training labels of the random runs differ from the true ones
    cfg = json.loads((root / "labels" / "random_n60" / "config.json").read_text())
    assert cfg["label_noise"] == 1.0 and cfg["target_train_loss"] == 0.5


def test_unknown_key_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment key"):
        reproduce(tmp_path, quick=True, jobs=1, overrides={"nope": 1})
