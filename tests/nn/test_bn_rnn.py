"""Batch-normalized RNNs against a hand-written float64 transcription of the papers' equations."""

from __future__ import annotations

import pytest
import torch

from geomopt.nn.bn_rnn import BNLSTM, BNRNN, BNInputLSTM, StepBatchNorm

EPS = 1e-5


def _bn(z, gamma, beta=None, stats=None):
    """BN of z (batch, F): batch statistics (biased variance), or given (mean, var)."""
    mean, var = (z.mean(0), z.var(0, unbiased=False)) if stats is None else stats
    out = (z - mean) / torch.sqrt(var + EPS) * gamma
    return out if beta is None else out + beta


def reference_bnlstm(cell, x, h, c, stats=None):
    """Cooijmans et al. eqs., one layer, step by step; ``stats[t]`` = dict of (mean, var) or None (batch stats)."""
    H = h.shape[1]
    outs = []
    for t in range(x.shape[1]):
        st = stats[t] if stats is not None else {}
        gates = (_bn(h @ cell.weight_h.T, cell.bn_h.weight, stats=st.get("h"))
                 + _bn(x[:, t] @ cell.weight_x.T, cell.bn_x.weight, stats=st.get("x")) + cell.bias)
        i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(_bn(c, cell.bn_c.weight, cell.bn_c.bias, stats=st.get("c")))
        outs.append(h)
    return torch.stack(outs, 1), h, c


def _model(**kw):
    torch.manual_seed(0)
    m = BNLSTM(3, 4, **kw).double()
    with torch.no_grad():  # move away from the default gamma/beta so that they matter
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def test_bnlstm_train_mode_equals_paper_equations():
    m = _model(max_steps=5)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    out, (h_n, c_n) = m(x)
    cell = m.cells[0]
    ref, h, c = reference_bnlstm(cell, x, torch.zeros(6, 4, dtype=torch.float64), torch.zeros(6, 4, dtype=torch.float64))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_n[0], h)
    torch.testing.assert_close(c_n[0], c)


def test_eval_mode_uses_population_statistics_per_step():
    m = _model(max_steps=3, momentum=1.0)  # momentum 1: the running stats are the last batch's (unbiased var)
    x = torch.randn(7, 3, 3, dtype=torch.float64)
    m(x)
    m.eval()
    cell = m.cells[0]
    stats = [{k: (getattr(cell, f"bn_{k}").running_mean[t], getattr(cell, f"bn_{k}").running_var[t]) for k in "hxc"}
             for t in range(3)]
    # population statistics: one example's output does not depend on the rest of the batch
    y = torch.randn(5, 3, 3, dtype=torch.float64)
    out_batch, _ = m(y)
    out_single, _ = m(y[:1])
    torch.testing.assert_close(out_batch[:1], out_single)
    ref, _, _ = reference_bnlstm(cell, y, torch.zeros(5, 4, dtype=torch.float64), torch.zeros(5, 4, dtype=torch.float64),
                                 stats)
    torch.testing.assert_close(out_batch, ref, rtol=1e-10, atol=1e-12)
    # the running variance is the unbiased batch variance of the last training batch (step 0, x term)
    wx = x[:, 0] @ cell.weight_x.T
    torch.testing.assert_close(cell.bn_x.running_var[0], wx.var(0, unbiased=True))


def test_statistics_are_separate_per_time_step():
    """Changing the inputs at step 3 changes nothing at steps 0..2 (per-step statistics); with
    sequence-wise statistics it does (contrast: the test can fail)."""
    x = torch.randn(8, 5, 3, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 3] += 5 * torch.randn(8, 3, dtype=torch.float64)
    for model, separate in [(_model(max_steps=5), True),
                            (BNRNN(3, 4, stats="sequence", recurrent_bn=False).double(), False)]:
        a, _ = model(x)
        b, _ = model(x2)
        same = torch.allclose(a[:, :3], b[:, :3])
        assert same is separate
        assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_beyond_t_max():
    m = _model(max_steps=2, momentum=1.0)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    m(x)  # trains slots 0 and 1; steps 2, 3 use batch statistics in training
    m.eval()
    cell = m.cells[0]
    last = {k: (getattr(cell, f"bn_{k}").running_mean[1], getattr(cell, f"bn_{k}").running_var[1]) for k in "hxc"}
    first = {k: (getattr(cell, f"bn_{k}").running_mean[0], getattr(cell, f"bn_{k}").running_var[0]) for k in "hxc"}
    out, _ = m(x)
    ref, _, _ = reference_bnlstm(cell, x, torch.zeros(6, 4, dtype=torch.float64), torch.zeros(6, 4, dtype=torch.float64),
                                 [first, last, last, last])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    strict = _model(max_steps=2, reuse_last=False)
    with pytest.raises(ValueError, match="beyond T_max = 2"):
        strict(x)


