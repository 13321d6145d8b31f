"""PathSGD's fused pass (update + next step's scales in one read of each weight), against the plain
reference: scales recomputed from the current weights at every step by the dense formula."""

from __future__ import annotations

import io
import os

import pytest
import torch
from torch import nn

from geomopt import native
from geomopt.geometry import PathScales, path_scales
from geomopt.nn import MLP
from geomopt.optim import PathSGD, _path_sgd_kernels
from geomopt.optim.path_sgd import _RowBlockUpdate

# hidden 600 x 520 and 520 x 510 weights exceed one cache block (2^18 elements): the blocked, fused path
LARGE = (600, 520, 510)
HAS_KERNEL = _path_sgd_kernels.load(torch.float64) is not None


@pytest.fixture(params=["kernel", "eager"])
def update_path(request, monkeypatch):
    """Run a test through the C kernel (where a compiler exists; else it is the eager path twice) and
    through the eager row-block pass; "kernel" also checks that the kernel ran."""
    calls = []
    if request.param == "eager":
        monkeypatch.setattr(_path_sgd_kernels, "load", lambda dtype: None)
    else:
        original = _path_sgd_kernels.update_contract
        monkeypatch.setattr(_path_sgd_kernels, "update_contract", lambda *a, **k: calls.append(1) or original(*a, **k))
    yield request.param
    assert bool(calls) == (request.param == "kernel" and HAS_KERNEL)


def _model(seed=1, hidden=LARGE):
    return MLP((7,), hidden, 3, seed=seed).double()


def _loss(model, step, dtype=torch.float64):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(6, 7, generator=g, dtype=torch.float64).to(dtype)
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


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_step_is_an_in_place_write_that_autograd_sees(momentum, update_path):
    """Both paths write the weights (and the momentum buffer) in place as torch ops do: a graph that saved
    a weight before the step refuses its backward afterwards instead of using the new values silently."""
    torch.manual_seed(0)
    model = _model()
    opt = PathSGD(model, lr=0.1, momentum=momentum)
    _step(model, opt, 0)
    _step(model, opt, 1)  # steady state: the update runs in the scales' pass (the kernel where compiled)
    big = max(model.parameters(), key=lambda p: p.numel())
    before = big._version
    stale = _loss(model, 2)  # saves the weights for its backward
    _loss(model, 3).backward()
    opt.step()
    assert big._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stale.backward()


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.0, 0.01), (0.9, 0.0), (0.5, 0.01)])
def test_fused_steps_equal_reference_with_groups_momentum_and_decay(momentum, weight_decay, update_path):
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


def test_scales_are_recomputed_when_the_user_changes_a_weight_between_steps(update_path):
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


def test_checkpoint_between_steps_resumes_identically(update_path):
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


def _eager_update_contract(weight, grad, buf, scale, vin, vout, **options):
    """The eager row-block pass (:class:`_RowBlockUpdate` through ``PathScales._contract``'s blocks) and the
    dense contractions of the updated weight: the kernel's reference."""
    update = _RowBlockUpdate(weight, grad, scale, buf, **options)
    from geomopt.geometry.path_norm import visit_rows
    visit_rows(weight, update)
    squares = weight * weight
    return update.buf, (squares @ vin if vin is not None else None), (squares.t() @ vout if vout is not None else None)


@pytest.mark.skipif(not HAS_KERNEL, reason="no C compiler here: PathSGD runs the eager pass (tested above)")
@pytest.mark.parametrize("momentum,weight_decay,first", [(0.0, 0.0, False), (0.0, 0.1, False), (0.9, 0.0, True),
                                                         (0.9, 0.1, False)])
