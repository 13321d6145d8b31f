"""The training engine with ``--device cuda`` for every optimizer of the registry, against the same run on
the CPU (float32, TF32 off).

Reference: ``geomopt train`` on the CPU with the same config (data order, init and seeds are device
independent). Four steps of float32 training on the two devices differ by rounding only: losses to
1e-4 relative, accuracies to one example in a hundred.
"""

from __future__ import annotations

import json
import math

import pytest

from geomopt.cli import main
from geomopt.optim.registry import OPTIMIZERS
from geomopt.train import TrainConfig, train

pytestmark = pytest.mark.cuda

_RECURRENT = {"path-sgd-k12-first-step": "relu-rnn"}  # kappa1 + kappa2 are the ReLU RNN's scales


def _same_summary(got: dict, reference: dict, rel: float = 1e-4) -> None:
    assert got["steps"] == reference["steps"]
    for key in ("train_loss", "test_loss"):
        assert math.isclose(got[key], reference[key], rel_tol=rel), (key, got[key], reference[key])
    for key in ("train_acc", "test_acc"):
        assert abs(got[key] - reference[key]) <= 0.01, (key, got[key], reference[key])


def _pair(tmp_path, cuda_device, **fields) -> tuple[dict, dict]:
    config = TrainConfig(train_size=200, epochs=1, batch_size=50, **fields)
    return (train(config.replace(device=str(cuda_device)), tmp_path / "cuda", progress=False),
            train(config, tmp_path / "cpu", progress=False))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains_on_cuda_as_on_cpu(tmp_path, cuda_device, optimizer):
    model = _RECURRENT.get(optimizer, "mlp")
    fields = dict(model=model, widths=(16,), optimizer=optimizer, lr=0.05, data="rows-digits" if model != "mlp" else
                  "digits")
    if optimizer in ("kfac", "ekfac"):
        fields.update(update_freq=1, inv_freq=2)
    _same_summary(*_pair(tmp_path, cuda_device, **fields))


@pytest.mark.parametrize("model, optimizer, data", [("cnn", "kfac", "digits"), ("cnn", "path-sgd", "digits"),
                                                    ("bnlstm", "adam", "rows-digits"), ("lstm", "sgd", "rows-digits")])
def test_conv_and_recurrent_models_train_on_cuda_as_on_cpu(tmp_path, cuda_device, model, optimizer, data):
    widths = (4, 8) if model == "cnn" else (16,)
    _same_summary(*_pair(tmp_path, cuda_device, model=model, widths=widths, optimizer=optimizer, lr=0.05, data=data))


def test_cli_device_cuda(tmp_path, cuda_device):
    flags = ["--data", "digits", "--train-size", "200", "--widths", "16", "--optimizer", "path-sgd", "--epochs", "1",
             "--batch-size", "50", "--no-progress"]
    assert main(["train", *flags, "--device", str(cuda_device), "--out", str(tmp_path / "cuda")]) == 0
    assert main(["train", *flags, "--out", str(tmp_path / "cpu")]) == 0
    got, reference = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cuda", "cpu"))
    _same_summary(got, reference)
    assert json.loads((tmp_path / "cuda" / "config.json").read_text())["device"] == str(cuda_device)
