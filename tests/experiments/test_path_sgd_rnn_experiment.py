"""The Path-SGD RNN reproduction on a tiny grid: outputs, tables, verdict, config checks.

Reference for the verdict: it is recomputed here from results.csv (test MSE against a tenth of the
trivial 1/6), so the report's sentence must agree with the stored numbers.
"""

from __future__ import annotations

import csv
import json

import pytest

from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.path_sgd_rnn import NAME, PathSGDRNNExperiment, reproduce

TINY = {"lengths": [4, 6], "sequential": ["seq-digits"], "hidden": 4, "methods": ["rnn-path", "irnn-sgd", "lstm-sgd"],
        "lrs": {"rnn-path": [1e-3], "irnn-sgd": [1e-2], "lstm-sgd": [0.1]}, "adding_train_size": 32,
        "adding_epochs": 2, "sequential_epochs": 1, "seeds": [0]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("rnn")
    return out, reproduce(out, quick=True, jobs=1, overrides=TINY)


def test_outputs_and_verdict(tiny):
    out, section = tiny
    root = out / NAME
    assert EXPERIMENTS["path-sgd-rnn"].reproduce is reproduce
    for name in ("results.csv", "table.csv", "adding_mse.png", "sequential_error.png", "section.json"):
        assert (root / name).is_file(), name
    with (root / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3
    data = json.loads(section.read_text())
    text = " ".join(data["paragraphs"])
    for t in (4, 6):
        mse = {r["method"]: float(r["test_loss"]) for r in rows if r["task"] == f"adding T={t}"}
        path_ok, sgd_ok = mse["rnn-path"] <= 1 / 60, mse["irnn-sgd"] <= 1 / 60
        assert f"T={t}: RNN-Path test MSE {mse['rnn-path']:.4g} ({'solved' if path_ok else 'not solved'})" in text
        assert f"IRNN+SGD {mse['irnn-sgd']:.4g} ({'solved' if sgd_ok else 'not solved'})" in text
    assert ("HOLDS" in text) != ("did NOT hold" in text)
    adding_table = data["tables"][0]
    assert len(adding_table["rows"]) == 2 * 3 and "paper (approx)" in adding_table["columns"]
    # a rerun skips every finished run and writes the same section
    assert reproduce(out, quick=True, jobs=1, overrides=TINY).read_text() == section.read_text()


def test_config_errors():
    with pytest.raises(ValueError, match="unknown experiment key"):
        PathSGDRNNExperiment().replace({"epochs": 3})
    with pytest.raises(ValueError, match="unknown method"):
        PathSGDRNNExperiment().replace({"methods": ["gru"]})
    with pytest.raises(ValueError, match="lengths must be >= 2"):
        PathSGDRNNExperiment().replace({"lengths": [1]})
