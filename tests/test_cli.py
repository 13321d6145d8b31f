"""The command line: ``geomopt train`` outputs, exact resume, exit codes and error messages.

References: the flags themselves (config.json must equal them), an uninterrupted CLI run (a
run interrupted and resumed through the CLI must reproduce it bit for bit), the documented
exit codes (0 ok, 2 bad input, 3 non-finite loss, 130 interrupted).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import geomopt.train
from geomopt.cli import main
from geomopt.train import TrainConfig, read_metrics

# 300 examples / batch 50 -> 6 steps per epoch
TINY = ["--model", "mlp", "--data", "digits", "--train-size", "300", "--widths", "16", "--batch-size", "50",
        "--optimizer", "path-sgd", "--lr", "0.05", "--seed", "0", "--no-progress"]
TINY_CONFIG = TrainConfig(model="mlp", data="digits", train_size=300, widths=(16,), batch_size=50,
                          optimizer="path-sgd", lr=0.05, seed=0)


def _numbers(records):
    """Metrics without wall-clock fields."""
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_console_script_help():
    script = Path(sys.executable).parent / "geomopt"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("train", "reproduce", "report"):
        assert command in result.stdout


def test_train_writes_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"}

    assert TrainConfig.load(out / "config.json") == TINY_CONFIG.replace(epochs=2)
    assert json.loads((out / "config.json").read_text())["widths"] == [16]

    records = read_metrics(out)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert [r["epoch"] for r in steps] == [1] * 6 + [2] * 6
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert [r["step"] for r in epochs] == [0, 6, 12]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["epochs"] == 2
    assert summary["test_acc"] == epochs[-1]["test_acc"]
    printed = capsys.readouterr().out
    assert re.search(r"test\s+loss \S+\s+acc (\S+)", printed).group(1) == f"{summary['test_acc']:.4f}"
    assert str(out) in printed


def test_config_file_then_flags_override_it(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"lr": 0.3, "epochs": 1, "train_size": 200, "widths": [8]}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--lr", "0.02", "--no-progress", "--out", str(out)]) == 0
    assert TrainConfig.load(out / "config.json") == TrainConfig(lr=0.02, epochs=1, train_size=200, widths=(8,))


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    flags = [*TINY, "--epochs", "3", "--checkpoint-every", "4"]
    assert main(["train", *flags, "--out", str(tmp_path / "full")]) == 0

    # Ctrl-C after step 10 of 18; the last checkpoint is at step 8 (mid-epoch 2)
    real_train = geomopt.train.train
    monkeypatch.setattr(geomopt.train, "train", functools.partial(real_train, stop_after_steps=10))
    cut = tmp_path / "cut"
    capsys.readouterr()
    assert main(["train", *flags, "--out", str(cut)]) == 130
    assert f"--resume {cut}" in capsys.readouterr().err
    monkeypatch.setattr(geomopt.train, "train", real_train)

    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    assert _numbers(read_metrics(tmp_path / "full")) == _numbers(read_metrics(cut))
    full_summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    cut_summary = json.loads((cut / "summary.json").read_text())
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "steps", "epochs"):
        assert full_summary[key] == cut_summary[key]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(cut / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupt_before_first_checkpoint_says_start_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(geomopt.train, "train", functools.partial(geomopt.train.train, stop_after_steps=2))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "before the first checkpoint" in err and "--resume" not in err


def test_resume_refuses_changed_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--lr", "0.1", "--no-progress"]) == 2
    assert "lr" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--out", str(tmp_path / "other"), "--no-progress"]) == 2
    assert "--out" in capsys.readouterr().err


BAD_INPUTS = [
    pytest.param(["--data", "nope"], "argument --data: invalid choice: 'nope'", id="dataset"),
    pytest.param(["--optimizer", "nope"], "argument --optimizer: invalid choice: 'nope'", id="optimizer"),
    pytest.param(["--model", "nope"], "argument --model: invalid choice: 'nope'", id="model"),
    pytest.param(["--init", "nope"], "argument --init: invalid choice: 'nope'", id="init"),
    pytest.param(["--schedule", "nope"], "argument --schedule: invalid choice: 'nope'", id="schedule"),
]


@pytest.mark.parametrize("flags, message", BAD_INPUTS)
def test_bad_option_exits_2_naming_it(tmp_path, capsys, flags, message):
    """argparse choices: exit 2 naming the flag, and --help lists the choices."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", *TINY, "--epochs", "1", *flags, "--out", str(out)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == "" and not out.exists()


