"""`geomopt reproduce bn-lstm` and `geomopt train --model bnlstm` on tiny settings."""

from __future__ import annotations

import csv
import json

import pytest

from geomopt.experiments import EXPERIMENTS, bn_lstm
from geomopt.train import TrainConfig, read_metrics, train
from tests.experiments.ledger_roundtrip import ledger_problems


def test_train_bnlstm_through_the_engine(tmp_path):
    summary = train(TrainConfig(model="bnlstm", widths=(8,), data="seq-digits", optimizer="adam", lr=3e-3,
                                epochs=2, train_size=200, batch_size=50), tmp_path, progress=False)
    epochs = [r for r in read_metrics(tmp_path) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert 0 <= summary["test_acc"] <= 1


def test_reproduce_bn_lstm_tiny(tmp_path):
    """Two seeds, one fixed learning rate; the claim's per-seed numbers are results.csv's."""
    assert EXPERIMENTS["bn-lstm"] is bn_lstm
    section = bn_lstm.reproduce(tmp_path, tier="quick", jobs=1, seeds=2, overrides={
        "datasets": ["seq-digits"], "models": ["lstm", "bnlstm"], "hidden": 8, "epochs": 1, "train_size": 200,
        "lrs": [3e-3]})
    root = tmp_path / "bn-lstm"
    rows = list(csv.DictReader((root / "table.csv").open()))
    assert [(r["dataset"], r["model"]) for r in rows] == [("seq-digits", "lstm"), ("seq-digits", "bnlstm")]
    assert json.loads(section.read_text())["figures"][0]["file"] == "test_curves.png"
    results = list(csv.DictReader((root / "results.csv").open()))
    record = json.loads((root / "claims.json").read_text())
    claims = {c["id"]: c for c in record["claims"]}
    assert set(claims) == {"generalizes-better", "converges-faster"} and record["seeds"] == [0, 1]
    acc = {(r["model"], r["seed"]): float(r["final"]) for r in results}
    numbers = claims["generalizes-better"]["numbers"]["seq-digits"]
    assert numbers["a"] == pytest.approx([acc["bnlstm", "0"], acc["bnlstm", "1"]])
    assert numbers["b"] == pytest.approx([acc["lstm", "0"], acc["lstm", "1"]])
    # one epoch of 200 examples learns little: the gate names the runs instead of deciding
    assert claims["converges-faster"]["verdict"] in ("untestable here", "inconclusive", "holds", "fails")
    assert (root / "curves.csv").is_file()
    assert ledger_problems(tmp_path, "bn-lstm", tmp_path / "ledger") == []
    with pytest.raises(ValueError, match="unknown experiment key"):
        bn_lstm.reproduce(tmp_path, tier="quick", overrides={"hiden": 8})


def test_mid_tier_config():
    mid = bn_lstm.BNLSTMExperiment.mid().replace({})
    assert mid.datasets == ("rows-fashion-mnist",) and mid.train_size == 10_000 and mid.models == ("lstm", "bnlstm")
    assert [c.id for c in bn_lstm.claims(mid)] == ["generalizes-better", "converges-faster"]