def test_eval_without_population_statistics_is_an_error():
    m = _model(max_steps=4).eval()
    with pytest.raises(RuntimeError, match="no population statistics"):
        m(torch.randn(2, 3, 3, dtype=torch.float64))


def test_variable_lengths_match_separate_runs_in_eval():
    m = _model(max_steps=6)
    m(torch.randn(8, 6, 3, dtype=torch.float64))
    m.eval()
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    out, (h_n, c_n) = m(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone, (h1, c1) = m(x[b:b + 1, :n])
        torch.testing.assert_close(out[b, :n], alone[0])
        assert bool((out[b, n:] == 0).all())
        torch.testing.assert_close(h_n[0, b], h1[0, 0])
        torch.testing.assert_close(c_n[0, b], c1[0, 0])


def test_masked_statistics_ignore_padding():
    """In training, padded entries do not enter the statistics: padding values do not matter."""
    m = _model(max_steps=4)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([4, 1, 2, 4, 3])
    x2 = x.clone()
    for b, n in enumerate(lengths.tolist()):
        x2[b, n:] = 100.0
    a, _ = m(x, lengths=lengths)
    b, _ = m(x2, lengths=lengths)
    torch.testing.assert_close(a, b)


def test_gradcheck_tiny_cells():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    for m in (BNLSTM(2, 2, max_steps=3), BNRNN(2, 2, nonlinearity="tanh"), BNInputLSTM(2, 2, stats="sequence")):
        m = m.double()
        assert torch.autograd.gradcheck(lambda inp: m(inp)[0].sum(-1), (x,), eps=1e-6, atol=1e-5)


def test_bnrnn_laurent_variant_equals_equations():
    torch.manual_seed(2)
    m = BNRNN(3, 4, nonlinearity="relu", recurrent_bn=False, stats="sequence").double()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    out, h_n = m(x)
    cell = m.cells[0]
    wx = x @ cell.weight_x.T
    flat = wx.reshape(-1, 4)
    wx = (wx - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + EPS) * cell.bn_x.weight + cell.bias
    h = torch.zeros(5, 4, dtype=torch.float64)
    for t in range(6):
        h = torch.relu(h @ cell.weight_h.T + wx[:, t])
        torch.testing.assert_close(out[:, t], h)
    torch.testing.assert_close(h_n[0], h)


def test_multilayer_and_errors():
    m = BNLSTM(3, 4, num_layers=2, max_steps=5)
    out, (h, c) = m(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, 4) and h.shape == (2, 2, 4) and c.shape == (2, 2, 4)
    with pytest.raises(ValueError, match=r"\(batch, time, 3\)"):
        m(torch.randn(2, 5))
    with pytest.raises(ValueError, match="lengths"):
        m(torch.randn(2, 5, 3), lengths=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="nonlinearity"):
        BNRNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="max_steps"):
        StepBatchNorm(4, 0)


def test_sequence_model_wrapper_reads_out_last_or_all_steps():
    from geomopt.nn.bn_rnn import BNSequenceModel
    torch.manual_seed(0)
    x = torch.randn(4, 6, 3)
    last = BNSequenceModel("bnlstm", 3, 5, 2, output="last", seq_len=6)
    hs, _ = last.rnn(x)
    torch.testing.assert_close(last(x), last.output(hs[:, -1]))
    every = BNSequenceModel("bnrnn", 3, 5, 2, output="all", seq_len=6)
    assert every(x).shape == (4, 6, 2)
    tokens = BNSequenceModel("bninput-lstm", 7, 5, 7, output="all", seq_len=6)
    assert tokens(torch.randint(0, 7, (4, 6))).shape == (4, 6, 7)
    with pytest.raises(ValueError, match="core"):
        BNSequenceModel("gru", 3, 5, 2)


