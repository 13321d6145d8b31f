"""Data-parallel training with the engine (geomopt.train.distributed) in real gloo processes.

References: an uninterrupted one-process run (float64: two processes must give the same metrics
to rounding, since the gradient and the K-FAC factors are the global-batch ones); a NaN planted in
one rank's shard; a rank that dies. Also `geomopt train --nproc 2` (torchrun) against one process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from geomopt.data import make_loader
from geomopt.optim import KFAC
from geomopt.train import NonFiniteLossError, TrainConfig, fit, read_metrics, train
from geomopt.train.distributed import shard_bounds
from tests.processes import run_processes

N_TRAIN, BATCH = 47, 15  # batches of 15, 15, 15, 2: shards of 8 and 7 examples, and of 1 and 1


def _data(nan_at: int | None = None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + 20, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    if nan_at is not None:
        x[nan_at] = float("nan")
    return TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:])


def _run(out: Path, opt_name: str, *, resume=False, stop=None, nan_at=None, loss_fn=nn.functional.cross_entropy):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    if opt_name == "kfac":
        opt = KFAC(model, kl_clip=None, lr=0.2, momentum=0.5, damping=1e-2, update_freq=2, inv_freq=3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + 0.1 * s))
    train, test = _data(nan_at)
    return fit(model, opt, make_loader(train, BATCH, shuffle=True, seed=3), make_loader(test, 8, shuffle=False),
               epochs=3, out_dir=out, scheduler=sched, resume=resume, checkpoint_every=2, progress=False,
               stop_after_steps=stop, loss_fn=loss_fn)


def _numbers(out: Path):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(out)]


def _close(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert math.isclose(ra[k], rb[k], rel_tol=1e-10, abs_tol=1e-12), (k, ra, rb)
            else:
                assert ra[k] == rb[k], (k, ra, rb)


def _resume_and_nan_worker(rank: int, world: int, root: str) -> None:
    for opt_name in ("sgd", "kfac"):
        try:  # resumes the one-process run stopped at step 5 (checkpoint at step 4), stops after step 9
            _run(Path(root) / opt_name, opt_name, resume=True, stop=9)
        except KeyboardInterrupt:
            pass
    # NaN in an example of rank 1's shard of the first batch (_nan_index_for_rank1)
    nan_at = int(Path(root, "nan_at").read_text())
    try:
        _run(Path(root) / "nan", "sgd", nan_at=nan_at)
    except NonFiniteLossError as exc:
        Path(root, f"nan-rank{rank}.txt").write_text(str(exc))


def _nan_index_for_rank1() -> int:
    """An example that the first batch of epoch 0 gives to rank 1 of 2."""
    loader = make_loader(_data()[0], BATCH, shuffle=True, seed=3)
    loader.sampler.set_epoch(0)
    first = list(next(iter(loader.sampler)))
    start, _ = shard_bounds(len(first), 1, 2)
    return first[start]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    for opt_name in ("sgd", "kfac"):
        _run(root / f"{opt_name}-full", opt_name)
        with pytest.raises(KeyboardInterrupt):
            _run(root / opt_name, opt_name, stop=5)
    (root / "nan_at").write_text(str(_nan_index_for_rank1()))
    assert run_processes(2, _resume_and_nan_worker, str(root), timeout=150) == [0, 0]
    return root


@pytest.mark.parametrize("opt_name", ["sgd", "kfac"])
def test_resume_with_another_number_of_processes_matches_an_uninterrupted_run(runs, opt_name):
    # 1 process for steps 1-4, 2 processes for steps 5-8 (killed after 9), 1 process from step 9 to the end
    assert torch.load(runs / opt_name / "checkpoint.pt", weights_only=False)["step"] == 8
    _run(runs / opt_name, opt_name, resume=True)
    full, cut = _numbers(runs / f"{opt_name}-full"), _numbers(runs / opt_name)
    assert [r["step"] for r in cut if r["kind"] == "step"] == list(range(1, 13))
    _close(full, cut)


def test_nan_on_one_rank_stops_every_rank(runs):
    for rank in range(2):
        msg = (runs / f"nan-rank{rank}.txt").read_text()
        assert "rank(s) [1] of 2" in msg and "step 1 " in msg, msg
    assert not (runs / "nan" / "checkpoint.pt").exists()


def _dying_worker(rank: int, world: int, root: str) -> None:
    def loss_fn(out, y):
        if rank == 1 and torch.is_grad_enabled() and not hasattr(loss_fn, "seen"):
            loss_fn.seen = True
            raise RuntimeError("rank 1 fails")
        return nn.functional.cross_entropy(out, y)
    try:
        _run(Path(root) / "dead", "kfac", loss_fn=loss_fn)
    except Exception as exc:  # noqa: BLE001 - the surviving rank's error is the test's subject
        Path(root, f"dead-rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        raise


def test_a_dead_rank_does_not_hang_the_others(tmp_path):
    codes = run_processes(2, _dying_worker, str(tmp_path), timeout=90, collective_timeout=10)
    assert codes[0] != 0 and codes[1] != 0
    assert "rank 1 fails" in (tmp_path / "dead-rank1.txt").read_text()
    assert (tmp_path / "dead-rank0.txt").exists()  # rank 0 got an error from its collective, not a hang


def _stuck_worker(rank: int, world: int, root: str) -> None:
    def loss_fn(out, y):
        if rank == 1 and torch.is_grad_enabled():
            time.sleep(10)  # a rank that stops answering (alive, not crashed)
            os._exit(0)
        return nn.functional.cross_entropy(out, y)
    start = time.monotonic()
    try:
        _run(Path(root) / "stuck", "sgd", loss_fn=loss_fn)
    except Exception as exc:  # noqa: BLE001
        Path(root, "stuck-rank0.txt").write_text(f"{time.monotonic() - start:.1f} {type(exc).__name__}: {exc}")
        raise


def test_a_stuck_rank_times_out_the_others(tmp_path):
    codes = run_processes(2, _stuck_worker, str(tmp_path), timeout=90, collective_timeout=4)
    assert codes[0] != 0
    seconds, msg = (tmp_path / "stuck-rank0.txt").read_text().split(" ", 1)
    assert float(seconds) < 9.5 and "timed out" in msg.lower(), msg  # the collective's timeout, not the sleep


def test_cli_nproc_2_matches_one_process(tmp_path):
    config = TrainConfig(data="digits", train_size=200, widths=(16,), epochs=1, batch_size=50, optimizer="kfac",
                         update_freq=1, inv_freq=2)
    one = train(config, tmp_path / "one", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "geomopt.cli", "train", "--config", str(tmp_path / "one" / "config.json"),
                           "--out", str(tmp_path / "two"), "--nproc", "2", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
        assert math.isclose(one[key], two[key], rel_tol=1e-4), (key, one[key], two[key])  # float32
    assert one["steps"] == two["steps"] == 4


def _group_threads() -> list[str]:
    """Names of this process's threads that belong to a process group (gloo's workers and loop, the TCP
    store's server); Linux only."""
    names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    return [n for n in names if "gloo" in n or "tcpstore" in n]


