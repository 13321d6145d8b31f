"""K-FAC/EKFAC and copies of the model: deepcopy (EMA, teacher, best model), pickle, torch.save, state_dict.

The optimizer's hooks must survive the copy (the copy runs, with and without gradients), the copy must carry
no live hook into the original optimizer (the original's next update is bit-identical whether or not the
copy was used), and a model with every supported layer frozen has nothing to train.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomopt.optim import EKFAC, KFAC

CLASSES = [KFAC, EKFAC]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 5, generator=g), torch.randint(0, 3, (12,), generator=g)


def pickled(model: nn.Module) -> nn.Module:
    return pickle.loads(pickle.dumps(model))


def saved(model: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def ema_update(ema: nn.Module, model: nn.Module, decay: float = 0.9) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.mul_(decay).add_(p, alpha=1 - decay)


def layer_by_layer(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for layer in model:
        x = layer(x)
    return x


def train_steps(cls, use_copy, steps: int = 3, fisher: str = "empirical") -> torch.Tensor:
    """Parameters after ``steps`` steps; ``use_copy`` (a function of the model and the copy and data) runs
    between each forward/backward of the model and its step."""
    model = net()
    opt = cls(model, update_freq=1, inv_freq=1, fisher=fisher)
    copied = copy.deepcopy(model)
    for k in range(steps):
        x, y = data(k)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if use_copy is not None:
            use_copy(model, copied, x, y)
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def teacher_and_ema(model, copied, x, y) -> None:
    """Everything a user may do with a copy: a teacher's forward with and without gradients, its layers
    one by one, a backward through it, an EMA update."""
    with torch.no_grad():
        copied(x)
    loss = F.cross_entropy(layer_by_layer(copied, x), y) + F.cross_entropy(copied(x * 2), y)
    loss.backward()
    ema_update(copied, model)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_a_used_copy_leaves_the_original_update_bit_identical(cls, fisher):
    assert torch.equal(train_steps(cls, None, fisher=fisher), train_steps(cls, teacher_and_ema, fisher=fisher))


@pytest.mark.parametrize("cls", CLASSES)
def test_a_shallow_copied_layer_shares_the_hook_but_is_not_recorded(cls):
    def shallow(model, copied, x, y):
        twin = copy.copy(model[0])  # shares model[0]'s hook dict and parameters: autograd.grad leaves .grad alone
        torch.autograd.grad(twin(x * 3).square().sum(), twin.weight)
    assert torch.equal(train_steps(cls, None), train_steps(cls, shallow))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("make_copy", [copy.deepcopy, pickled, saved], ids=["deepcopy", "pickle", "torch.save"])
def test_copies_run_and_carry_only_inert_hooks(cls, make_copy):
    model = net()
    keys = list(model.state_dict())
    opt = cls(model)
    x, y = data()
    F.cross_entropy(model(x), y).backward()  # records are pending in the optimizer while it is copied
    twin = make_copy(model)
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))
    F.cross_entropy(twin(x), y).backward()
    assert all(p.grad is not None for p in twin.parameters())
    from geomopt.curvature.capture import InertHook
    hooks = [h for m in twin.modules() for d in (m._forward_hooks, m._forward_pre_hooks) for h in d.values()]
    assert hooks and all(isinstance(h, InertHook) for h in hooks)
    assert list(model.state_dict()) == keys and list(twin.state_dict()) == keys
    opt.step()  # the original still works


@pytest.mark.parametrize("cls", CLASSES)
def test_best_model_copy_restored_by_state_dict(cls):
    model = net()
    opt = cls(model, update_freq=1, inv_freq=1)
    best = copy.deepcopy(model)
    x, y = data()
    opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    model.load_state_dict(best.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), best.parameters()))
    opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()  # still recording the original


@pytest.mark.parametrize("cls", CLASSES)
def test_a_dropped_optimizer_stops_recording_and_frees_its_hooks(cls):
    model = net()
    opt = cls(model)
    del opt  # the hooks hold it weakly: it is freed now, and removes its hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("cls", CLASSES)
def test_nothing_trainable_is_an_error(cls):
    model = net()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train.*frozen.*0, 2"):
        cls(model)
    single = nn.Linear(3, 2)
    single.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        cls(single)
    partly = net()
    partly[0].requires_grad_(False)
    cls(partly)  # one trainable layer: fine