def _graph_has(fn, name: str) -> bool:
    seen, todo = set(), [fn]
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        if name in type(f).__name__:
            return True
        todo.extend(g for g, _ in f.next_functions)
    return False


def _run(m, x, state, weights):
    """Outputs, final states and the gradients of a fixed functional of them w.r.t. parameters, x and state."""
    for t in (x, *state):
        t.grad = None
    m.zero_grad(set_to_none=True)
    if isinstance(m, BNRNN):
        out, h = m(x, state=state[0])
        c = torch.zeros(())
    else:
        out, (h, c) = m(x, state=state)
    ((out * weights).sum() + 0.7 * h.sum() + (c ** 2).sum()).backward()
    grads = [t.grad for t in (x, *state) if t.grad is not None]
    return [out, h, c, *grads] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("cls,kw", [(BNLSTM, dict(max_steps=4)), (BNInputLSTM, dict(stats="frame", max_steps=4)),
                                    (BNInputLSTM, dict(stats="sequence")),
                                    (BNLSTM, dict(max_steps=8, missing_stats="batch")),
                                    (BNRNN, dict(max_steps=4)), (BNRNN, dict(nonlinearity="tanh", max_steps=4)),
                                    (BNRNN, dict(recurrent_bn=False, stats="sequence")),
                                    (BNRNN, dict(nonlinearity="tanh", max_steps=8, missing_stats="batch"))])
def test_fused_recurrence_equals_step_by_step_reference(cls, kw):
    """The fused path (hand-written backward; for BNLSTM the C gate kernels where a compiler exists)
    against the plain loop in float64: values, gradients of parameters / input / initial state and the
    running statistics, in train and eval modes (T = 6 runs past T_max = 4; with missing_stats="batch"
    eval starts without statistics)."""
    _check_fused_against_reference(cls, kw)


@pytest.mark.parametrize("kw", [dict(max_steps=4), dict(max_steps=8, missing_stats="batch")])
def test_fused_bnlstm_with_aten_gates_equals_step_by_step_reference(kw, monkeypatch):
    """The same check with ``native=False`` (what runs without a C compiler): the ATen calls of the
    fused loop, in float64 against the plain loop."""
    import geomopt.nn.bn_rnn.fused as bn_rnn
    monkeypatch.setattr(bn_rnn, "_native_forward", None)  # would fail if called
    _check_fused_against_reference(BNLSTM, dict(kw, native=False))


