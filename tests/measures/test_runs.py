"""`geomopt measure`, `geomopt zoo`, `geomopt correlate` on tiny runs; the TOML grid; the Ray error."""

import csv
import json
import sys

import pytest
import torch

from geomopt.cli import main
from geomopt.experiments.zoo import correlate, load_grid, measure_zoo, train_zoo
from geomopt.runs import load_run
from geomopt.train import TrainConfig, train

FAST = {"sharpness_steps": 2, "sharpness_restarts": 1, "flatness_samples": 2}


def test_measure_cli_writes_measures_json(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(data="digits", model="mlp", widths=(16,), epochs=3, train_size=200, lr=0.2), run,
          progress=False)
    _, model, init, _ = load_run(run)
    from geomopt.nn import MLP
    fresh = MLP((1, 8, 8), (16,), 10, seed=0)
    for p, q in zip(init.parameters(), fresh.parameters()):  # the init is rebuilt from the seed
        torch.testing.assert_close(p, q)
    assert main(["measure", str(run), "--measures", "margin,norms,path,bounds", "--no-progress"]) == 0
    res = json.loads((run / "measures.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert res["gap"] == pytest.approx((1 - summary["test_acc"]) - (1 - summary["train_acc"]), abs=1e-6)
    assert res["dist_init"] > 0 and res["l2_path"] > 0 and "sharpness" not in res
    assert "wrote" in capsys.readouterr().out
    assert main(["measure", str(tmp_path / "nothing")]) == 2


GRID = """
[base]
data = "digits"
model = "mlp"
widths = [32]
epochs = 3
target_train_loss = 0.5
train_size = 150
[grid]
width = [8, 16]
lr = [0.1, 0.3]
[measure]
sharpness_steps = 2
sharpness_restarts = 1
flatness_samples = 2
"""


def test_zoo_grid_train_measure_correlate(tmp_path):
    grid = tmp_path / "zoo.toml"
    grid.write_text(GRID)
    runs, options = load_grid(grid, tmp_path / "zoo")
    assert len(runs) == 4 and options == FAST
    assert {r[0].widths for r in runs} == {(8,), (16,)} and all(r[0].target_train_loss == 0.5 for r in runs)
    train_zoo(grid, tmp_path / "zoo", workers=1)  # each trial computes its measures.json
    stored = {d: (d / "measures.json").read_bytes() for _, d, _ in runs}
    measure_zoo(tmp_path / "zoo", workers=1)  # finds them up to date
    assert {d: (d / "measures.json").read_bytes() for _, d, _ in runs} == stored
    rows = correlate(tmp_path / "zoo", min_train_acc=0.0, bootstrap=200)
    assert {r["measure"] for r in rows} >= {"sharpness", "l2_path", "log_spectral_product"}
    assert all(r["kendall_tau_lo"] <= r["kendall_tau_hi"] for r in rows)
    assert (tmp_path / "zoo" / "correlation.png").is_file()
    table = (tmp_path / "zoo" / "correlation.csv").read_text()
    with (tmp_path / "zoo" / "correlation.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert {r["kendall_variant"] for r in rows} == {"tau-a"}
    rows_b = correlate(tmp_path / "zoo", tmp_path / "b", min_train_acc=0.0, variant="b")
    assert {r["kendall_variant"] for r in rows_b} == {"tau-b"}
    assert main(["correlate", str(tmp_path / "zoo"), "--min-train-acc", "0", "--bootstrap", "200"]) == 0
    assert (tmp_path / "zoo" / "correlation.csv").read_text() == table  # stored measures, seeded bootstrap
    (runs[0][1] / "measures.json").unlink()
    with pytest.raises(ValueError, match="without measures.json.*--recompute"):
        correlate(tmp_path / "zoo", min_train_acc=0.0)
    assert main(["correlate", str(tmp_path / "zoo"), "--min-train-acc", "0", "--bootstrap", "200", "--recompute",
                 "--jobs", "1"]) == 0
    assert (tmp_path / "zoo" / "correlation.csv").read_text() == table  # the same measures again
    mtime = (runs[0][1] / "checkpoint.pt").stat().st_mtime
    train_zoo(grid, tmp_path / "zoo", workers=1)  # finished runs are skipped
    assert (runs[0][1] / "checkpoint.pt").stat().st_mtime == mtime


def test_bad_grid_key(tmp_path):
    grid = tmp_path / "zoo.toml"
    grid.write_text("[grid]\nwidht = [1]\n")
    with pytest.raises(ValueError, match="widht"):
        load_grid(grid, tmp_path)


def test_ray_backend_without_ray_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """Ray missing (an import that fails): exit code 2 and the install hint before any run folder is written."""
    monkeypatch.setitem(sys.modules, "ray", None)
    grid = tmp_path / "zoo.toml"
    grid.write_text(GRID)
    assert main(["zoo", "--grid", str(grid), "--out", str(tmp_path / "z"), "--backend", "ray"]) == 2
    assert "geomopt[ray]" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
    assert main(["reproduce", "path-sgd", "--quick", "--out", str(tmp_path / "r"), "--backend", "ray"]) == 2
    assert not (tmp_path / "r").exists()


def test_stored_measures_compare_configs_not_json_text(tmp_path):
    """A config.json written before a field existed (read with its default) still matches its measures;
    a different run does not."""
    import json as _json

    from geomopt.runs import stored_measures
    from geomopt.train import TrainConfig
    config = TrainConfig(widths=(8,), epochs=1)
    older = config.to_dict()
    older.pop("val_fraction")  # as an older geomopt wrote it
    (tmp_path / "config.json").write_text(_json.dumps(older))
    record = {"options": {"measures": ["margin"]}, "config": config.to_dict(), "margin": 1.0}
    (tmp_path / "measures.json").write_text(_json.dumps(record))
    assert stored_measures(tmp_path, {}, ["margin"])["margin"] == 1.0
    (tmp_path / "config.json").write_text(_json.dumps(config.replace(epochs=2).to_dict()))
    assert stored_measures(tmp_path, {}, ["margin"]) is None
