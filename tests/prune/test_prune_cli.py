"""`geomopt prune` and `geomopt reproduce pruning` end to end on tiny runs."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from geomopt.cli import main
from geomopt.experiments import pruning
from geomopt.experiments.ledger import _recompute
from geomopt.train import TrainConfig, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    train(TrainConfig(widths=(16, 8), epochs=3, train_size=300, lr=0.1), out, progress=False)
    return out


def test_prune_cli_writes_record_and_keeps_mask(run_dir, tmp_path, capsys):
    out = tmp_path / "p"
    code = main(["prune", str(run_dir), "--criterion", "obd", "--sparsity", "0.8", "--steps", "3",
                 "--finetune-epochs", "2", "--examples", "200", "--out", str(out), "--no-progress"])
    assert code == 0
    record = json.loads((out / "prune.json").read_text())
    assert record["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert record["finetuned_sparsity"] == pytest.approx(record["achieved_sparsity"])
    assert [h["step"] for h in record["history"]] == [1, 2, 3]
    assert all(h["predicted_change"] is not None for h in record["history"])
    assert "obd: sparsity 0.8" in capsys.readouterr().out
    state = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    for key, mask in state.items():
        if key.endswith("weight_mask"):
            w = state[key.replace("weight_mask", "weight_orig")] * mask
            assert bool((w[mask == 0] == 0).all())


def test_prune_cli_errors(tmp_path, capsys):
    assert main(["prune", str(tmp_path), "--sparsity", "0.5"]) == 2
    assert "not a `geomopt train` run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", str(tmp_path), "--criterion", "snip", "--sparsity", "0.5"])


def test_reproduce_pruning_tiny(tmp_path):
    """Two seeds, the dense learning rate chosen on validation data from a fixed one-value grid; the claims'
    numbers are the per-seed values of results.csv."""
    section = pruning.reproduce(tmp_path, tier="quick", jobs=1, seeds=2, overrides={
        "datasets": ["digits"], "widths": [16], "train_epochs": 2, "criteria": ["mp", "lm", "qm"], "steps": [1, 3],
        "examples": 200, "finetune_epochs": 1, "sparsity": 0.8, "lrs": [0.1]})
    root = tmp_path / "pruning"
    rows = list(csv.DictReader((root / "table.csv").open()))
    assert [(r["criterion"], r["steps k"]) for r in rows] == [(c, k) for c in ("mp", "lm", "qm") for k in ("1", "3")]
    data = json.loads(section.read_text())
    assert "seeds [0, 1]" in data["paragraphs"][0]
    assert (root / "predicted_vs_actual.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = [r for r in csv.DictReader((root / "results.csv").open()) if r["part"] == "pruned"]
    assert len(results) == 12 and {r["seed"] for r in results} == {"0", "1"}
    steps = [r for r in csv.DictReader((root / "curves.csv").open()) if r["run"] == "pruned/digits/lr0.1/seed0/qm-k3"]
    assert [int(r["step"]) for r in steps] == [1, 2, 3] and all(r["actual_change"] for r in steps)
    record = json.loads((root / "claims.json").read_text())
    claims = {c["id"]: c for c in record["claims"]}
    assert set(claims) == {"locality", "first-vs-second-order"}
    assert record["tier"] == "quick" and all(c["verdict"] == "untestable here" for c in claims.values())
    assert [c["verdict"] for c in _recompute(record, root)] == [c["verdict"] for c in record["claims"]]
    qm = claims["locality"]["numbers"]["digits qm"]
    loss = {(r["seed"], r["steps"]): float(r["pruned_train_loss"]) for r in results if r["criterion"] == "qm"}
    assert qm["a"] == pytest.approx([loss["0", "3"], loss["1", "3"]])
    assert qm["b"] == pytest.approx([loss["0", "1"], loss["1", "1"]])
    with pytest.raises(ValueError, match="unknown experiment key"):
        pruning.reproduce(tmp_path, tier="quick", overrides={"sparsty": 0.5})
