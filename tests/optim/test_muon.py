"""Muon against torch.optim.Muon (bit-identical steps), the SVD polar factor and AdamW (its fallback)."""

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.optim import Muon, build_optimizer
from geomopt.optim.muon import muon_direction


def _loss(params, x):
    """A loss whose gradients differ across entries and steps (non-quadratic)."""
    return sum(((p.reshape(p.shape[0], -1) @ x[: p[0].numel()]).tanh() ** 2).sum() if p.dim() >= 2
               else (p * x[: p.numel()]).sin().sum() for p in params)


def _run(params, opt, steps, gen):
    for _ in range(steps):
        x = torch.randn(64, generator=gen)
        opt.zero_grad()
        _loss(params, x).backward()
        opt.step()


def _pair(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen) for s in shapes]
    return [p.clone().requires_grad_() for p in init], [p.clone().requires_grad_() for p in init]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.booleans(), st.sampled_from([None, "original", "match_rms_adamw"]),
       st.floats(0.0, 0.99), st.floats(0.0, 0.3), st.integers(1, 7))
def test_equals_torch_muon_on_matrices(seed, nesterov, adjust, momentum, weight_decay, ns_steps):
    """Several steps on identical settings: the parameters are bit-identical to torch.optim.Muon's."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [tuple(torch.randint(1, 9, (2,), generator=gen).tolist()) for _ in range(2)]
    ours, theirs = _pair(shapes, seed)
    kw = dict(lr=0.03, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
              adjust_lr_fn=adjust)
    _run(ours, Muon(ours, **kw), 4, torch.Generator().manual_seed(seed))
    _run(theirs, torch.optim.Muon(theirs, **kw), 4, torch.Generator().manual_seed(seed))
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)


def test_conv_weight_steps_as_its_matrix():
    """A (out, in, kh, kw) weight moves as torch.optim.Muon moves the matrix (out, in*kh*kw), lr adjusted by it."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, 3, 3, generator=gen)
    conv, mat = w.clone().requires_grad_(), w.reshape(3, -1).clone().requires_grad_()
    opt_c = Muon([conv], lr=0.05, adjust_lr_fn="match_rms_adamw")
    opt_m = torch.optim.Muon([mat], lr=0.05, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        target = torch.randn(3, 18, generator=gen)
        for p, opt in ((conv, opt_c), (mat, opt_m)):
            opt.zero_grad()
            ((p.reshape(3, -1) - target) ** 3).sum().backward()
            opt.step()
    assert torch.equal(conv.detach().reshape(3, -1), mat.detach())


def test_vectors_take_adamw_steps():
    """Biases (1-d) under the default fallback move exactly as torch.optim.AdamW with the adamw_* settings."""
    ours, theirs = _pair([(5,), (4,)], 1)
    opt = Muon(ours, lr=0.02, adamw_lr=0.003, adamw_betas=(0.8, 0.9), adamw_eps=1e-6, adamw_weight_decay=0.1)
    _run(ours, opt, 4, torch.Generator().manual_seed(1))
    _run(theirs, torch.optim.AdamW(theirs, lr=0.003, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1), 4,
         torch.Generator().manual_seed(1))
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)


@pytest.mark.usefixtures("float64_default")
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.integers(1, 12))
def test_svd_direction_is_the_polar_factor(seed, m, n):
    """orthogonalize='svd' gives U V^T: against (M M^T)^{-1/2} M for a full-row-rank M (float64, 1e-8)."""
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(min(m, n), max(m, n), generator=gen)
    evals, evecs = torch.linalg.eigh(M @ M.T)
    polar = evecs @ torch.diag(evals.rsqrt()) @ evecs.T @ M
    assert torch.allclose(muon_direction(M, "svd"), polar, atol=1e-8)
    assert torch.allclose(muon_direction(M.T.contiguous(), "svd"), polar.T, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_newton_schulz_approximates_the_svd_direction(seed):
    """Torch's quintic NS (bfloat16, 5 steps) is U p(S) V^T: in the SVD basis of M its output is diagonal within
    0.06, with entries in [0.6, 1.25] for singular values above 1% of ||M||_F (the iteration does not converge
    to 1; measured: [0.68, 1.19], off-diagonal 0.033 over 200 draws). The classical cubic iteration
    (1.5, -0.5, 0) run 40 steps converges: within 2e-2 (bfloat16's resolution) of U V^T when S/S_max >= 0.5."""
    gen = torch.Generator().manual_seed(seed)
    m, n = torch.randint(2, 30, (2,), generator=gen).tolist()
    M = torch.randn(m, n, generator=gen)
    U, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    C = U.T @ muon_direction(M).double() @ Vh.T
    assert (C - torch.diag(C.diagonal())).abs().max() < 0.06
    kept = C.diagonal()[S / S.norm() > 1e-2]
    assert kept.min() > 0.6 and kept.max() < 1.25
    k = min(m, n)
    Uq = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))[0]
    Vq = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))[0]
    conditioned = (Uq * (0.5 + 0.5 * torch.rand(k, generator=gen, dtype=torch.float64))) @ Vq.T
    cubic = muon_direction(conditioned.float(), ns_coefficients=(1.5, -0.5, 0.0), ns_steps=40).double()
    assert (cubic - Uq @ Vq.T).abs().max() < 2e-2