def _check_fused_against_reference(cls, kw):
    torch.manual_seed(3)
    fused = cls(3, 5, num_layers=2, **kw).double()
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.3 * torch.randn_like(p))
    plain = cls(3, 5, num_layers=2, fused=False, **kw).double()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(6, 6, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weights = torch.randn(6, 6, 5, dtype=torch.float64)
    modes = ["eval", "train", "eval"] if kw.get("missing_stats") == "batch" else ["train", "eval", "train"]
    for mode in modes:
        fused.train(mode == "train")
        plain.train(mode == "train")
        for a, b in zip(_run(fused, x, state, weights), _run(plain, x, state, weights)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(fused.buffers(), plain.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        if mode == "eval":  # without gradients: nothing kept, population statistics folded
            with torch.no_grad():
                s = state[0] if isinstance(fused, BNRNN) else state
                for a, b in zip(fused(x, state=s), plain(x, state=s)):
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert all(int(b.steps_tracked[0]) == modes.count("train") for b in fused.modules() if isinstance(b, StepBatchNorm))
    assert _graph_has(fused(x)[0].grad_fn, "_Fused") and not _graph_has(plain(x)[0].grad_fn, "_Fused")


def test_step_function_path_without_compiler_equals_reference(monkeypatch):
    """BNLSTM(compile=True) runs two pure step functions (what torch.compile fuses); without a C++
    compiler they run eagerly, with a warning. Against the step-by-step reference in float64: values,
    gradients, running statistics (T = 6 > T_max = 4)."""
    import geomopt.nn.bn_rnn.fused as bn_rnn
    monkeypatch.setattr(bn_rnn, "_COMPILED", [])
    monkeypatch.setattr(bn_rnn.shutil, "which", lambda name: None)
    torch.manual_seed(4)
    stepped = BNLSTM(3, 5, num_layers=2, max_steps=4, compile=True).double()
    with torch.no_grad():
        for p in stepped.parameters():
            p.add_(0.3 * torch.randn_like(p))
    plain = BNLSTM(3, 5, num_layers=2, max_steps=4, fused=False).double()
    plain.load_state_dict(stepped.state_dict())
    x = torch.randn(6, 6, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weights = torch.randn(6, 6, 5, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"no C\+\+ compiler"):
        got = _run(stepped, x, state, weights)
    for a, b in zip(got, _run(plain, x, state, weights)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(stepped.buffers(), plain.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert _graph_has(stepped(x)[0].grad_fn, "_StepFnLSTMLayerBackward")


@pytest.mark.parametrize("cls", [BNLSTM, BNInputLSTM, BNRNN])
def test_fused_layers_free_their_states_after_backward(cls):
    """Nothing of a training step outlives it: the fused Functions keep their outputs through
    save_for_backward (as attributes of ctx they formed a cycle through grad_fn that leaked every
    step's states, ~25 MB per step of seq-digits)."""
    import gc

    torch.manual_seed(0)
    model = cls(3, 5, max_steps=9)
    marker = (10, 2, 5)  # (T + 1, batch, hidden): the shape of the fused layers' state tensors

    def alive() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and tuple(o.shape) == marker)

    before = alive()
    for _ in range(3):
        out = model(torch.randn(2, 9, 3))[0]  # (batch, T, F)
        assert _graph_has(out.grad_fn, "_Fused")
        out.sum().backward()
        del out
    assert alive() == before


def test_gate_kernels_in_float32_and_without_gradients(monkeypatch):
    """The C gate kernels (geomopt.nn._gate_kernels) are the path a BNLSTM on CPU takes where they
    compile. In float32 (vectorized exp and tanh) their values, gradients and running statistics are
    as close to a float64 run as the ATen path's (within 2e-5 of each tensor's largest entry; both
    measured at ~1e-6); training without gradients (nothing kept) gives the same outputs."""
    import geomopt.nn.bn_rnn.fused as bn_rnn
    from geomopt.nn import _gate_kernels
    if _gate_kernels.load(torch.float32) is None:
        pytest.skip("no C compiler with glibc's libmvec here: BNLSTM runs the ATen path (tested above)")
    calls = []
    native = bn_rnn._native_forward
    monkeypatch.setattr(bn_rnn, "_native_forward", lambda *a: calls.append(1) or native(*a))
    torch.manual_seed(5)
    reference = BNLSTM(3, 16, num_layers=2, max_steps=12).double()
    x = torch.randn(8, 12, 3, dtype=torch.float64)
    weights = torch.randn(8, 12, 16, dtype=torch.float64)

    def run(dtype, native=True):
        model = BNLSTM(3, 16, num_layers=2, max_steps=12, native=native).to(dtype)
        model.load_state_dict(reference.state_dict())
        state = tuple(torch.zeros(2, 8, 16, dtype=dtype, requires_grad=True) for _ in range(2))
        got = _run(model, x.detach().to(dtype).requires_grad_(), state, weights.to(dtype))
        return model, got + list(model.buffers())

    _, want = run(torch.float64)
    model, got = run(torch.float32)
    assert len(calls) == 4  # both layers of both runs
    _, aten = run(torch.float32, native=False)
    assert len(calls) == 4
    for a, b, r in zip(got, aten, want):
        scale = 2e-5 * float(r.detach().abs().max())
        torch.testing.assert_close(a.to(r.dtype), r, rtol=0, atol=scale)
        torch.testing.assert_close(b.to(r.dtype), r, rtol=0, atol=scale)
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        out, _ = model(x.float())
    torch.testing.assert_close(out, got[0], rtol=0, atol=1e-6)
    assert len(calls) == 6


def test_gate_kernels_fall_back_without_a_compiler(monkeypatch):
    """No C compiler on the path: load() gives None (no warning) and the BNLSTM runs its ATen path."""
    import warnings

    import geomopt.nn.bn_rnn.fused as bn_rnn
    from geomopt import native
    from geomopt.nn import _gate_kernels
    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    monkeypatch.setattr(bn_rnn, "_native_forward", None)  # would fail if called
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _gate_kernels.load(torch.float32) is None
        out, _ = BNLSTM(3, 5, max_steps=4)(torch.randn(4, 4, 3))
    out.sum().backward()
