"""The training engine: metrics, atomic checkpoints, exact resume, NaN detection.

References: an uninterrupted run (resume must reproduce it bit for bit), a hand-computed
accuracy, a checkpoint file that must stay byte-identical across a failed run.
"""

from __future__ import annotations

import json

import pytest
import torch

from geomopt.train import NonFiniteLossError, TrainConfig, accuracy, evaluate, fit, read_metrics, train
from geomopt.train.checkpoint import load_checkpoint, save_checkpoint

SMALL = dict(widths=(16,), epochs=3, batch_size=64, lr=0.05, train_size=400)


def _numbers(records):
    """Metrics without wall-clock fields."""
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "path-sgd"])
def test_resume_after_interrupt_gives_identical_metrics(tmp_path, optimizer):
    cfg = TrainConfig(optimizer=optimizer, dropout=0.2, schedule="cosine", checkpoint_every=4, **SMALL)
    full = train(cfg, tmp_path / "full", progress=False)
    # interrupted mid-epoch (after step 10: last checkpoint at step 8), then resumed
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False, stop_after_steps=10)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 8
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert _numbers(read_metrics(tmp_path / "full")) == _numbers(read_metrics(tmp_path / "cut"))
    for key in ("train_loss", "test_loss", "train_acc", "test_acc", "steps"):
        assert full[key] == resumed[key]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_metrics_and_outputs(tmp_path):
    cfg = TrainConfig(**SMALL)
    summary = train(cfg, tmp_path, progress=False)
    records = read_metrics(tmp_path)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    assert len(steps) == 3 * 7  # 400 examples / 64 per batch -> 7 batches per epoch
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert TrainConfig.load(tmp_path / "config.json") == cfg
    assert json.loads((tmp_path / "summary.json").read_text())["test_acc"] == summary["test_acc"]


def test_resume_with_different_config_is_refused(tmp_path):
    cfg = TrainConfig(**SMALL)
    train(cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(cfg.replace(lr=0.1), tmp_path, resume=True, progress=False)


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(**SMALL)
    with pytest.raises(NonFiniteLossError, match="step 2 .*no checkpoint had been written"):
        train(cfg.replace(epochs=1, lr=1e30), tmp_path / "boom", progress=False)

    # a run that hits a NaN batch in its second epoch keeps the epoch-1 checkpoint byte for byte
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    good = [(torch.randn(5, 3), torch.randint(0, 2, (5,))) for _ in range(3)]
    fit(model, opt, good, good, epochs=1, out_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    bad = good[:1] + [(torch.full((5, 3), float("nan")), torch.zeros(5, dtype=torch.long))]
    with pytest.raises(NonFiniteLossError, match=r"nan at step 5 \(epoch 2\).*last good checkpoint"):
        fit(model, opt, bad, good, epochs=2, out_dir=tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert max(r["step"] for r in read_metrics(tmp_path)) == 4


def test_atomic_checkpoint_survives_failed_write(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"x": torch.arange(3)})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"x": Boom()})
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_evaluate_matches_hand_computation():
    model = torch.nn.Linear(3, 2)
    x = torch.randn(10, 3)
    y = torch.randint(0, 2, (10,))
    loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    loss, acc = evaluate(model, loader, torch.nn.functional.cross_entropy)
    with torch.no_grad():
        out = model(x)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(out, y).item(), rel=1e-6)
    assert acc == pytest.approx((out.argmax(1) == y).float().mean().item())
    assert int(accuracy(out, y)) == int((out.argmax(1) == y).sum())


def test_unknown_config_key_named():
    with pytest.raises(ValueError, match="optimiser"):
        TrainConfig.from_dict({"optimiser": "sgd"})


def test_validation_split_is_evaluated_every_epoch(tmp_path):
    """Reference: the final model re-evaluated on the carved splits, rebuilt from load_dataset."""
    from geomopt.data import load_dataset, make_loader
    from geomopt.nn import build_model
    cfg = TrainConfig(val_fraction=0.25, **SMALL)
    summary = train(cfg, tmp_path, progress=False)
    epochs = [r for r in read_metrics(tmp_path) if r["kind"] == "epoch"]
    assert len(epochs) == SMALL["epochs"] + 1 and all("val_loss" in r and "val_acc" in r for r in epochs)
    bundle = load_dataset("digits", seed=0, train_size=400, val_fraction=0.25)
    assert (len(bundle.train), len(bundle.valid)) == (300, 100)
    model = build_model("mlp", bundle.input_shape, bundle.num_classes, widths=SMALL["widths"])
    model.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["model"])
    loss_fn = torch.nn.functional.cross_entropy
    for split, ds in (("val", bundle.valid), ("train", bundle.train)):
        loss, acc = evaluate(model, make_loader(ds, 1000, shuffle=False), loss_fn)
        assert summary[f"{split}_loss"] == pytest.approx(loss, rel=1e-6) and summary[f"{split}_acc"] == acc
    assert "val_loss" not in train(TrainConfig(**SMALL), tmp_path / "none", progress=False)
