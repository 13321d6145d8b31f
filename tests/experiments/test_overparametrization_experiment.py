"""The width-sweep reproduction on a tiny grid: the grid, seeds and loss-target stopping read back from
its outputs; measures equal a direct computation on the stored runs; claims evaluated from the seeds."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from geomopt.data import make_loader
from geomopt.experiments.overparametrization import (CLAIMS, NAME, OverparamExperiment, _converged_width,
                                                     _interpolating_width, reproduce)
from geomopt.runs import load_run
from geomopt.measures.two_layer import two_layer_measures
from geomopt.experiments.records import Records
from geomopt.sweep.claims import HOLDS, UNTESTABLE
from geomopt.train import TrainConfig, read_metrics
from tests.experiments.ledger_roundtrip import ledger_problems

TINY = {"datasets": ["digits"], "widths": [4, 16, 64], "label_noises": [0.0], "epochs": 4, "lr": 0.1,
        "target_train_loss": 0.3, "seeds": [0, 1], "train_size": 300}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("overparam")
    reproduce(out, tier="quick", jobs=1, overrides=TINY)
    return out / NAME


def _rows(root):
    with (root / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_grid_seeds_and_target_read_back(tiny):
    rows = _rows(tiny)
    assert sorted({(int(r["width"]), int(r["seed"])) for r in rows}) == [(4, 0), (4, 1), (16, 0), (16, 1), (64, 0), (64, 1)]
    stored = json.loads((tiny / "experiment.json").read_text())
    assert stored["widths"] == [4, 16, 64] and stored["seeds"] == [0, 1] and stored["target_train_loss"] == 0.3
    for r in rows:
        config = TrainConfig.load(tiny / r["run"] / "config.json")
        assert config.widths == (int(r["width"]),) and config.seed == int(r["seed"])
        assert config.target_train_loss == 0.3 and config.weight_decay == 0 and config.dropout == 0
        epochs = [m for m in read_metrics(tiny / r["run"]) if m["kind"] == "epoch"]
        reached = [m["epoch"] for m in epochs if m["epoch"] > 0 and m["train_loss"] <= 0.3]
        # stopped at the first epoch that reached the target, else ran the whole budget
        assert epochs[-1]["epoch"] == (reached[0] if reached else 4)
        assert (r["reached_target"] == "True") == bool(reached)


def test_measures_equal_direct_computation_on_stored_run(tiny):
    row = _rows(tiny)[-1]
    _, model, init, bundle = load_run(tiny / row["run"])
    direct = two_layer_measures(model.double(), init.double(),
                                [(x.double(), y) for x, y in make_loader(bundle.train, 1000, shuffle=False)])
    assert float(row["overparam_bound"]) == pytest.approx(direct["overparam_bound"], rel=1e-9)
    assert float(row["dist_U"]) == pytest.approx(direct["dist_U"], rel=1e-9)


def test_claims_and_section_written(tiny):
    claims = json.loads((tiny / "claims.json").read_text())
    assert [c["id"] for c in claims["claims"]] == [c.id for c in CLAIMS]
    assert claims["seeds"] == [0, 1]
    assert (tiny / "errors.png").is_file() and (tiny / "section.json").is_file()
    assert ledger_problems(tiny.parent, NAME, tiny.parent / "ledger") == []  # verdicts follow from the stored rows


def _records(values, noises=(0.0,)):
    """Records of dataset ``d`` from {width: [(train_err, test_err, converged, bound)] per seed}."""
    rows = [{"run": f"{n}/{w}/{s}", "dataset": "d", "label_noise": n, "width": w, "seed": s, "train_err": a,
             "test_err": b, "reached_target": c, "diverged": False, "overparam_bound": d, "vc_bound": 1.0 + w,
             "frobenius_bound": w, "spectral_l1_bound": w, "spectral_fro_bound": w}
            for n in noises for w, rs in values.items() for s, (a, b, c, d) in enumerate(rs)]
    exp = OverparamExperiment().replace({"datasets": ["d"], "widths": sorted(values), "label_noises": list(noises),
                                         "seeds": list(range(len(next(iter(values.values())))))})
    return Records(exp, rows)


def test_claims_need_every_seed():
    """Test error falls beyond interpolation in one seed and rises in the other: not reported as holding."""
    values = {4: [(0.1, 0.30, False, 9.0), (0.1, 0.30, False, 9.0)],
              16: [(0.0, 0.20, True, 5.0), (0.0, 0.20, True, 5.0)],
              64: [(0.0, 0.10, True, 4.0), (0.0, 0.25, True, 6.0)]}
    mixed = _records(values)
    group = {w: [r for r in mixed.rows if r["width"] == w] for w in values}
    assert _interpolating_width(group) == 16 and _converged_width(group) == 16
    by_id = {c.id: c.evaluate(mixed) for c in CLAIMS}
    assert by_id["test-falls-beyond-interpolation"]["verdict"] != HOLDS
    assert by_id["overparam-bound-falls"]["verdict"] != HOLDS
    clean = _records({4: [(0.1, 0.30, False, 9.0)] * 3, 16: [(0.0, 0.20, True, 5.0), (0.0, 0.21, True, 5.1),
                                                             (0.0, 0.19, True, 4.9)],
                      64: [(0.0, 0.10, True, 4.0), (0.0, 0.12, True, 4.1), (0.0, 0.11, True, 3.9)]})
    by_id = {c.id: c.evaluate(clean) for c in CLAIMS}
    assert by_id["test-falls-beyond-interpolation"]["verdict"] == HOLDS
    assert by_id["overparam-bound-falls"]["verdict"] == HOLDS
    assert by_id["other-bounds-grow"]["verdict"] == HOLDS
    untested = by_id["test-falls-with-label-noise"]  # no noisy setting was run: untestable, never "holds"
    assert untested["verdict"] == UNTESTABLE and "not run" in untested["why"]


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="widths"):
        OverparamExperiment().replace({"widths": [64, 4]})
    with pytest.raises(ValueError, match="label_noises"):
        OverparamExperiment().replace({"label_noises": [1.5]})
    with pytest.raises(ValueError, match="target_train_loss"):
        OverparamExperiment().replace({"target_train_loss": -1.0})
    with pytest.raises(ValueError, match="unknown"):
        OverparamExperiment().replace({"depth": 3})


def test_seed_curves_run_over_widths():
    """Bands are over seeds at each width (3 widths x 2 seeds gives 2 curves of 3 points)."""
    from geomopt.experiments.overparametrization import _seed_curves
    group = {w: [{"v": 10 * w + s} for s in range(2)] for w in (1, 2, 3)}
    assert _seed_curves(group, [1, 2, 3], lambda r: r["v"]) == [[10, 20, 30], [11, 21, 31]]


def test_fixed_budget_protocol(tmp_path):
    """target_train_loss=None: the 2015 protocol, every run trains the whole budget."""
    from geomopt.experiments.overparametrization import _configs
    exp = OverparamExperiment.quick().replace({"target_train_loss": None, "widths": [4, 8], "seeds": [0]})
    configs = [c for c, _, _ in _configs(exp, tmp_path)]
    assert configs and all(c.target_train_loss is None and c.epochs == exp.epochs for c in configs)
