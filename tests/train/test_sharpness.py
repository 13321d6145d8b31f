"""--track-sharpness: the logged top Hessian eigenvalue equals the dense Hessian's at the logged steps
(recomputed from the checkpointed model), and a resumed run logs the same values."""

from __future__ import annotations

import pytest
import torch

from geomopt.curvature import HessianOperator, read_batches
from geomopt.data import load_dataset, make_loader
from geomopt.runs import load_run
from geomopt.train import TrainConfig, read_metrics, train
from geomopt.train.callbacks import SharpnessTracker

SMALL = dict(widths=(4,), epochs=2, batch_size=60, lr=0.05, train_size=120, track_sharpness=2,
             sharpness_examples=100)


def _sharpness(records):
    return [(r["step"], r["sharpness"]) for r in records if r["kind"] == "callback"]


def test_logged_sharpness_is_the_dense_top_eigenvalue_and_resume_is_exact(tmp_path):
    cfg = TrainConfig(**SMALL)
    train(cfg, tmp_path / "full", progress=False)
    logged = _sharpness(read_metrics(tmp_path / "full"))
    assert [s for s, _ in logged] == [0, 2, 4]  # 2 steps per epoch, 2 epochs
    _, model, _, bundle = load_run(tmp_path / "full")  # the final model: step 4
    batches = read_batches(make_loader(bundle.train, 1000, shuffle=False), None, 100)
    dense = HessianOperator(model, batches).to_dense()
    top = float(torch.linalg.eigvalsh(dense.double())[-1])
    assert logged[-1][1] == pytest.approx(top, rel=2e-3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg.replace(checkpoint_every=1), tmp_path / "cut", progress=False, stop_after_steps=3)
    train(cfg.replace(checkpoint_every=1), tmp_path / "cut", resume=True, progress=False)
    resumed = _sharpness(read_metrics(tmp_path / "cut"))
    assert [s for s, _ in resumed] == [s for s, _ in logged]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in logged], rel=1e-9)


def test_tracker_validates_every():
    bundle = load_dataset("digits", seed=0, train_size=50)
    with pytest.raises(ValueError, match="every must be >= 1"):
        SharpnessTracker(0, read_batches(make_loader(bundle.train, 50, shuffle=False)))


@pytest.mark.parametrize("optimizer", ["momentum", "kfac"])
def test_tracking_does_not_change_training(tmp_path, optimizer):
    """The tracker's extra forward/backward passes (eval mode, own generator) leave the run bit for bit
    unchanged, also with K-FAC's hooks on the layers and with dropout."""
    cfg = TrainConfig(**{**SMALL, "epochs": 1, "dropout": 0.2}, optimizer=optimizer)
    tracked = train(cfg, tmp_path / "tracked", progress=False)
    plain = train(cfg.replace(track_sharpness=0), tmp_path / "plain", progress=False)
    steps = [[r["loss"] for r in read_metrics(tmp_path / d) if r["kind"] == "step"] for d in ("tracked", "plain")]
    assert steps[0] == steps[1] and tracked["test_loss"] == plain["test_loss"]
