"""`geomopt reproduce ekfac` on a tiny grid: files written, autoencoder runs through the engine with a
reconstruction loss (no accuracy), table rows per study, verdict computed, unknown keys rejected."""

import csv
import json

import pytest

from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.ekfac import EKFACExperiment
from geomopt.train import read_metrics


def test_tiny_reproduction(tmp_path):
    overrides = {"epochs": 2, "cnn_epochs": 1, "widths": [8, 4, 8], "cnn_widths": [4], "dampings": [1.0],
                 "lrs": {"momentum": [0.03], "adam": [0.003], "kfac": [0.1], "ekfac": [0.1]}, "train_size": 300}
    section = EXPERIMENTS["ekfac"].reproduce(tmp_path, quick=True, jobs=1, overrides=overrides)
    root = tmp_path / "ekfac"
    data = json.loads(section.read_text())
    rows = list(csv.DictReader((root / "table.csv").open()))
    assert [(r["study"], r["optimizer"]) for r in rows] == [(s, o) for s in ("autoencoder", "cnn")
                                                           for o in ("momentum", "adam", "kfac", "ekfac")]
    assert "EKFAC final training loss" in data["paragraphs"][-1]
    ae = [r for r in read_metrics(root / "autoencoder" / "ekfac" / "lr0.1_damp1") if r["kind"] == "epoch"]
    assert len(ae) == 3 and ae[-1]["train_loss"] < ae[0]["train_loss"]  # BCE summed over 64 pixels, learning
    assert all(r["train_acc"] != r["train_acc"] for r in ae)  # metric=None: NaN accuracy
    assert (root / "autoencoder_train_loss.png").is_file() and (root / "cnn_train_loss.png").is_file()
    # a second call skips finished runs and gives the same table
    EXPERIMENTS["ekfac"].reproduce(tmp_path, quick=True, jobs=1, overrides=overrides)
    assert list(csv.DictReader((root / "table.csv").open()))[0]["final train loss"] == rows[0]["final train loss"]


def test_unknown_key_rejected():
    with pytest.raises(ValueError, match="unknown experiment key"):
        EKFACExperiment.quick().replace({"bogus": 1})
