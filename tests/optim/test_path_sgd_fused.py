"""PathSGD's fused pass (update + next step's scales in one read of each weight), against the plain
reference: scales recomputed from the current weights at every step by the dense formula."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from geomopt.geometry import PathScales, path_scales
from geomopt.nn import MLP
from geomopt.optim import PathSGD

# hidden 600 x 520 and 520 x 510 weights exceed one cache block (2^18 elements): the blocked, fused path
LARGE = (600, 520, 510)


def _model(seed=1, hidden=LARGE):
    return MLP((7,), hidden, 3, seed=seed).double()


def _loss(model, step):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(6, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    return nn.functional.cross_entropy(model(x), y)


def _groups(model, lrs):
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [{"params": list(layer.parameters()), "lr": lr} for layer, lr in zip(layers, lrs)]


def _reference_step(model, step, bufs, lrs, momentum, weight_decay):
    """w -= lr * buf, buf = m buf + (g + wd w) / gamma(w), gamma from the current weights (dense)."""
    gamma = path_scales(model)
    model.zero_grad()
    _loss(model, step).backward()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    lr_of = {id(p): lr for layer, lr in zip(layers, lrs) for p in layer.parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            d = (p.grad + weight_decay * p) / gamma[n]
            bufs[n] = momentum * bufs[n] + d if n in bufs and momentum else d
            p -= lr_of[id(p)] * bufs[n]


def _step(model, opt, step):
    opt.zero_grad()
    _loss(model, step).backward()
    opt.step()


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.0, 0.01), (0.9, 0.0), (0.5, 0.01)])
def test_fused_steps_equal_reference_with_groups_momentum_and_decay(momentum, weight_decay):
    lrs = [0.05, 0.02, 0.1, 0.03]
    model, ref = _model(), _model()
    opt = PathSGD(model, lr=0.1, momentum=momentum, weight_decay=weight_decay,
                  param_groups=_groups(model, lrs))
    assert opt.scales.factored
    bufs = {}
    for step in range(4):
        _reference_step(ref, step, bufs, lrs, momentum, weight_decay)
        _step(model, opt, step)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-13, msg=n)


def test_each_weight_is_read_once_per_step_in_steady_state(monkeypatch):
    """A 3-layer chain: one contraction read per weight and step, and a large weight's update runs
    inside that read (its row-block visitor), not in a pass of its own."""
    from geomopt.geometry.path_norm import BLOCK_ELEMENTS
    model = _model(hidden=(600, 520))
    opt = PathSGD(model, lr=0.01)
    reads = []
    original = PathScales._contract

    def counting(self, weight, vin, vout, visit=None):
        reads.append((tuple(weight.shape), visit is not None))
        return original(self, weight, vin, vout, visit)

    monkeypatch.setattr(PathScales, "_contract", counting)
    _step(model, opt, 0)            # first step: the current scales, then the fused pass
    reads.clear()
    for step in range(1, 3):
        _step(model, opt, step)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    expected = [(tuple(w.shape), w.numel() > BLOCK_ELEMENTS) for w in weights] * 2
    assert any(fused for _, fused in expected)
    assert sorted(reads) == sorted(expected)


def test_scales_are_recomputed_when_the_user_changes_a_weight_between_steps():
    changes = [
        lambda m: m[1].weight.mul_(1.5),                                    # in-place under no_grad
        lambda m: m[3].weight.copy_(torch.linspace(-1, 1, m[3].weight.numel(), dtype=torch.float64).view_as(m[3].weight)),
        lambda m: m.load_state_dict({k: v * 0.9 for k, v in m.state_dict().items()}),
        lambda m: setattr(m[5].weight, "data", m[5].weight.data * 2.0),    # a new tensor through .data
    ]
    for change in changes:
        model, ref = _model(hidden=(600, 520)), _model(hidden=(600, 520))
        opt = PathSGD(model, lr=0.05, momentum=0.9)
        bufs = {}
        lrs = [0.05] * 3
        for step in range(3):
            if step == 2:
                with torch.no_grad():
                    change(model)
                    change(ref)
            _reference_step(ref, step, bufs, lrs, 0.9, 0.0)
            _step(model, opt, step)
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-13, msg=n)


def test_change_through_data_needs_invalidate_scales():
    """torch does not version in-place changes through ``.data``: invalidate_scales() is the way."""
    model, ref = _model(hidden=(600, 520)), _model(hidden=(600, 520))
    opt = PathSGD(model, lr=0.05)
    bufs = {}
    for step in range(3):
        if step == 2:
            model[1].weight.data.mul_(2.0)
            ref[1].weight.data.mul_(2.0)
            opt.invalidate_scales()
        _reference_step(ref, step, bufs, [0.05] * 3, 0.0, 0.0)
        _step(model, opt, step)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-13, msg=n)


def test_checkpoint_between_steps_resumes_identically():
    a = _model(hidden=(600, 520))
    opt_a = PathSGD(a, lr=0.05, momentum=0.9)
    for step in range(2):
        _step(a, opt_a, step)
    buffer = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    b = _model(seed=5, hidden=(600, 520))
    b.load_state_dict(saved["model"])
    opt_b = PathSGD(b, lr=0.5)
    opt_b.load_state_dict(saved["opt"])
    for step in range(2, 4):
        _step(a, opt_a, step)
        _step(b, opt_b, step)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


def test_visitors_are_refused_for_unfactored_scales():
    model = _model(hidden=(4,))
    with pytest.raises(ValueError, match="factored"):
        PathScales(model, factored=False).compute({"1.weight": lambda r0, r1, scratch: None})


def test_one_layer_chain_visits_every_row_block():
    model = nn.Sequential(nn.Linear(600, 520)).double()
    visited = []
    PathScales(model).compute({"0.weight": lambda r0, r1, scratch: visited.append((r0, r1))})
    assert visited[0][0] == 0 and visited[-1][1] == 520
    assert all(a[1] == b[0] for a, b in zip(visited, visited[1:]))


def test_visitors_may_overwrite_the_scratch_block():
    """The scratch handed to a visitor has the block's shape and is reused by the pass after the visit:
    filling it with NaN changes neither the visited rows nor the scales (dense float64 reference)."""
    model = _model(hidden=(600, 520))
    expected = path_scales(model)
    shapes = []

    def visit(r0, r1, scratch):
        shapes.append(tuple(scratch.shape))
        scratch.fill_(float("nan"))

    scales = PathScales(model).compute({"3.weight": visit})
    assert shapes and all(shape == (shape[0], 600) for shape in shapes)
    assert sum(shape[0] for shape in shapes) == 520
    for name, gamma in scales.items():
        dense = gamma.to_dense() if hasattr(gamma, "to_dense") else gamma
        torch.testing.assert_close(dense, expected[name], rtol=1e-12, atol=0, msg=name)
