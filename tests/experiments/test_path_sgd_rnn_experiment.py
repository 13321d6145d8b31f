"""The Path-SGD RNN reproduction on a tiny grid: outputs, tables, claims, config checks; IRNN restarts."""

from __future__ import annotations

import csv
import json

import pytest

from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.path_sgd_rnn import NAME, PathSGDRNNExperiment, reproduce
from geomopt.experiments.tuning import Problem, tune
from geomopt.sweep import Grid
from geomopt.train import TrainConfig
from tests.experiments.ledger_roundtrip import ledger_problems

TINY = {"lengths": [4, 6], "sequential": ["seq-digits"], "hidden": 4,
        "methods": ["rnn-path", "rnn-path-k12", "irnn-sgd", "lstm-sgd"],
        "lrs": {"rnn-path": [1e-3], "rnn-path-k12": [1e-3], "irnn-sgd": [1e-2], "lstm-sgd": [0.1]},
        "k12_max_len": 4, "adding_train_size": 40, "adding_epochs": 2, "sequential_epochs": 1, "seeds": [0, 1]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("rnn")
    return out, reproduce(out, tier="quick", jobs=1, overrides=TINY)


def test_outputs_tables_and_claims(tiny):
    out, section = tiny
    root = out / NAME
    assert EXPERIMENTS["path-sgd-rnn"].reproduce is reproduce
    for name in ("results.csv", "table.csv", "adding_mse.png", "sequential_error.png", "section.json", "claims.json"):
        assert (root / name).is_file(), name
    with (root / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    # kappa1 + kappa2 only where T <= k12_max_len (adding T=4); seq-digits has T = 64
    assert {(r["task"], r["method"]) for r in rows if r["method"] == "rnn-path-k12"} == {("adding T=4", "rnn-path-k12")}
    assert len(rows) == 2 * (3 * 3 + 1)
    cfg = json.loads((root / "runs" / "adding_T4" / "rnn-path" / "lr0.001" / "seed0" / "config.json").read_text())
    assert (cfg["init"], cfg["optimizer"], cfg["max_grad_norm"]) == ("irnn-le", "path-sgd-first-step", None)
    assert cfg["val_fraction"] > 0
    data = json.loads(section.read_text())
    assert [r[1] for r in data["tables"][0]["rows"]].count("rnn-path-k12") == 1
    claims = {c["id"]: c for c in json.loads((root / "claims.json").read_text())["claims"]}
    assert set(claims) == {"adding-solved", "kappa2-negligible", "sequential"} and claims["adding-solved"]["ours"]
    # 2 epochs of 40 sequences teach nothing: a comparison of kappa1 with kappa1 + kappa2 is untestable then
    assert claims["kappa2-negligible"]["verdict"] == "untestable here"
    assert "too few epochs" in claims["kappa2-negligible"]["why"] or "not" in claims["kappa2-negligible"]["why"]
    assert claims["sequential"]["verdict"] in ("untestable here", "inconclusive", "holds", "fails")
    assert json.loads((root / "claims.json").read_text())["tier"] == "quick"
    assert "first-step ratio" in " ".join(data["paragraphs"])
    assert ledger_problems(out, NAME, out / "ledger") == []  # `geomopt results check` recomputes every verdict
    # a rerun skips every finished run and writes the same section
    assert reproduce(out, tier="quick", jobs=1, overrides=TINY).read_text() == section.read_text()


def test_diverged_runs_are_restarted_from_new_inits(tmp_path):
    def make(lr, seed):
        return TrainConfig(model="relu-rnn", widths=(4,), init="irnn-le", data="adding", seq_len=4, train_size=40,
                           optimizer="sgd", lr=lr, epochs=1, batch_size=8, seed=seed, val_fraction=0.2)
    problems = {"blowup": Problem(Grid((1e9,)), make, tmp_path / "blowup"),
                "fine": Problem(Grid((1e-3,)), make, tmp_path / "fine")}
    tuned = tune(problems, (0,), jobs=1, desc="t", restarts={"blowup": 2, "fine": 2})
    (_, run_dir, s), = tuned["blowup"].at()
    assert s["diverged"] and s["restarts"] == 2 and run_dir.name == "restart2"
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 2000
    (_, run_dir, s), = tuned["fine"].at()
    assert not s.get("diverged") and s["restarts"] == 0 and run_dir.name == "seed0"


def test_config_errors():
    with pytest.raises(ValueError, match="unknown experiment key"):
        PathSGDRNNExperiment().replace({"epochs": 3})
    with pytest.raises(ValueError, match="unknown method"):
        PathSGDRNNExperiment().replace({"methods": ["gru"]})
    with pytest.raises(ValueError, match="lengths must be >= 2"):
        PathSGDRNNExperiment().replace({"lengths": [1]})


def test_mid_tier_config():
    mid = PathSGDRNNExperiment.mid().replace({})
    assert mid.lengths == (50,) and mid.methods == ("rnn-path", "irnn-sgd")
    assert mid.lrs["rnn-path"] == mid.lrs["irnn-sgd"]  # equal care
    with pytest.raises(ValueError, match="no learning-rate grid"):
        PathSGDRNNExperiment.mid().replace({"methods": ["rnn-path", "lstm-sgd"], "lrs": {"rnn-path": [1e-3]}})
