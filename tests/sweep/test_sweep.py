"""The sweep engine on both backends: local spawned processes and a real local Ray instance (2 CPUs,
started once for this module). Retries after a worker dies, failures recorded and the sweep going on,
timeouts, Ctrl-C and a restart that reruns only unfinished trials, results written by the driver
under the output folder wherever the worker ran, and the same zoo on both backends."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

import tests.sweep.jobs as jobs
from geomopt.cli import main
from geomopt.sweep import FAILED, SweepError, Trial, run_all, run_sweep, sweep_options
from geomopt.sweep.ray_backend import RayBackend
from geomopt.train import TrainConfig


RAY_MODELS = """from torch import nn


def tiny(input_shape, num_classes, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
"""


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """Ray with 2 CPUs whose workers run in a copy of another folder (runtime_env working_dir); yields it."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "note.txt").write_text("the workers' working directory")
    (elsewhere / "raymodels.py").write_text(RAY_MODELS)  # a user's --model module, shipped with the working dir
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"working_dir": str(elsewhere)})
    ray.cloudpickle.register_pickle_by_value(jobs)  # the workers need not import the tests package
    yield elsewhere
    ray.shutdown()


@pytest.fixture(params=["local", "ray"])
def backend(request):
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return request.param


def _ran(log: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in log.iterdir())


def test_results_stored_by_the_driver_and_finished_trials_skipped(tmp_path, backend):
    log = tmp_path / "log"
    log.mkdir()
    trials = [Trial(jobs.Square(x, str(log)), tmp_path / "out" / f"t{x}") for x in range(3)]
    results = run_sweep(trials, backend=backend, workers=2, progress=False)
    assert [r.status for r in results] == ["done"] * 3
    assert [r.result["square"] for r in results] == [0, 1, 4]
    for x, r in enumerate(results):
        out = tmp_path / "out" / f"t{x}"
        assert (out / "x.txt").read_text() == str(x) and (out / "sub" / "y.txt").read_text() == str(x * x)
        assert json.loads((out / "summary.json").read_text()) == r.result
        assert not Path(r.result["workdir"]).exists()  # the worker's temporary folder is gone
        assert os.getpid() != r.result["pid"]
    again = run_sweep(trials, backend=backend, workers=2, progress=False)
    assert [r.status for r in again] == ["skipped"] * 3 and [r.result for r in again] == [r.result for r in results]
    assert len(_ran(log)) == 3


def test_a_killed_worker_is_retried(tmp_path, backend):
    trials = [Trial(jobs.DieOnce(str(tmp_path / "marker")), tmp_path / "die")]
    trials += [Trial(jobs.Square(x), tmp_path / f"t{x}") for x in range(3)]
    results = run_sweep(trials, backend=backend, workers=2, progress=False)
    assert [r.status for r in results] == ["done"] * 4
    assert results[0].result == {"survived": True}
    assert len(results[0].errors) == 1 and "(died)" in results[0].errors[0]
    assert not (tmp_path / "die" / FAILED).exists()


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, backend):
    trials = [Trial(jobs.Boom(), tmp_path / "boom"), Trial(jobs.Square(2), tmp_path / "t2")]
    results = run_sweep(trials, backend=backend, workers=2, max_retries=1, progress=False)
    assert [r.status for r in results] == ["failed", "done"]
    failed = json.loads((tmp_path / "boom" / FAILED).read_text())
    assert failed["attempts"] == 2 and all("boom: this job always fails" in e for e in failed["errors"])
    assert failed["backend"] == backend and not (tmp_path / "boom" / "summary.json").exists()
    with pytest.raises(SweepError, match="(?s)1 trial.*boom: this job always fails"):  # retried: failed is not finished
        run_all([(jobs.Boom(), tmp_path / "boom"), (jobs.Square(2), tmp_path / "t2")], 2, backend=backend,
                max_retries=0, progress=False)


def test_trial_timeout_kills_the_attempt(tmp_path, backend):
    """The hanging attempt (120 s) is killed after 2 s and recorded as failed, not retried."""
    start = time.monotonic()
    (result,) = run_sweep([Trial(jobs.Hang(), tmp_path / "hang")], backend=backend, workers=2, trial_timeout=2,
                          progress=False)
    assert result.status == "failed" and time.monotonic() - start < 60
    assert json.loads((tmp_path / "hang" / FAILED).read_text())["errors"] == ["attempt 1 (timeout): killed after 2 s"]


