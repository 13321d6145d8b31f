"""`geomopt reproduce ekfac` on a tiny protocol: every optimizer tuned on validation data over two seeds
(the damping grid extended when its best value is at an edge), the adaptive variants without a grid,
results/table/figures/claims written, a second call skips finished runs, unknown keys rejected."""

import csv
import json

import pytest
import torch

from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.config import tier_config
from geomopt.experiments.ekfac import EKFACExperiment, loss_at, loss_floor, reconstruction_loss
from geomopt.sweep import VERDICTS
from geomopt.train import read_metrics
from tests.experiments.ledger_roundtrip import ledger_problems


def test_tiny_reproduction(tmp_path):
    overrides = {"epochs": 2, "widths": [8, 4, 8], "train_size": 300, "seeds": [0, 1], "max_extensions": 1,
                 "lrs": {"momentum": [0.03, 0.1], "adam": [0.003, 0.01], "kfac": [0.1], "ekfac": [0.1]},
                 "dampings": [1.0, 3.0]}
    section = EXPERIMENTS["ekfac"].reproduce(tmp_path, tier="quick", jobs=1, overrides=overrides)
    root = tmp_path / "ekfac"
    rows = list(csv.DictReader((root / "table.csv").open()))
    assert [r["optimizer"] for r in rows] == ["momentum", "adam", "kfac", "ekfac", "kfac-adaptive", "ekfac-adaptive"]
    assert rows[4]["chosen lr"] == "auto" and "adaptive" in rows[4]["damping"]
    results = list(csv.DictReader((root / "results.csv").open()))
    kfac_dampings = sorted({float(r["damping"]) for r in results if r["optimizer"] == "kfac"})
    assert len(kfac_dampings) == 3  # [1, 3] extended by one step at the edge of the best value
    claims = json.loads((root / "claims.json").read_text())
    ids = [c["id"] for c in claims["claims"]]
    assert "ekfac-vs-kfac-second" in ids and "ekfac-adaptive-vs-adam-epoch" in ids and len(ids) == 18
    assert all(c["verdict"] in VERDICTS for c in claims["claims"]) and claims["tier"] == "quick"
    stored = list(csv.DictReader((root / "results.csv").open()))
    assert sum(r["chosen"] == "True" for r in stored) == 6 * 2 and (root / "curves.csv").is_file()
    run = root / "runs" / "ekfac-adaptive" / "damping1" / "seed0"
    recs = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    assert len(recs) == 3 and recs[-1]["train_loss"] < recs[0]["train_loss"] and "val_loss" in recs[-1]
    assert (root / "train_loss_epochs.png").is_file() and (root / "train_loss_seconds.png").is_file()
    assert json.loads(section.read_text())["tables"]
    assert ledger_problems(tmp_path, "ekfac", tmp_path / "ledger") == []
    EXPERIMENTS["ekfac"].reproduce(tmp_path, tier="quick", jobs=1, overrides=overrides)  # skips finished runs
    assert list(csv.DictReader((root / "table.csv").open())) == rows


def test_loss_at_interpolates_between_epochs():
    times, losses = [0.0, 2.0, 4.0], [10.0, 6.0, 5.0]
    assert loss_at(times, losses, 1.0) == 8.0 and loss_at(times, losses, 3.0) == 5.5
    assert loss_at(times, losses, 9.0) == 5.0 and loss_at([], [], 1.0) == float("inf")


def test_unknown_key_and_optimizer_rejected():
    with pytest.raises(ValueError, match="unknown experiment key"):
        EKFACExperiment.quick().replace({"bogus": 1})
    with pytest.raises(ValueError, match="unknown optimizer"):
        EKFACExperiment.quick().replace({"optimizers": ["lbfgs"]})


def test_mid_tier_is_fashion_mnist_autoencoder():
    mid = tier_config(EKFACExperiment, "mid", "ekfac").replace({})
    assert (mid.dataset, mid.train_size, mid.widths[0], mid.seeds) == ("fashion-mnist", 10_000, 256, (0, 1, 2))
    assert set(mid.optimizers) == set(EKFACExperiment().optimizers) and mid.lrs == EKFACExperiment().lrs


def test_loss_floor_is_the_least_reconstruction_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 3, 4, generator=g) * 0.98 + 0.01
    floor = loss_floor(x)
    # reached at sigmoid(logits) = x, in float64
    assert abs(reconstruction_loss(torch.logit(x.double()).flatten(1), x.double()).item() - floor) < 1e-9
    for _ in range(20):  # and no other logits go below it
        logits = torch.logit(x.double()).flatten(1) + 0.3 * torch.randn(50, 12, generator=g, dtype=torch.float64)
        assert reconstruction_loss(logits, x.double()).item() > floor
    assert loss_floor((x > 0.5).float()) == 0.0  # binary images: no irreducible part
