"""What a new user meets first (issue 16): output folders, config checking, damaged files, OS errors, help.

References: the stored files themselves (a refused run must leave them byte for byte unchanged), an
uninterrupted run (a finished run extended with ``--resume --epochs N`` must equal it exactly), the
documented exit codes (2 bad input, 3 diverged).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.cli import main
from geomopt.train import read_metrics
from geomopt.train.config import TrainConfig, parse_text

TINY = ["--data", "digits", "--train-size", "200", "--widths", "16", "--batch-size", "50", "--lr", "0.05",
        "--no-progress"]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


# 1. an output folder holding a different run is refused; the same config is skipped; --overwrite replaces
def test_different_run_in_out_is_refused_same_is_skipped(tmp_path, capsys):
    out = tmp_path / "D"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    before = _files(out)
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "1", "--widths", "8", "--optimizer", "adam", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "optimizer" in err and "widths" in err and "epochs" in err and "--overwrite" in err
    assert _files(out) == before
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0  # same config: nothing retrained
    assert "already holds this finished run" in capsys.readouterr().out
    assert _files(out) == before
    assert main(["train", *TINY, "--epochs", "1", "--optimizer", "adam", "--out", str(out), "--overwrite"]) == 0
    assert TrainConfig.load(out / "config.json").optimizer == "adam"


def test_resume_with_more_epochs_extends_a_finished_run_exactly(tmp_path):
    assert main(["train", *TINY, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "ext")]) == 0
    assert main(["train", "--resume", str(tmp_path / "ext"), "--epochs", "2", "--no-progress"]) == 0
    strip = lambda recs: [{k: v for k, v in r.items() if k != "time"} for r in recs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "ext")) == strip(read_metrics(tmp_path / "full"))
    assert TrainConfig.load(tmp_path / "ext" / "config.json").epochs == 2


def test_reproduction_stores_exactly_its_runs_and_refuses_a_changed_run(tmp_path, capsys):
    """results.csv holds the runs of the configuration its claims were decided on (a rerun over fewer settings
    keeps the other settings' run folders, which a rerun with them skips), and a changed finished run is refused."""
    args = ["reproduce", "path-sgd", "--quick", "--out", str(tmp_path), "--jobs", "1", "--seeds", "1",
            "--set", "epochs=1",
            "--set", "widths=[8]", "--set", "train_size=200", "--set", 'lrs={"sgd": [1000.0], "path-sgd": [0.1]}',
            "--set", "max_extensions=0", "--set", "optimizers=sgd,path-sgd", "--set", "inits=kaiming"]
    assert main([*args, "--set", "datasets=digits,mnist1d"]) == 0
    results = tmp_path / "path-sgd" / "results.csv"
    mnist1d_rows = [line for line in results.read_text().splitlines() if ",mnist1d," in line]
    assert len(mnist1d_rows) == 2
    section = json.loads((tmp_path / "path-sgd" / "section.json").read_text())
    assert any(w.startswith("DIVERGED: mnist1d, kaiming init, sgd lr 1000") for w in section["warnings"])
    assert "seeds DIVERGED" in section["tables"][0]["rows"][0][4]  # marked in the table too
    assert "Neyshabur, Salakhutdinov & Srebro" in section["citations"][0]
    assert "warning: DIVERGED" in capsys.readouterr().out  # printed with the verdict table
    capsys.readouterr()
    assert main([*args, "--set", "datasets=digits", "--set", "batch_size=20"]) == 2  # a finished run would change
    assert "batch_size" in capsys.readouterr().err
    assert main([*args, "--set", "datasets=digits"]) == 0
    assert not [line for line in results.read_text().splitlines() if ",mnist1d," in line]
    assert (tmp_path / "path-sgd" / "runs" / "mnist1d").is_dir()  # the runs themselves are kept
    assert main([*args, "--set", "datasets=digits,mnist1d"]) == 0  # and found again: nothing retrained
    assert [line for line in results.read_text().splitlines() if ",mnist1d," in line] == mnist1d_rows


# 2. one typed schema for every config source
@pytest.mark.parametrize("value", [{"bias": "false"}, {"epochs": 1.5}, {"batch_size": 10.5}, {"epochs": "two"},
                                   {"lr": "0.1"}, {"momentum": "high"}, {"widths": "64,64"}, {"widths": [64, 6.5]},
                                   {"epochs": True}, {"optimizer": 3}])
def test_config_file_values_are_type_checked(tmp_path, capsys, value):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(value))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    (key,) = value
    assert f"field {key!r}" in err and str(config) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_set_values_are_type_checked_before_any_run(tmp_path, capsys):
    assert main(["reproduce", "path-sgd", "--quick", "--out", str(tmp_path), "--set", "epochs=abc"]) == 2
    err = capsys.readouterr().err
    assert "'epochs'" in err and "--set" in err and "an integer" in err
    assert not (tmp_path / "path-sgd" / "runs").exists()