def test_interrupted_sweep_restarted_reruns_only_unfinished(tmp_path, backend):
    log = tmp_path / "log"
    log.mkdir()
    outs = [tmp_path / "out" / f"t{x}" for x in range(2)]
    trials = [Trial(jobs.Square(x, str(log)), outs[x]) for x in range(2)]
    trials.append(Trial(jobs.InterruptOnce(os.getpid(), str(tmp_path / "marker"),
                                           tuple(str(o / "summary.json") for o in outs), str(log)),
                        tmp_path / "out" / "stop"))
    with pytest.raises(KeyboardInterrupt):  # the third trial presses Ctrl-C once the others are stored
        run_sweep(trials, backend=backend, workers=2, progress=False)
    assert all((o / "summary.json").is_file() for o in outs)
    assert not (tmp_path / "out" / "stop" / "summary.json").exists()
    results = run_sweep(trials, backend=backend, workers=2, progress=False)
    assert [r.status for r in results] == ["skipped", "skipped", "done"]
    assert results[2].result == {"interrupted_before": True}
    assert _ran(log) == ["interrupt", "interrupt", "square0", "square1"]


DRIVER = """
import sys
from pathlib import Path
import tests.sweep.jobs as jobs
from geomopt.sweep import Trial, run_sweep
root = Path(sys.argv[1])
outs = [root / "t0", root / "t1"]
trials = [Trial(jobs.Square(x), outs[x]) for x in range(2)]
trials.append(Trial(jobs.HangOnce(str(root / "pid"), tuple(str(o / "summary.json") for o in outs)), root / "hang"))
run_sweep(trials, workers=2, progress=False)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_killed_driver_leaves_its_finished_trials_and_no_worker(tmp_path):
    """A driver (its own process) SIGKILLed while a trial hangs: the stored trials stay, the hanging
    worker exits within seconds, and the same sweep run again runs only the unfinished trial."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=Path(__file__).resolve().parents[2])
    pidfile, deadline = tmp_path / "pid", time.monotonic() + 240
    while not (pidfile.is_file() and pidfile.read_text()) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int(pidfile.read_text())
    driver.kill()
    driver.wait()
    assert _alive(worker)
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)
    assert (tmp_path / "t0" / "summary.json").is_file() and (tmp_path / "t1" / "summary.json").is_file()
    trials = [Trial(jobs.Square(x), tmp_path / f"t{x}") for x in range(2)]
    trials.append(Trial(jobs.HangOnce(str(pidfile), ()), tmp_path / "hang"))
    assert [r.status for r in run_sweep(trials, workers=2, progress=False)] == ["skipped", "skipped", "done"]


def test_results_land_under_out_when_the_worker_runs_elsewhere(tmp_path, ray_session, monkeypatch):
    """Ray workers run in a copy of another folder; the trial folders are relative paths of the
    driver's working directory, which the workers never see."""
    driver = tmp_path / "driver"
    driver.mkdir()
    monkeypatch.chdir(driver)
    trials = [Trial(jobs.Square(x), Path("results") / f"t{x}") for x in range(2)]
    results = run_sweep(trials, backend=RayBackend(), progress=False)
    for x, r in enumerate(results):
        assert r.status == "done" and Path(r.result["cwd"]) != driver and (Path(r.result["cwd"]) / "note.txt").is_file()
        assert (driver / "results" / f"t{x}" / "x.txt").read_text() == str(x)
        assert not (Path(r.result["cwd"]) / "results").exists()


def test_sweep_options_reach_run_all(tmp_path, ray_session):
    """How the CLI hands --backend/--max-retries to the experiments: run_all inside sweep_options runs on Ray
    (the workers' working directory is the module's 'elsewhere' copy) with no retry."""
    with sweep_options(backend="ray", max_retries=0):
        (summary,) = run_all([(jobs.Square(5), tmp_path / "t5")], progress=False)
        assert (Path(summary["cwd"]) / "note.txt").is_file()
        with pytest.raises(SweepError):
            run_all([(jobs.Boom(), tmp_path / "boom")], progress=False)
    assert json.loads((tmp_path / "boom" / FAILED).read_text())["attempts"] == 1
    (summary,) = run_all([(jobs.Square(6), tmp_path / "t6")], 1, progress=False)  # outside: local, in process
    assert summary["pid"] == os.getpid()


