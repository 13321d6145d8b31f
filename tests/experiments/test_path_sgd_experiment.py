"""The Path-SGD reproduction on a tiny grid: outputs, the invariance, seeds, validation selection and
the grid-edge rule, claims, skipping, process pool.

References: the invariance of Path-SGD to node rescaling (Neyshabur et al. 2015, Sec. 3): the
unbalanced init computes the same function as the kaiming one, so Path-SGD's training loss
must agree between them at every epoch up to float32 rounding, while SGD's must not; the
jobs=1 run (the process pool must give the same numbers); results.csv recomputed by hand (the
chosen learning rate is the argmin of the mean validation loss, the table's mean is the mean).

``PathSGDExperiment`` has no training-subset field, so the runs use all 1437 digits training
examples; with 16 hidden units and 2 epochs a run takes about 0.1 s.
"""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest

import geomopt.sweep.trial
from geomopt.cli import main
from geomopt.experiments.path_sgd import NAME, reproduce
from geomopt.sweep import VERDICTS
from geomopt.train import read_metrics

TINY = {"datasets": ["digits"], "widths": [16], "epochs": 2, "optimizers": ["sgd", "path-sgd"],
        "inits": ["kaiming", "unbalanced"], "lrs": {"sgd": [0.1], "path-sgd": [0.1]}, "seeds": [0, 1]}
NUMBERS = ("train_loss", "train_err", "test_err")


def _results(root):
    with (root / "results.csv").open() as f:
        return list(csv.DictReader(f))


def _row(rows, init, optimizer, seed="0"):
    (row,) = [r for r in rows if (r["init"], r["optimizer"], r["seed"]) == (init, optimizer, seed)]
    return row


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("path_sgd")
    section = reproduce(out, tier="quick", jobs=1, overrides=TINY)
    return out, section


