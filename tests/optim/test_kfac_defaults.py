"""KFAC(model) / EKFAC(model) with every option at its default train: a digits MLP and a small CNN, a
few epochs of plain minibatch training, stay finite and bring the full training loss well below its
value before training (the reference). The old defaults (damping 1e-3, no KL clip) blew the loss up
here (issue 16, item 4); one source of defaults: the command line builds the same optimizer."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from geomopt.data.digits import load_digits
from geomopt.nn import CNN, MLP
from geomopt.optim import EKFAC, KFAC, build_optimizer
from geomopt.optim.kfac import DEFAULT_DAMPING, DEFAULT_KL_CLIP, DEFAULT_LR, DEFAULT_MOMENTUM
from geomopt.train.config import TrainConfig, same_config

EPOCHS, BATCH, EXAMPLES = 3, 64, 640


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(seed=0).train.tensors
    return x[:EXAMPLES], y[:EXAMPLES]


def full_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_default_constructed_optimizer_trains(digits, cls, arch):
    x, y = digits
    model = MLP((1, 8, 8), (64,), 10, seed=0) if arch == "mlp" else CNN((1, 8, 8), (8, 16), 10, seed=0)
    opt = cls(model)
    before = full_loss(model, x, y)
    g = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x), generator=g).split(BATCH):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
    after = full_loss(model, x, y)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert after < 0.3 * before, (before, after)


def test_one_source_of_defaults():
    """The class's signature, the config's defaults and the registry's optimizer agree."""
    model = MLP((1, 8, 8), (4,), 10, seed=0)
    for cls in (KFAC, EKFAC):
        opt = cls(model)
        group = opt.param_groups[0]
        assert (group["lr"], group["damping"], group["momentum"], opt.kl_clip) == (
            DEFAULT_LR, DEFAULT_DAMPING, DEFAULT_MOMENTUM, DEFAULT_KL_CLIP)
        assert cls(model, adaptive_damping=True, adaptive_step=True).kl_clip is None  # "auto": off
        opt.remove_hooks()
    config = TrainConfig(optimizer="ekfac")
    built = build_optimizer("ekfac", model, lr=config.lr, damping=config.damping, kl_clip=config.kl_clip)
    assert (config.lr, built.param_groups[0]["damping"], built.param_groups[0]["momentum"], built.kl_clip) == (
        DEFAULT_LR, DEFAULT_DAMPING, DEFAULT_MOMENTUM, DEFAULT_KL_CLIP)
    with pytest.raises(ValueError, match="kl_clip"):
        KFAC(model, kl_clip="yes")


def test_runs_stored_before_the_new_defaults_still_match(tmp_path):
    """A config.json written before (damping 1e-3 and no KL clip stored for every run; the command line's
    0.03 / 0.001 stored for K-FAC runs) still holds the same run: the Kronecker options count only for
    kfac/ekfac, and kl_clip "auto" is the value it stands for."""
    stored = tmp_path / "config.json"
    stored.write_text(json.dumps(TrainConfig(optimizer="momentum", damping=1e-3, kl_clip=None).to_dict()))
    assert same_config(stored, TrainConfig(optimizer="momentum"))
    stored.write_text(json.dumps(TrainConfig(optimizer="kfac", damping=0.03, kl_clip=0.001).to_dict()))
    assert same_config(stored, TrainConfig(optimizer="kfac"))
    assert not same_config(stored, TrainConfig(optimizer="kfac", damping=1e-3))  # real differences
    assert not same_config(stored, TrainConfig(optimizer="kfac", kl_clip=None))
    assert TrainConfig(optimizer="kfac", damping=0.03).differences(TrainConfig(optimizer="kfac", damping=0.1)) == {
        "damping": (0.03, 0.1)}
