"""The exploring-generalization reproduction on a tiny grid: outputs, section, claims over seeds, unknown keys.

References: the run folders and labels.csv (one row per label kind, size and seed), the claims.json
schema (every claim over the seeds given), the per-seed zoo correlations recomputed from their csv.
"""

from __future__ import annotations

import csv
import json

import pytest

from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.exploring_generalization import NAME, ExploringGeneralizationExperiment, reproduce, zoo_tau
from geomopt.experiments.ledger import _recompute
from geomopt.experiments.records import read_stored

TINY = {"data": "digits", "widths": [16], "sizes": [60, 120], "epochs": 3, "lr": 0.1, "target_train_loss": 0.5,
        "zoo_widths": [8, 16], "zoo_depths": [1], "zoo_lrs": [0.1], "zoo_batch_sizes": [32],
        "zoo_weight_decays": [0.0, 0.01], "zoo_train_size": 120, "zoo_epochs": 3, "min_train_acc": 0.0,
        "measure": {"sharpness_steps": 2, "sharpness_restarts": 1, "flatness_samples": 2}, "seeds": [0, 1]}


def test_tiny_reproduction_writes_tables_figures_and_a_section(tmp_path):
    assert EXPERIMENTS[NAME].reproduce is reproduce
    path = reproduce(tmp_path, tier="quick", jobs=1, overrides=TINY)
    root = tmp_path / NAME
    section = json.loads(path.read_text())
    assert {f["file"] for f in section["figures"]} == {"labels.png"}
    assert all((root / f["file"]).is_file() for f in section["figures"])
    with (root / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["part"] == "labels"]
    assert {(r["labels"], int(r["size"]), int(r["seed"])) for r in rows} == {
        (k, n, s) for k in ("true", "random") for n in (60, 120) for s in (0, 1)}
    assert section["tables"][1]["rows"]  # the zoo's correlation table
    # random labels: the training labels of the random runs differ from the true ones
    cfg = json.loads((root / "labels" / "random_n60_seed1" / "config.json").read_text())
    assert cfg["label_noise"] == 1.0 and cfg["target_train_loss"] == 0.5 and cfg["seed"] == 1
    record = json.loads((root / "claims.json").read_text())
    assert record["seeds"] == [0, 1] and len(record["claims"]) == 9
    assert record["tier"] == "quick"
    # 3-epoch runs are not fitted: part (a)'s claims are untestable, naming the gate
    assert all(c["verdict"] == "untestable here" and "not fitted" in c["why"]
               for c in record["claims"] if c["id"].startswith("random-larger"))
    # a claim on the zoo: the per-seed Kendall taus of sharpness are those of each seed's own zoo
    (tau,) = [c for c in record["claims"] if c["id"] == "tau-sharpness"]
    per_seed = []
    for seed in (0, 1):
        with (root / "zoo" / f"seed{seed}" / "correlation.csv").open() as f:
            per_seed += [float(r["kendall_tau"]) for r in csv.DictReader(f) if r["measure"] == "sharpness"]
    assert tau["verdict"] == "untestable here" and "fewer than 6" in tau["why"]  # 2-model zoos
    stored = read_stored(root, ExploringGeneralizationExperiment.quick().replace(TINY))
    stored_taus = [zoo_tau(stored, seed, "sharpness")[0] for seed in (0, 1)]
    assert stored_taus == pytest.approx(per_seed)
    # `geomopt results check` recomputes the same verdicts from experiment.json and the csv files
    assert [c["verdict"] for c in _recompute(record, root)] == [c["verdict"] for c in record["claims"]]


def test_unknown_key_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment key"):
        reproduce(tmp_path, tier="quick", jobs=1, overrides={"nope": 1})