def test_state_dict_round_trip_deepcopy_pickle_and_torch_state():
    """A state dict (ours or torch.optim.Muon's), a deepcopy and a pickle continue the run identically."""
    ref, _ = _pair([(4, 3), (3,)], 2)
    opt = Muon(ref, lr=0.02)
    gen = torch.Generator().manual_seed(2)
    _run(ref, opt, 2, gen)
    clones = []
    for how in ("state_dict", "deepcopy", "pickle"):
        ps = [p.detach().clone().requires_grad_() for p in ref]
        if how == "state_dict":
            o = Muon(ps, lr=0.5)
            o.load_state_dict(copy.deepcopy(opt.state_dict()))  # as read from a file: torch aliases tensors
        else:
            bundle = (ref, opt)
            ps, o = copy.deepcopy(bundle) if how == "deepcopy" else pickle.loads(pickle.dumps(bundle))
        clones.append((ps, o))
    _run(ref, opt, 2, torch.Generator().manual_seed(3))
    for ps, o in clones:
        _run(ps, o, 2, torch.Generator().manual_seed(3))
        assert all(torch.equal(p, q) for p, q in zip(ps, ref)), [(p - q).abs().max() for p, q in zip(ps, ref)]
    mats, _ = _pair([(4, 3)], 4)
    t = torch.optim.Muon([mats[0]], lr=0.02)
    _run(mats, t, 2, torch.Generator().manual_seed(4))
    ours = [mats[0].detach().clone().requires_grad_()]
    o = Muon(ours, lr=0.9)
    o.load_state_dict(copy.deepcopy(t.state_dict()))  # torch's lacks orthogonalize, fallback, adamw_*: defaults
    _run(mats, t, 2, torch.Generator().manual_seed(5))
    _run(ours, o, 2, torch.Generator().manual_seed(5))
    assert torch.equal(mats[0], ours[0])


def test_groups_closure_and_scheduler():
    """Per-group lr, a closure's loss returned, and an LR scheduler that changes the step."""
    a, b = _pair([(3, 3), (3, 3)], 6)[0]
    opt = Muon([{"params": [a]}, {"params": [b], "lr": 0.0}], lr=0.1)
    b0 = b.detach().clone()

    def closure():
        opt.zero_grad()
        loss = (a.sum() - 1) ** 2 + (b.sum() - 1) ** 2
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure))
    assert torch.equal(b, b0) and isinstance(opt, torch.optim.Muon)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.0)
    sched.step()
    a0 = a.detach().clone()
    opt.step(closure)
    assert opt.param_groups[0]["lr"] == 0.0 and torch.equal(a, a0)  # lr 0: no step, no decay


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1.0), "lr"), (dict(momentum=1.5), "momentum"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(eps=0.0), "eps"), (dict(ns_steps=100), "ns_steps"), (dict(ns_steps=2.5), "ns_steps"),
    (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"), (dict(ns_coefficients=(1.0, float("nan"), 0.0)), "ns_"),
    (dict(adjust_lr_fn="mine"), "adjust_lr_fn"), (dict(orthogonalize="qr"), "orthogonalize"),
    (dict(fallback="sgd"), "fallback"), (dict(adamw_betas=(0.9, 1.0)), "adamw_betas"),
    (dict(adamw_lr=-1.0), "adamw_lr"), (dict(adamw_eps=0), "adamw_eps"), (dict(lr="0.1"), "lr"),
])
def test_invalid_options(kw, match):
    with pytest.raises(ValueError, match=match):
        Muon([torch.zeros(2, 2, requires_grad=True)], **kw)


def test_invalid_groups_vectors_and_nonfinite_gradients():
    w, bias = torch.ones(2, 2, requires_grad=True), torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"shape \(2,\) is not a matrix and fallback is 'none'"):
        Muon([w, bias], fallback="none")
    opt = Muon([w])
    with pytest.raises(ValueError, match="param group 1: momentum"):
        opt.add_param_group({"params": [bias], "momentum": -1.0})
    opt = Muon([w, bias], lr=0.1)
    w.grad, bias.grad = torch.ones(2, 2), torch.tensor([1.0, float("nan")])
    with pytest.raises(FloatingPointError, match=r"shape \(2,\)"):
        opt.step()
    assert torch.equal(w, torch.ones(2, 2)) and not opt.state


def test_registry_trains_an_mlp_with_biases():
    """`--optimizer muon`: weights Muon, biases AdamW at lr, the loss falls on a separable toy task."""
    from geomopt.nn import MLP
    torch.manual_seed(0)
    model = MLP((4,), (8,), 2)
    opt = build_optimizer("muon", model, lr=0.02)
    assert isinstance(opt, Muon) and opt.defaults["momentum"] == 0.95 and opt.defaults["weight_decay"] == 0.0
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert any("exp_avg" in s for s in opt.state.values()) and any("momentum_buffer" in s for s in opt.state.values())
