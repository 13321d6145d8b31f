"""How a command ends when its start fails, after a divergence, on Ctrl-C, and when a process dies (issue 25).

References: the documented exit codes (2 bad input, 3 diverged, 4 a data-parallel process lost, 130
interrupted); the file system itself (a failed start leaves no folder; an interrupted reproduction keeps
its finished runs byte for byte); real signals sent to real subprocesses.
"""

from __future__ import annotations

from pathlib import Path

from geomopt.cli import main

TINY = ["--data", "digits", "--train-size", "200", "--widths", "16", "--batch-size", "50", "--no-progress"]


def test_a_failed_start_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    assert main(["train", *TINY, "--data", "mnist", "--data-dir", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "MNIST file not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()  # a folder the user made is left, empty as it was
    assert main(["train", *TINY, "--data", "mnist", "--data-dir", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "mine")]) == 2
    assert list((tmp_path / "mine").iterdir()) == []


def test_after_a_divergence_a_changed_config_points_at_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--lr", "1e30", "--optimizer", "sgd", "--out", str(out)]) == 3
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "1", "--lr", "0.05", "--optimizer", "sgd", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "lr: stored 1e+30, given 0.05" in err and "--overwrite" in err and "--resume" not in err, err
    assert len(err.splitlines()) == 1
    assert main(["train", *TINY, "--epochs", "1", "--lr", "0.05", "--optimizer", "sgd", "--out", str(out),
                 "--overwrite"]) == 0
    capsys.readouterr()
    # a change a resumed run may make (more epochs) still names --resume
    assert main(["train", *TINY, "--epochs", "2", "--lr", "0.05", "--optimizer", "sgd", "--out", str(out)]) == 2
    assert f"--resume {out}" in capsys.readouterr().err