def test_zoo_toml_values_are_type_checked(tmp_path, capsys):
    grid = tmp_path / "zoo.toml"
    grid.write_text('[base]\nepochs = 1.5\n[grid]\nlr = [0.1]\n')
    assert main(["zoo", "--grid", str(grid), "--out", str(tmp_path / "zoo")]) == 2
    err = capsys.readouterr().err
    assert str(grid) in err and "'epochs'" in err


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=5))
def test_command_line_lists_parse_as_json_would(widths):
    """Reference: the JSON form of the same list; the comma form must give the same tuple."""
    assert parse_text(",".join(map(str, widths)), tuple[int, ...], "--widths") == tuple(widths)
    assert parse_text(json.dumps(widths), tuple[int, ...], "--widths") == tuple(widths)
    with pytest.raises(ValueError, match="--widths"):
        parse_text(",".join(map(str, widths)) + ",1.5", tuple[int, ...], "--widths")


# 3. damaged or foreign checkpoints and configs name the file and say what to do
@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "architecture", "config"])
def test_damaged_checkpoint_or_config_names_the_file(tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    ckpt = out / "checkpoint.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "random":
        ckpt.write_bytes(bytes(range(256)) * 8)
    elif damage == "architecture":
        assert main(["train", *TINY, "--epochs", "1", "--widths", "32", "--out", str(tmp_path / "other")]) == 0
        ckpt.write_bytes((tmp_path / "other" / "checkpoint.pt").read_bytes())
    else:
        (out / "config.json").write_text('{"lr": 0.1 "epochs": 2}')
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    named = out / ("config.json" if damage == "config" else "checkpoint.pt")
    assert str(named) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ("fix or delete" if damage == "config" else "--overwrite") in err


# 5. OS errors on output folders and missing optional packages: one line, exit 2
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_cannot_be_a_directory(tmp_path, capsys, where):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and len(err.strip().splitlines()) == 1


def test_unwritable_out_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(self, data):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "write_bytes", refuse)  # root ignores chmod; this is what a read-only mount does
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err
    assert "cannot write into" in err and "Permission denied" in err and len(err.strip().splitlines()) == 1