@pytest.mark.parametrize("sides", ["fwd", "bwd", "both"])
def test_kernel_equals_eager_pass_and_chunks_equal_one_chunk(momentum, weight_decay, first, sides):
    """The C kernel's update, momentum buffer and contractions (float64) equal the eager row-block pass
    followed by dense contractions, for 1 and 3 row chunks (OpenMP threads, each its own bwd; w and buf bitwise)."""
    from geomopt.geometry.path_norm import RankOneScale
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(70, 9, generator=g, dtype=torch.float64)
    grad = torch.randn(70, 9, generator=g, dtype=torch.float64)
    buf = None if momentum == 0 or first else torch.randn(70, 9, generator=g, dtype=torch.float64)
    scale = RankOneScale(torch.rand(70, generator=g, dtype=torch.float64) + 0.5,
                         torch.rand(9, generator=g, dtype=torch.float64) + 0.5)
    vin = torch.rand(9, generator=g, dtype=torch.float64) if sides != "bwd" else None
    vout = torch.rand(70, generator=g, dtype=torch.float64) if sides != "fwd" else None
    options = dict(lr=0.3, momentum=momentum, weight_decay=weight_decay, eps=1e-12)
    w_ref = weight.clone()
    buf_ref, fwd_ref, bwd_ref = _eager_update_contract(w_ref, grad, None if buf is None else buf.clone(), scale,
                                                       vin, vout, **options)
    kernel = _path_sgd_kernels.load(torch.float64)
    results = []
    for chunks in (1, 3):
        w = weight.clone()
        update = _RowBlockUpdate(w, grad, scale, None if buf is None else buf.clone(), **options)
        assert update.first == first
        fwd, bwd = _path_sgd_kernels.update_contract(
            kernel, w, grad, update.buf if momentum else None, update.inv_rows, update.inv_cols, lr=0.3,
            momentum=momentum, weight_decay=weight_decay, first=first, vin=vin, vout=vout, chunks=chunks)
        torch.testing.assert_close(w, w_ref, rtol=1e-14, atol=1e-15)
        if momentum:
            torch.testing.assert_close(update.buf, buf_ref, rtol=1e-14, atol=1e-15)
        for got, want in ((fwd, fwd_ref), (bwd, bwd_ref)):
            assert (got is None) == (want is None)
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
        results.append((w, update.buf))
    assert torch.equal(results[0][0], results[1][0])
    if momentum:
        assert torch.equal(results[0][1], results[1][1])


@pytest.mark.skipif(not HAS_KERNEL, reason="no C compiler here: PathSGD runs the eager pass (tested above)")
def test_kernel_in_float32_and_threads_match_float64(monkeypatch):
    """float32 steps through the kernel with 2 torch threads (row chunks in OpenMP threads) stay within
    float32 rounding of the float64 run; a non-contiguous gradient (step 2) takes the eager pass."""
    calls = []
    original = _path_sgd_kernels.update_contract
    monkeypatch.setattr(_path_sgd_kernels, "update_contract",
                        lambda k, w, *a, **o: calls.append((w.dtype, w.shape)) or original(k, w, *a, **o))
    model = _model(hidden=(600, 520))
    single = _model(hidden=(600, 520)).float()
    opt64 = PathSGD(model, lr=0.05, momentum=0.9)
    opt32 = PathSGD(single, lr=0.05, momentum=0.9)
    torch.set_num_threads(2)  # restored by the conftest fixture
    for step in range(3):
        _step(model, opt64, step)
        single.zero_grad()
        _loss(single, step, torch.float32).backward()
        if step == 2:
            single[3].weight.grad = single[3].weight.grad.t().contiguous().t()
        calls.clear()
        opt32.step()
        assert calls == ([(torch.float32, (520, 600))] if step < 2 else [])
    for (n, p), q in zip(model.named_parameters(), single.parameters()):
        torch.testing.assert_close(q.double(), p.detach(), rtol=0, atol=2e-5 * float(p.detach().abs().max()), msg=n)


@pytest.mark.skipif(not HAS_KERNEL or not os.path.exists("/proc/self/maps"), reason="no kernel, or not Linux")
def test_kernel_runs_in_torchs_openmp_runtime():
    """The kernel's OpenMP binds to the libgomp torch has loaded (by its soname, libgomp.so.1): no second
    copy of that runtime in the process, which would run a pool of its own beside torch's. (Wheels that
    vendor a renamed copy, as scikit-learn's libgomp-<hash>.so, are not what the kernel links.)"""
    assert torch.backends.openmp.is_available()
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if os.path.basename(line.split()[-1]).startswith("libgomp.so")}
    assert len(runtimes) == 1, runtimes


def test_no_compiler_falls_back_to_the_eager_pass(monkeypatch):
    """No C compiler on the path: load() gives None (no warning) and PathSGD still matches the dense reference."""
    import warnings
    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    monkeypatch.setattr(_path_sgd_kernels, "update_contract", None)  # would fail if called
    model, ref = _model(hidden=(600, 520)), _model(hidden=(600, 520))
    opt = PathSGD(model, lr=0.05, momentum=0.5, weight_decay=0.01)
    bufs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _path_sgd_kernels.load(torch.float64) is None
        for step in range(3):
            _reference_step(ref, step, bufs, [0.05] * 3, 0.5, 0.01)
            _step(model, opt, step)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-13, msg=n)