def _own_group_worker(rank, world, root, port):
    from geomopt.train.distributed import leave
    leave()  # the harness's group: train() joins its own from the environment, as under torchrun
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    before = _group_threads()
    config = TrainConfig(data="digits", train_size=100, widths=(8,), epochs=1, batch_size=50, optimizer="kfac")
    train(config, Path(root) / "run", progress=False)  # K-FAC's hooks and DDP's reducer form reference cycles
    Path(root, f"threads{rank}.json").write_text(json.dumps([before, _group_threads()]))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names in /proc")
def test_train_ends_its_process_group_threads(tmp_path):
    """A finished data-parallel ``train`` leaves no process-group thread running: one left running into
    interpreter shutdown can abort the process after a successful run (a gloo worker releasing a
    tensor without the GIL: "terminate called without an active exception", exit -6)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_processes(2, _own_group_worker, str(tmp_path), port, timeout=120) == [0, 0]
    for rank in range(2):
        before, after = json.loads((tmp_path / f"threads{rank}.json").read_text())
        assert before == [] and after == [], f"rank {rank}: threads before train {before}, after {after}"


def _cli_worker_losing_rank1(rank, world, root, port):
    """``geomopt train`` as plain torchrun starts it (its environment), rank 1 killed after its 3rd step."""
    import contextlib
    import signal

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from geomopt.cli import main
    from geomopt.train.distributed import leave
    leave()  # the harness's group: train() joins its own from the environment
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    steps = []
    if rank == 1:
        register_optimizer_step_post_hook(
            lambda *_: steps.append(1) or (len(steps) == 3 and os.kill(os.getpid(), signal.SIGKILL)))
    out = Path(root) / "run"
    with open(Path(root) / f"stderr{rank}.txt", "w") as err, contextlib.redirect_stderr(err):
        code = main(["train", "--data", "digits", "--train-size", "200", "--widths", "16", "--batch-size", "50",
                     "--epochs", "2", "--checkpoint-every", "2", "--no-progress", "--out", str(out), "--timeout", "60"])
    Path(root, f"code{rank}.txt").write_text(str(code))


def test_under_torchrun_the_survivor_of_a_killed_rank_says_so(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_processes(2, _cli_worker_losing_rank1, str(tmp_path), port, timeout=120) == [0, -9]
    out = tmp_path / "run"
    assert (tmp_path / "code0.txt").read_text() == "4"
    err = (tmp_path / "stderr0.txt").read_text().strip()
    assert err.startswith("geomopt train: rank 0 of 2 lost its connection to another process of the run, which died (")
    assert err.endswith(f"the last checkpoint in {out} is intact: continue with `geomopt train --resume {out} --nproc 2`")
    assert len(err.splitlines()) == 1, err


def test_the_launcher_names_the_cause_among_torchruns_failures():
    """torchrun stops the other ranks with SIGTERM once one fails: the cause is what is named."""
    from types import SimpleNamespace

    from geomopt.train.distributed import _explain

    def failure(code, kind=None):
        data = {"geomopt": {"kind": kind, "rank": 0, "timeout": 5.0}} if kind else {}
        return SimpleNamespace(exitcode=code, error_file_data=data, message=f"report of a {kind}")
    assert _explain({0: failure(-15), 1: failure(-9)}, 2) == (
        4, "rank 1 of 2 was killed (SIGKILL); the launcher stopped the others")
    assert _explain({0: failure(4, "timeout"), 2: failure(-15)}, 3) == (
        4, "ranks [1, 2] of 3 stopped answering (rank 0 waited --timeout 5 s); the launcher stopped the others")
    assert _explain({0: failure(4, "join"), 1: failure(-15)}, 2) == (
        4, "report of a join; the launcher stopped the others")
    assert _explain({0: failure(-15), 1: failure(3)}, 2) == (3, None)  # a NaN loss: the ranks said it themselves
    assert _explain({0: failure(-15), 1: failure(-15)}, 2) == (
        4, "ranks [0, 1] of 2 stopped by SIGTERM from outside the run")


def test_launch_restores_the_signal_handlers(monkeypatch):
    """torchrun's agent installs process-wide SIGINT/SIGTERM handlers: after `launch` (an in-process
    `geomopt train --nproc N`), Ctrl-C must raise KeyboardInterrupt again in the caller."""
    import signal

    import torch.distributed.run

    from geomopt.train import distributed

    def fake_run(args):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(torch.distributed.run, "run", fake_run)
    assert distributed.launch(2, ["train"]) == (0, None)
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before
