"""The engine on sequence tasks: MSE for the adding problem, per-step cross-entropy (bits) for
character LMs, PathSGD on a ReLU RNN built from a TrainConfig, and the CLI flag --seq-len.

References: the loss functions against their definitions (F.mse_loss; F.cross_entropy over the
flattened steps; accuracy counted by hand); a trivial predictor's recorded loss against a direct
evaluation.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from geomopt.cli import main
from geomopt.train import TrainConfig, train
from geomopt.train.tasks import sequence_accuracy, sequence_cross_entropy, task_objective


def test_task_objectives():
    out, y = torch.randn(3, 5, 4), torch.randint(0, 4, (3, 5))
    ce = sum(F.cross_entropy(out[i, t:t + 1], y[i, t:t + 1]) for i in range(3) for t in range(5)) / 15
    torch.testing.assert_close(sequence_cross_entropy(out, y), ce)
    correct = sum(float((out[i].argmax(-1) == y[i]).float().mean()) for i in range(3))
    assert math.isclose(float(sequence_accuracy(out, y)), correct, rel_tol=1e-6)
    loss, metric = task_objective("regression")
    assert metric is None
    torch.testing.assert_close(loss(torch.ones(4, 1), torch.zeros(4, 1)), torch.tensor(1.0))
    with pytest.raises(ValueError, match="output shape"):
        loss(torch.ones(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="many-to-many"):
        sequence_cross_entropy(torch.randn(3, 4), y)
    with pytest.raises(ValueError, match="unknown task"):
        task_objective("ranking")


def test_train_relu_rnn_path_sgd_on_adding(tmp_path):
    cfg = TrainConfig(model="relu-rnn", widths=(8,), data="adding", seq_len=12, train_size=64, optimizer="path-sgd",
                      lr=1e-4, epochs=2, batch_size=16, max_grad_norm=1.0)
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 8 and math.isfinite(summary["test_loss"]) and math.isnan(summary["test_acc"])
    stored = TrainConfig.load(tmp_path / "run" / "config.json")
    assert stored.seq_len == 12 and stored == cfg


def test_train_lstm_on_chars_reports_bits(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcabcabd " * 60)
    cfg = TrainConfig(model="lstm", widths=(8,), data="chars", data_dir=str(text), seq_len=10, optimizer="adam",
                      lr=0.01, epochs=1, batch_size=8)
    summary = train(cfg, tmp_path / "lm", progress=False)
    assert math.isclose(summary["test_bits"], summary["test_loss"] / math.log(2))
    assert "val_loss" in summary and 0.0 <= summary["test_acc"] <= 1.0


def test_path_sgd_on_lstm_is_a_clear_error(tmp_path):
    cfg = TrainConfig(model="lstm", widths=(4,), data="adding", seq_len=5, train_size=16, optimizer="path-sgd",
                      epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="not a ReLU RNN"):
        train(cfg, tmp_path / "x", progress=False)


def test_cli_train_relu_rnn_seq_len(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--model", "relu-rnn", "--widths", "8", "--data", "adding", "--seq-len", "10",
                 "--train-size", "32", "--optimizer", "path-sgd", "--lr", "1e-4", "--epochs", "1",
                 "--batch-size", "16", "--out", str(out), "--no-progress"])
    assert code == 0
    assert json.loads((out / "config.json").read_text())["seq_len"] == 10
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["test_loss"])
    assert "test  loss" in capsys.readouterr().out
