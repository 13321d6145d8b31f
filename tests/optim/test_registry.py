"""Optimizers by name: each name builds what it says, with the documented momentum defaults."""

import pytest
import torch

from geomopt.nn import MLP
from geomopt.optim import OPTIMIZERS, PathSGD, build_optimizer


def test_names_build_the_documented_optimizers():
    model = MLP((4,), (3,), 2)
    built = {name: build_optimizer(name, model, lr=0.1) for name in OPTIMIZERS if name != "path-sgd-k12-first-step"}
    assert type(built["sgd"]) is torch.optim.SGD and built["sgd"].defaults["momentum"] == 0
    assert type(built["momentum"]) is torch.optim.SGD and built["momentum"].defaults["momentum"] == 0.9
    assert type(built["adam"]) is torch.optim.Adam
    assert type(built["adagrad"]) is torch.optim.Adagrad
    assert type(built["path-sgd"]) is PathSGD and built["path-sgd"].defaults["momentum"] == 0
    assert build_optimizer("path-sgd", model, lr=0.1, momentum=0.5).defaults["momentum"] == 0.5
    assert built["path-sgd-first-step"].normalize == "first-step" and built["path-sgd"].normalize is None
    from geomopt.nn import ReLURNN
    k12 = build_optimizer("path-sgd-k12-first-step", ReLURNN(2, 4, 1, seq_len=5), lr=0.1)
    assert k12.normalize == "first-step" and k12.scales.include_kappa2


def test_bad_names_and_options():
    model = MLP((4,), (3,), 2)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer("rmsprop", model, lr=0.1)
    with pytest.raises(ValueError, match="adam.*no momentum"):
        build_optimizer("adam", model, lr=0.1, momentum=0.9)


@pytest.mark.parametrize("name", ["muon", "shampoo", "soap"])
def test_train_runs_the_new_optimizers_on_a_cnn(name, tmp_path):
    """`geomopt train --optimizer muon|shampoo|soap` on a CNN (conv weights as matrices, biases by the
    fallback): two epochs on 300 digits lower the training loss."""
    from geomopt.train import TrainConfig, read_metrics, train
    lr = {"muon": 0.05, "shampoo": 0.02, "soap": 0.02}[name]
    config = TrainConfig(model="cnn", widths=(4,), data="digits", train_size=300, optimizer=name, lr=lr, epochs=2,
                         batch_size=50)
    train(config, tmp_path)
    losses = [r["train_loss"] for r in read_metrics(tmp_path) if r.get("kind") == "epoch"]
    assert losses[-1] < 0.8 * losses[0]
