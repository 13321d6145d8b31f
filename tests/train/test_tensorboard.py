"""``--log tensorboard``: the event files hold exactly the records of metrics.jsonl (reference: the
JSON lines the engine writes), and the config as text; from a run, a resumed run and a sweep trial
(whose files come back from the worker's folder). Without tensorboard installed: one line, exit 2."""

import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from geomopt.cli import main
from geomopt.sweep import Trial, run_sweep
from geomopt.train import TrainConfig, read_metrics, train

CONFIG = TrainConfig(data="digits", train_size=200, widths=(16,), batch_size=50, epochs=2, lr=0.1, seed=0,
                     log="tensorboard")


def _events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return events


def _scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _expected(run_dir, kind: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(run_dir) if r["kind"] == kind and key in r]


def _assert_same(events, run_dir, kind, key):
    got, want = _scalars(events, f"{kind}/{key}"), _expected(run_dir, kind, key)
    assert [s for s, _ in got] == [s for s, _ in want] and len(want) > 1
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # float32 in the event file


def test_scalars_and_config_equal_the_metrics_file(tmp_path):
    config = CONFIG.replace(track_sharpness=4, sharpness_examples=100)
    train(config, tmp_path, progress=False)
    events = _events(tmp_path)
    for kind, key in [("step", "loss"), ("step", "lr"), ("epoch", "train_loss"), ("epoch", "train_acc"),
                      ("epoch", "test_loss"), ("epoch", "test_acc"), ("callback", "sharpness")]:
        _assert_same(events, tmp_path, kind, key)
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text) == json.loads((tmp_path / "config.json").read_text())


def test_resumed_run_purges_the_events_after_its_checkpoint(tmp_path):
    config = CONFIG.replace(epochs=3)
    with pytest.raises(KeyboardInterrupt):  # 4 steps per epoch: stopped in epoch 2, checkpoint at step 4
        train(config, tmp_path, progress=False, stop_after_steps=6)
    train(config, tmp_path, resume=True, progress=False)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    events = _events(tmp_path)
    assert [s for s, _ in _scalars(events, "step/loss")] == list(range(1, 13))  # steps 5, 6 once, not twice
    for kind, key in [("step", "loss"), ("epoch", "test_acc")]:
        _assert_same(events, tmp_path, kind, key)


def test_log_is_not_part_of_the_run():
    """Switching TensorBoard on or off neither changes the run nor makes its folder "a different run"."""
    assert CONFIG.differences(CONFIG.replace(log="jsonl")) == {}
    assert set(CONFIG.differences(CONFIG.replace(log="jsonl", lr=0.2))) == {"lr"}


def test_sweep_trial_sends_its_event_files_back(tmp_path):
    [result] = run_sweep([Trial(CONFIG, tmp_path / "t")], workers=1, progress=False)
    assert result.status == "done" and not (tmp_path / "t" / ".partial").exists()
    _assert_same(_events(tmp_path / "t"), tmp_path / "t", "epoch", "train_loss")


def test_missing_tensorboard_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    code = main(["train", "--train-size", "100", "--widths", "8", "--epochs", "1", "--log", "tensorboard",
                 "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'geomopt[tensorboard]'" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