def test_solver_cvxpy_without_cvxpy(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # import cvxpy raises ImportError
    assert main(["implicit", "completion", "--n", "6", "--m", "20", "--solver", "cvxpy", "--steps", "10",
                 "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'geomopt[convex]'" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "table.csv").exists()


# 10. help, version, python -m geomopt, license, small things
def test_help_lists_choices_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for choice in ("{mlp,cnn", "kaiming", "path-sgd", "ekfac", "cosine", "empirical", "mnist1d", "(default: 256,256)"):
        assert choice in text
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("geomopt ")


def test_python_dash_m_geomopt_and_license():
    result = subprocess.run([sys.executable, "-m", "geomopt", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("geomopt "), result.stderr
    assert "MIT License" in (Path(__file__).parents[1] / "LICENSE").read_text()


def test_adding_prints_mse_not_acc_nan(tmp_path, capsys):
    assert main(["train", "--model", "relu-rnn", "--widths", "8", "--data", "adding", "--seq-len", "5",
                 "--train-size", "32", "--batch-size", "16", "--epochs", "1", "--lr", "1e-3", "--no-progress",
                 "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "(MSE)" in out


# 4. K-FAC/EKFAC from the command line train with the default options; a blow-up is exit 3, never 0
@pytest.mark.parametrize("optimizer", ["kfac", "ekfac"])
@pytest.mark.parametrize("data", ["digits", "mnist1d"])
def test_kfac_cli_defaults_converge(tmp_path, optimizer, data):
    """Reference: the loss before training (epoch 0); default options must bring it well down."""
    out = tmp_path / "run"
    assert main(["train", "--optimizer", optimizer, "--data", data, "--train-size", "500", "--epochs", "2",
                 "--no-progress", "--out", str(out)]) == 0
    epochs = [r for r in read_metrics(out) if r["kind"] == "epoch"]
    assert epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"]
    assert epochs[-1]["train_acc"] > 0.4


def test_rising_loss_is_reported_as_diverged(tmp_path, capsys):
    # the old defaults (damping 1e-3, no KL clip): finite losses that rise by orders of magnitude
    out = tmp_path / "run"
    assert main(["train", "--optimizer", "ekfac", "--damping", "0.001", "--kl-clip", "none", "--train-size", "500",
                 "--epochs", "2", "--no-progress", "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "diverged" in err and "before training" in err
    assert not (out / "summary.json").exists()


# 6. the report cites the papers by title, never a file of the build machine
def test_every_reproduction_cites_its_papers_by_title():
    import ast
    import importlib

    from geomopt.experiments import EXPERIMENTS
    for name, module in EXPERIMENTS.items():
        module = importlib.import_module(module.__name__) if not hasattr(module, "CITATIONS") else module
        assert module.CITATIONS, name
        for c in module.CITATIONS:
            assert c.count('"') == 2 and len(c.split('"')[1]) > 10, (name, c)  # Authors, "Title", venue
        strings = [n.value for n in ast.walk(ast.parse(Path(module.__file__).read_text()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not [s for s in strings if "/work/" in s or "papers.md" in s and not s.startswith("Reproduction")], name


# 7. diverged and unconverged runs are marked in the report
def test_report_marks_diverged_and_unconverged_runs(tmp_path):
    from geomopt.report import Section, build_report, run_warnings, write_section
    rows = [{"lr": 0.1, "train_loss": 0.05, "diverged": False, "chosen": True},
            {"lr": 3.0, "train_loss": float("inf"), "diverged": True, "chosen": False},
            {"lr": 0.01, "train_loss": 12.18, "diverged": False, "chosen": True},   # chosen, above chance: stuck
            {"lr": 1e-4, "train_loss": 2.5, "diverged": False, "chosen": False}]    # not chosen: not listed
    warnings, caveat = run_warnings(rows, lambda r: f"lr {r['lr']:g}", lambda r: 2.3026)
    assert warnings == ["DIVERGED: lr 3", "NOT CONVERGED: lr 0.01: final train loss 12.18 (above 2.303)"]
    assert "1 of 4 runs diverged" in caveat and "1 run(s)" in caveat
    assert run_warnings(rows[:1], str, lambda r: 2.3) == ([], None)
    section = Section(title="T", paragraphs=["Our result: x.", caveat], citations=['A & B, "A Title", 2020'],
                      warnings=warnings)
    write_section(tmp_path / "exp", section)
    page = build_report(tmp_path, tmp_path / "report").read_text()
    assert "DIVERGED: lr 3" in page and "NOT CONVERGED" in page and "A Title" in page
    assert 'href="#' in page  # table of contents with links


# 8. progress bars on long work (the reproductions that train through geomopt.sweep show its bar)
def test_long_reproductions_show_progress(tmp_path, capsys):
    from geomopt.experiments import EXPERIMENTS
    EXPERIMENTS["deep-mf"].reproduce(
        tmp_path, tier="quick", jobs=1,
        overrides={"n": 6, "rank": 1, "ms": [20], "depths": [1, 2], "steps": 100, "solver": "admm", "seeds": [0],
                   "reg_n": 20, "reg_d": 3, "reg_steps": 20, "reg_seeds": [0], "reg_lrs": [1e-2, 3e-2, 1e-1]})
    err = capsys.readouterr().err
    for bar in ("deep-mf: completion (m, seed)", "completion depth 2", "deep-mf: l_p regression"):
        assert bar in err


# 10. small things a new user meets: example zoo, zoo target, --depth/--depths, prune -> measure, unfit margins
def test_example_zoo_file_parses(tmp_path):
    from geomopt.experiments.zoo import load_grid
    runs, options = load_grid(Path(__file__).parents[1] / "examples" / "zoo.toml", tmp_path)
    assert len(runs) == 16 and all(c.target_train_loss == 0.01 for c, _, _ in runs)
    assert options == {"margin_quantile": 0.05}


def test_zoo_says_when_no_run_reached_the_target(tmp_path, capsys):
    grid = tmp_path / "zoo.toml"
    grid.write_text('[base]\nepochs = 1\ntrain_size = 100\ntarget_train_loss = 1e-6\nwidths = [8]\n'
                    '[grid]\nlr = [0.01]\n')
    assert main(["zoo", "--grid", str(grid), "--out", str(tmp_path / "zoo"), "--no-measures", "--jobs", "1"]) == 0
    assert "0 of 1 runs reached target_train_loss: none did" in capsys.readouterr().out


@pytest.mark.parametrize("lab, flag", [("completion", "--depths"), ("completion", "--depth"),
                                       ("deep-linear", "--depth"), ("deep-linear", "--depths")])
def test_implicit_depth_and_depths_are_one_flag(tmp_path, lab, flag):
    from geomopt.cli import build_parser
    args = build_parser().parse_args(["implicit", lab, flag, "1,2", "--out", str(tmp_path)])
    assert (args.depth if lab == "completion" else args.depths) == (1, 2)


def test_pruned_run_can_be_measured_and_unfit_margins_are_explained(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["prune", str(run), "--criterion", "mp", "--sparsity", "0.5", "--examples", "100", "--no-progress",
                 "--out", str(tmp_path / "pruned")]) == 0
    capsys.readouterr()
    assert main(["measure", str(tmp_path / "pruned"), "--measures", "margin,norms,bounds", "--no-progress"]) == 0
    out = capsys.readouterr().out  # one epoch on 200 examples: most points misclassified, margin <= 0
    assert "bartlett_bound" in out and "(the margin is <= 0" in out and "need a run that fits" in out
    measures = json.loads((tmp_path / "pruned" / "measures.json").read_text())
    assert measures["config"]["widths"] == [16]


def test_results_csv_keeps_rows_of_settings_not_rerun(tmp_path):
    """Reference: the rows written by hand; a rerun over fewer settings replaces only its own rows."""
    import csv

    from geomopt.report import write_records
    path = tmp_path / "results.csv"
    write_records(path, [{"data": "a", "lr": 0.1, "loss": 1.0}, {"data": "b", "lr": 0.1, "loss": 2.0}], key=("data", "lr"))
    write_records(path, [{"data": "b", "lr": 0.1, "loss": 3.0}], key=("data", "lr"))
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"data": "a", "lr": "0.1", "loss": "1.0"}, {"data": "b", "lr": "0.1", "loss": "3.0"}]


def test_same_command_resumes_an_interrupted_run(tmp_path):
    """Reference: an uninterrupted run; the same command on an interrupted folder must continue it exactly."""
    from geomopt.train import train
    flags = [*TINY, "--epochs", "2", "--checkpoint-every", "2"]
    assert main(["train", *flags, "--out", str(tmp_path / "full")]) == 0
    config = TrainConfig.load(tmp_path / "full" / "config.json")
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", progress=False, stop_after_steps=5)
    assert main(["train", *flags, "--out", str(tmp_path / "cut")]) == 0
    strip = lambda recs: [{k: v for k, v in r.items() if k != "time"} for r in recs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "cut")) == strip(read_metrics(tmp_path / "full"))
