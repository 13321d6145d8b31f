"""How a command ends when its start fails, after a divergence, on Ctrl-C, and when a process dies (issue 25).

References: the documented exit codes (2 bad input, 3 diverged, 4 a data-parallel process lost, 130
interrupted); the file system itself (a failed start leaves no folder; an interrupted reproduction keeps
its finished runs byte for byte); real signals sent to real subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from geomopt.cli import main
from tests.processes import descendants, geomopt, running, wait_for

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


# a reproduction of 2 x 5 short trials on 2 workers
REPRODUCE = ["reproduce", "path-sgd", "--quick", "--jobs", "2", "--seeds", "5", "--set", "datasets=digits",
             "--set", "inits=kaiming", "--set", "optimizers=sgd", "--set", 'lrs={"sgd": [0.1, 0.3]}',
             "--set", "max_extensions=0", "--set", "widths=8", "--set", "train_size=100", "--set", "epochs=150"]


def _summaries(root: Path) -> dict[Path, bytes]:
    """The stored trials' summaries (not those in a worker's scratch folder OUT/.partial)."""
    return {p: p.read_bytes() for p in root.rglob("summary.json") if ".partial" not in p.parts}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the worker processes")
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_ctrl_c_during_reproduce_stops_the_workers_and_keeps_finished_runs(tmp_path, backend):
    if backend == "ray":
        pytest.importorskip("ray")
    proc = geomopt(*REPRODUCE, "--backend", backend, "--out", str(tmp_path))
    wait_for(lambda: _summaries(tmp_path) or proc.poll() is not None, 120, "a first stored trial")
    workers = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    kept = _summaries(tmp_path)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "leaked semaphore" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("geomopt reproduce: path-sgd: interrupted; the ") and "stored" in last, last
    assert workers  # the pool's workers, its forkserver and resource tracker; Ray's: they end with the driver
    wait_for(lambda: not [pid for pid in workers if running(pid)], 20, "the end of every worker process")
    assert 0 < len(kept) < 10
    rerun = geomopt(*REPRODUCE, "--backend", backend, "--out", str(tmp_path))
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    after = _summaries(tmp_path)
    assert len(after) == 10 and all(after[p] == data for p, data in kept.items())  # resumed, not retrained


# data-parallel runs whose rank 1 is killed / hangs after its 3rd step (tests/faults/sitecustomize.py)
FAULTS = str(Path(__file__).parent / "faults")
DP = ["train", "--data", "digits", "--train-size", "200", "--widths", "16", "--batch-size", "50", "--epochs", "2",
      "--checkpoint-every", "2", "--no-progress", "--nproc", "2"]


def _with_fault(fault: str) -> dict[str, str]:
    return {"GEOMOPT_TEST_FAULT": fault, "PYTHONPATH": os.pathsep.join([FAULTS, *sys.path])}


def test_nproc_2_a_killed_rank_is_named_and_the_run_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    proc = geomopt(*DP, "--out", str(out), "--timeout", "60", env=_with_fault("1:3:kill"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 4, err[-3000:]
    assert err.strip() == (f"geomopt train: rank 1 of 2 was killed (SIGKILL); the launcher stopped the others; the last "
                           f"checkpoint in {out} is intact: continue with `geomopt train --resume {out} --nproc 2`"), err
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # with any number of processes
    assert json.loads((out / "summary.json").read_text())["steps"] == 8


def test_nproc_2_a_rank_silent_past_timeout_is_named(tmp_path):
    out = tmp_path / "run"
    proc = geomopt(*DP, "--out", str(out), "--timeout", "8", env=_with_fault("1:3:hang"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 4, err[-3000:]
    assert err.strip() == (f"geomopt train: rank 1 of 2 stopped answering (rank 0 waited --timeout 8 s); the launcher "
                           f"stopped the others; the last checkpoint in {out} is intact: continue with "
                           f"`geomopt train --resume {out} --nproc 2`"), err


def test_a_rank_that_cannot_join_says_so_and_leaves_nothing(tmp_path):
    """Under torchrun (here its environment by hand) rank 0 of 2, alone: the rendezvous times out."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    proc = geomopt(*DP[:-2], "--out", str(tmp_path / "run"), "--timeout", "2", env=env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 4, err[-3000:]
    assert err.startswith(f"geomopt train: rank 0 of 2 could not join the process group at 127.0.0.1:{port} within "
                          "--timeout 2 s (") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_nproc_2_ctrl_c_is_one_line_and_exit_130(tmp_path):
    out = tmp_path / "run"
    proc = geomopt(*DP[:7], "--epochs", "30", "--batch-size", "20", "--checkpoint-every", "2", "--no-progress",
                   "--nproc", "2", "--out", str(out))
    wait_for(lambda: (out / "checkpoint.pt").exists() or proc.poll() is not None, 200, "a first checkpoint")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip() == (f"interrupted; the last checkpoint in {out} is intact: continue with "
                           f"`geomopt train --resume {out} --nproc 2`"), err