def test_malformed_widths_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--widths", "a,b", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--widths" in err and "'a,b'" in err


def test_missing_out(capsys):
    assert main(["train", *TINY]) == 2
    assert "--out" in capsys.readouterr().err


def test_resume_without_config_json(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "config.json" in err


def test_unknown_key_in_config_file(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"lr": 0.1, "learning_rate": 0.1}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.json"), "--out", str(tmp_path / "run")]) == 2
    assert "none.json" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_when_absent(tmp_path, capsys):
    assert main(["train", *TINY, "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "cuda" in err and "is_available" in err


def test_unknown_reproduce_key(tmp_path, capsys):
    assert main(["reproduce", "path-sgd", "--quick", "--out", str(tmp_path), "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["reproduce", "path-sgd", "--quick", "--out", str(tmp_path), "--set", "epochs"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_non_finite_loss_exits_3(tmp_path, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--lr", "1e30", "--optimizer", "sgd",
                 "--out", str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err
    assert "loss became" in err and "lower the learning rate" in err


def test_reproduce_all_runs_every_experiment_and_reports_failures(tmp_path, monkeypatch, capsys):
    """Fake experiments (one failing, one without a seeds parameter): every one is tried, the exit code says."""
    import types

    import geomopt.experiments
    from geomopt.report import Section, write_section
    calls = []

    def ok(out, *, quick, jobs, overrides, overwrite, seeds):
        calls.append(("ok", quick, seeds, overrides))
        (out / "ok").mkdir(parents=True, exist_ok=True)
        return write_section(out / "ok", Section(title="ok"))

    def old(out, *, quick, jobs, overrides, overwrite):  # an experiment not yet taking seeds: they go to its config
        calls.append(("old", quick, None, overrides))
        (out / "old").mkdir(parents=True, exist_ok=True)
        return write_section(out / "old", Section(title="old"))

    def bad(out, **kwargs):
        raise RuntimeError("boom")
    fakes = {n: types.SimpleNamespace(reproduce=f) for n, f in (("ok", ok), ("bad", bad), ("old", old))}
    monkeypatch.setattr(geomopt.experiments, "EXPERIMENTS", fakes)
    assert main(["reproduce", "all", "--quick", "--seeds", "2", "--out", str(tmp_path)]) == 1
    assert calls == [("ok", True, 2, {}), ("old", True, None, {"seeds": [0, 1]})]
    captured = capsys.readouterr()
    assert "bad failed: RuntimeError: boom" in captured.err and "2/3 reproductions done; failed: bad" in captured.out
    assert main(["reproduce", "all", "--out", str(tmp_path), "--set", "epochs=1"]) == 2


def test_train_relu_rnn_on_the_rnn_path_protocol(tmp_path):
    """The README's RNN-Path command: ReLU RNN inits and the first-step Path-SGD are valid flags."""
    import json as _json

    from geomopt.cli import main as _main
    out = tmp_path / "rnn"
    assert _main(["train", "--model", "relu-rnn", "--widths", "4", "--init", "irnn-le", "--data", "adding",
                  "--seq-len", "4", "--train-size", "32", "--optimizer", "path-sgd-first-step", "--lr", "1e-3",
                  "--batch-size", "16", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    cfg = _json.loads((out / "config.json").read_text())
    assert (cfg["init"], cfg["optimizer"]) == ("irnn-le", "path-sgd-first-step")