def _metrics(run: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    return [{k: v for k, v in json.loads(line).items() if "time" not in k}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_local_attempts_resume_from_the_last_checkpoint(tmp_path):
    """A worker killed after 3 of 8 steps: the retry resumes from the step-2 checkpoint in OUT/.partial and
    ends with the numbers of an uninterrupted run (the engine's exact resume); .partial is gone after."""
    config = TrainConfig(data="digits", model="mlp", widths=(8,), epochs=2, batch_size=50, train_size=200,
                         checkpoint_every=2)
    (straight,) = run_all([(config, tmp_path / "straight")], 1, progress=False)
    (result,) = run_sweep([Trial(jobs.TrainDieOnce(config, str(tmp_path / "marker"), 3), tmp_path / "killed")],
                          workers=2, progress=False)
    assert result.status == "done" and "(died)" in result.errors[0]
    assert (tmp_path / "killed" / "resumed.txt").read_text() == "True"
    numbers = {k: v for k, v in straight.items() if k != "seconds"}
    assert {k: v for k, v in result.result.items() if k != "seconds"} == numbers
    assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "straight")
    assert not (tmp_path / "killed" / ".partial").exists()


def test_a_divergence_is_a_result_not_a_failure(tmp_path):
    config = TrainConfig(data="digits", model="mlp", widths=(8,), epochs=1, batch_size=64, train_size=400, lr=1e30)
    (summary,) = run_all([(config, tmp_path / "nan")], 1, progress=False)
    assert summary["diverged"] and not (tmp_path / "nan" / FAILED).exists()
    assert (tmp_path / "nan" / "config.json").is_file()


def test_bad_sweeps_are_refused_early(tmp_path):
    with pytest.raises(ValueError, match="same folder"):
        run_sweep([Trial(jobs.Square(1), tmp_path / "a"), Trial(jobs.Square(2), tmp_path / "a")], progress=False)
    with pytest.raises(TypeError, match="callable"):
        Trial(3, tmp_path / "b")
    with pytest.raises(ValueError, match="unknown sweep backend"):
        run_sweep([Trial(jobs.Square(1), tmp_path / "c")], backend="slurm", progress=False)
    with pytest.raises(ValueError, match="gpus-per-trial needs --backend ray"):
        run_sweep([Trial(jobs.Square(1), tmp_path / "c")], gpus_per_trial=1, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


ZOO = """
[base]
data = "digits"
model = "mlp"
epochs = 2
train_size = 120
[grid]
width = [8, 16]
[measure]
measures = ["margin", "norms", "sharpness"]
sharpness_steps = 2
sharpness_restarts = 1
"""


def _zoo_numbers(root: Path) -> dict:
    numbers = {}
    for run in sorted(root.glob("*/zoo.json")):
        summary = json.loads((run.parent / "summary.json").read_text())
        summary.pop("seconds", None)
        measures = json.loads((run.parent / "measures.json").read_text())
        numbers[run.parent.name] = (summary, measures, (run.parent / "checkpoint.pt").is_file())
    return numbers


def test_the_same_zoo_on_both_backends(tmp_path, ray_session, capsys):
    grid = tmp_path / "zoo.toml"
    grid.write_text(ZOO)
    assert main(["zoo", "--grid", str(grid), "--out", str(tmp_path / "local"), "--jobs", "2"]) == 0
    assert main(["zoo", "--grid", str(grid), "--out", str(tmp_path / "ray"), "--backend", "ray", "--max-retries", "1",
                 "--trial-timeout", "300", "--no-checkpoints"]) == 0
    assert "2 trained now" in capsys.readouterr().out
    local, remote = _zoo_numbers(tmp_path / "local"), _zoo_numbers(tmp_path / "ray")
    assert len(local) == 2 and local.keys() == remote.keys()
    for name in local:
        assert local[name][:2] == remote[name][:2]
        assert local[name][2] and not remote[name][2]
    assert main(["zoo", "--grid", str(grid), "--out", str(tmp_path / "ray"), "--backend", "ray"]) == 0
    assert "0 trained now, 2 finished before" in capsys.readouterr().out


def test_ray_worker_builds_a_factory_model_from_its_working_dir(tmp_path, ray_session):
    """--model MODULE:FACTORY on Ray: the job carries the reference (trusted by the driver that made it);
    the worker imports the module from its runtime_env working dir (the driver cannot import it)."""
    config = TrainConfig(model="raymodels:tiny", model_options={"hidden": 4}, train_size=100, epochs=1)
    [result] = run_sweep([Trial(config, tmp_path / "t")], backend="ray", progress=False)
    assert result.status == "done", result.errors
    assert result.result["steps"] == 1 and TrainConfig.load(tmp_path / "t" / "config.json") == config