def test_outputs(tiny):
    out, section = tiny
    root = out / NAME
    assert section == root / "section.json"
    for name in ("results.csv", "table.csv", "train_loss.png", "test_error.png", "section.json", "experiment.json",
                 "claims.json"):
        assert (root / name).is_file(), name
    for name in ("train_loss.png", "test_error.png"):
        assert (root / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    experiment = json.loads((root / "experiment.json").read_text())
    assert experiment["widths"] == [16] and experiment["epochs"] == 2 and experiment["datasets"] == ["digits"]
    rows = _results(root)
    assert len(rows) == 8  # 2 inits x 2 optimizers x 2 seeds
    for row in rows:
        run = out / NAME / "runs" / "digits" / row["init"] / row["optimizer"] / "lr0.1" / f"seed{row['seed']}"
        assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"}
        assert row["diverged"] == "False"


def test_table_has_one_row_per_setting(tiny):
    out, _ = tiny
    with (out / NAME / "table.csv").open() as f:
        header, *rows = list(csv.reader(f))
    assert header[:4] == ["dataset", "init", "optimizer", "chosen lr"]
    keys = [tuple(r[:3]) for r in rows]
    assert sorted(keys) == sorted(itertools.product(["digits"], TINY["inits"], TINY["optimizers"]))
    assert all(float(r[3]) == 0.1 for r in rows)
    results = _results(out / NAME)
    for r in rows:
        mean = sum(float(_row(results, r[1], r[2], s)["train_loss"]) for s in "01") / 2
        assert float(r[4].split(" [")[0]) == pytest.approx(mean, rel=5e-3)  # 3 significant digits


def test_section_claims_and_figures(tiny):
    out, section = tiny
    data = json.loads(section.read_text())
    assert "Path-SGD" in data["title"]
    assert [f["file"] for f in data["figures"]] == ["train_loss.png", "test_error.png"]
    (table,) = data["tables"]
    assert len(table["rows"]) == 4
    record = json.loads((out / NAME / "claims.json").read_text())
    assert record["seeds"] == [0, 1] and record["experiment"] == NAME and record["seconds"] > 0
    claims = {c["id"]: c for c in record["claims"]}
    assert set(claims) == {"invariant", "train-loss-balanced", "test-error-balanced", "train-loss-unbalanced",
                           "test-error-unbalanced"}
    # float32 rounding only: the gap after one epoch is far below the tolerance in both seeds
    assert claims["invariant"]["verdict"] == "holds"
    assert all(v < 1e-4 for v in claims["invariant"]["numbers"]["a"])
    assert all(c["verdict"] in VERDICTS for c in claims.values())


def test_path_sgd_is_invariant_to_unbalanced_init_and_sgd_is_not(tiny):
    out, _ = tiny
    rows = _results(out / NAME)

    def curve(init, optimizer):
        return [r["train_loss"] for r in read_metrics(out / NAME / _row(rows, init, optimizer)["run"])
                if r["kind"] == "epoch"]

    path_k, path_u = curve("kaiming", "path-sgd"), curve("unbalanced", "path-sgd")
    sgd_k, sgd_u = curve("kaiming", "sgd"), curve("unbalanced", "sgd")
    assert len(path_k) == len(path_u) == 3  # epochs 0, 1, 2
    # epoch 0: the two inits are the same function, so every optimizer starts from the same loss
    assert sgd_k[0] == pytest.approx(sgd_u[0], rel=1e-5)
    for a, b in zip(path_k, path_u):
        assert a == pytest.approx(b, rel=1e-4)
    assert float(_row(rows, "kaiming", "path-sgd")["train_loss"]) == pytest.approx(
        float(_row(rows, "unbalanced", "path-sgd")["train_loss"]), rel=1e-4)
    assert abs(sgd_k[-1] - sgd_u[-1]) / sgd_k[-1] > 1e-2


def test_rerun_skips_finished_runs(tiny, monkeypatch, capsys):
    """The second call, through the CLI's --set parsing, trains nothing and rewrites the same numbers."""
    out, _ = tiny
    root = out / NAME
    before = _results(root)
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("*") if p.is_file()}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(geomopt.sweep.trial, "train", refuse)
    sets = [f"{key}={json.dumps(value)}" for key, value in TINY.items()]
    argv = ["reproduce", "path-sgd", "--quick", "--out", str(out), "--jobs", "1"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    assert str(root / "section.json") in capsys.readouterr().out
    assert _results(root) == before
    assert {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("*") if p.is_file()} == mtimes


def test_process_pool_gives_the_same_numbers(tmp_path):
    """jobs=2 (spawned workers, one thread each) against jobs=1 (in process).

    Equal to float32 rounding, not bit for bit: the in-process run keeps torch's default
    thread count, which changes the summation order of the evaluation matmuls.
    """
    grid = {**TINY, "optimizers": ["sgd"], "lrs": {"sgd": [0.1]}, "epochs": 1}
    reproduce(tmp_path / "serial", tier="quick", jobs=1, overrides=grid)
    reproduce(tmp_path / "pool", tier="quick", jobs=2, overrides=grid)
    serial, pool = _results(tmp_path / "serial" / NAME), _results(tmp_path / "pool" / NAME)
    assert len(serial) == len(pool) == 4
    for a, b in zip(serial, pool):
        assert [a[k] for k in ("dataset", "init", "optimizer", "lr", "seed", "diverged")] == \
               [b[k] for k in ("dataset", "init", "optimizer", "lr", "seed", "diverged")]
        for key in NUMBERS:
            assert math.isclose(float(a[key]), float(b[key]), rel_tol=1e-6, abs_tol=1e-9), key


def test_validation_selection_and_edge_rule(tmp_path):
    """SGD's grid [0.001, 0.003] is far too small for 2 epochs: the best value is at the high edge, so the
    grid is extended by geometric steps (0.009, then 0.027 if 0.009 is best again; limit 2); the chosen
    lr is the argmax of the mean validation accuracy over seeds, recomputed here from results.csv (val_err
    = 1 - val_acc), and the table marks it."""
    grid = {**TINY, "optimizers": ["sgd"], "inits": ["kaiming"], "lrs": {"sgd": [0.001, 0.003]}}
    reproduce(tmp_path, tier="quick", jobs=1, overrides=grid)
    rows = _results(tmp_path / NAME)
    lrs = sorted({float(r["lr"]) for r in rows})
    assert lrs[:3] == pytest.approx([0.001, 0.003, 0.009]) and len(lrs) in (3, 4)
    if len(lrs) == 4:
        assert lrs[3] == pytest.approx(0.027)
    mean_err = {lr: sum(float(r["val_err"]) for r in rows if float(r["lr"]) == lr) / 2 for lr in lrs}
    best = min(lrs, key=lambda lr: (round(mean_err[lr], 12), lr))  # ties: the smaller value
    assert [float(r["lr"]) for r in rows if r["chosen"] == "True"] == pytest.approx([best, best])
    with (tmp_path / NAME / "table.csv").open() as f:
        (_, row) = list(csv.reader(f))
    expected = (f"{best:g} (high edge)" if best == lrs[-1] and len(lrs) == 4 else
                f"{best:g} (grid extended)" if best > 0.003 else f"{best:g}")
    assert row[3] == expected


def test_seeds_flag(tmp_path, capsys):
    grid = {k: v for k, v in TINY.items() if k != "seeds"}
    argv = ["reproduce", "path-sgd", "--quick", "--out", str(tmp_path), "--jobs", "1", "--seeds", "1"]
    for key, value in {**grid, "optimizers": ["path-sgd"], "inits": ["kaiming"], "epochs": 1}.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0
    assert json.loads((tmp_path / NAME / "claims.json").read_text())["seeds"] == [0]
    assert main(argv + ["--set", "seeds=[0]"]) == 2
    assert "--seeds N or --set seeds" in capsys.readouterr().err
