"""Shampoo and SOAP against dense float64 references written here from the papers' formulas (scipy's fractional
matrix power for Shampoo's inverse fourth roots; torch.linalg.eigh of the accumulated statistics for SOAP), over
several steps; torch.optim semantics (groups, closures, state dicts, deepcopy/pickle, schedulers); bad input."""

import copy
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.optim import SOAP, Shampoo, build_optimizer
from geomopt.optim.shampoo import inverse_root

pytestmark = pytest.mark.usefixtures("float64_default")


def _loss(params, x):
    """Non-quadratic, so that gradients change with the parameters along the run."""
    return sum(((p.reshape(p.shape[0], -1) @ x[: p[0].numel()]).tanh() ** 2).sum() + (p ** 3).sum() / 10
               if p.dim() >= 2 else (p * x[: p.numel()]).sin().sum() for p in params)


def _grads(params, x):
    ps = [p.detach().clone().requires_grad_() for p in params]
    return [g.detach() for g in torch.autograd.grad(_loss(ps, x), ps)]


def _run(params, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, generator=gen)
        opt.zero_grad()
        _loss(params, x).backward()
        opt.step()


def _init(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]


def _root(s, eps, power=-0.25):
    return torch.from_numpy(np.real(scipy.linalg.fractional_matrix_power((s + eps * torch.eye(len(s))).numpy(), power)))


def _shampoo_reference(init, steps, seed, lr, momentum, weight_decay, beta2, eps, update_freq, precondition_freq,
                       grafting, graft_beta2=0.999, graft_eps=1e-8, max_dim=None):
    """Shampoo (Gupta et al. 2018, Algorithm 1) as dense float64 matrices, one parameter at a time. With ``max_dim``
    a side longer than it has the identity factor and the other side the inverse square root; both sides longer:
    diagonal AdaGrad."""
    ws = [w.clone() for w in init]
    stats = [None] * len(ws)
    roots, bufs, graft_v = [None] * len(ws), [torch.zeros_like(w) for w in ws], [torch.zeros_like(w) for w in ws]
    w_ = 1.0 if beta2 == 1 else 1 - beta2
    gen = torch.Generator().manual_seed(seed)
    for t in range(1, steps + 1):
        grads = _grads(ws, torch.randn(32, generator=gen))
        for i, (w, g) in enumerate(zip(ws, grads)):
            m, n = (g.shape[0], g[0].numel()) if w.dim() >= 2 else (0, 0)
            keep = (m <= (max_dim or m), n <= (max_dim or n))
            if w.dim() < 2 or not any(keep):
                stats[i] = torch.zeros_like(w) if stats[i] is None else stats[i]
                if (t - 1) % update_freq == 0:
                    stats[i] = beta2 * stats[i] + w_ * g * g
                d = g / torch.sqrt(stats[i] + eps)
            else:
                G = g.reshape(g.shape[0], -1)
                if stats[i] is None:
                    stats[i] = (torch.zeros(G.shape[0], G.shape[0]), torch.zeros(G.shape[1], G.shape[1]))
                if (t - 1) % update_freq == 0:
                    stats[i] = (beta2 * stats[i][0] + w_ * G @ G.T, beta2 * stats[i][1] + w_ * G.T @ G)
                if (t - 1) % precondition_freq == 0:
                    power = -0.25 if all(keep) else -0.5
                    roots[i] = (_root(stats[i][0], eps, power) if keep[0] else torch.eye(m),
                                _root(stats[i][1], eps, power) if keep[1] else torch.eye(n))
                d = (roots[i][0] @ G @ roots[i][1]).reshape(g.shape)
            if grafting == "sgd":
                d = d * g.norm() / d.norm()
            elif grafting == "adam":
                graft_v[i] = graft_beta2 * graft_v[i] + (1 - graft_beta2) * g * g
                target = g / (torch.sqrt(graft_v[i] / (1 - graft_beta2 ** t)) + graft_eps)
                d = d * target.norm() / d.norm()
            bufs[i] = momentum * bufs[i] + d
            ws[i] = (1 - lr * weight_decay) * w - lr * bufs[i]
    return ws


def _soap_reference(init, steps, seed, lr, betas, shampoo_beta, eps, weight_decay, precondition_freq, max_dim=None):
    """SOAP (Vyas et al. 2024, Algorithm 3) with the statistics updated before the step, dense float64; with
    ``max_dim`` a side longer than it has the identity basis (the authors' ``max_precond_dim``)."""
    b1, b2 = betas
    ws = [w.clone() for w in init]
    ms, vs = [torch.zeros_like(w) for w in ws], [None] * len(ws)
    stats, bases = [None] * len(ws), [None] * len(ws)
    gen = torch.Generator().manual_seed(seed)
    for t in range(1, steps + 1):
        grads = _grads(ws, torch.randn(32, generator=gen))
        for i, (w, g) in enumerate(zip(ws, grads)):
            G = g.reshape(g.shape[0], -1) if g.dim() >= 2 else g
            ms[i] = b1 * ms[i] + (1 - b1) * g
            M = ms[i].reshape(G.shape)
            if g.dim() >= 2:
                L, R = stats[i] if stats[i] is not None else (0.0, 0.0)
                b = shampoo_beta
                stats[i] = (b * L + (1 - b) * G @ G.T, b * R + (1 - b) * G.T @ G)
                if (t - 1) % precondition_freq == 0:
                    bases[i] = tuple(torch.linalg.eigh(s)[1] if len(s) <= (max_dim or len(s)) else torch.eye(len(s))
                                     for s in stats[i])
                QL, QR = bases[i]
            else:
                QL = QR = None
            rot = (lambda A: QL.T @ A @ QR) if QL is not None else (lambda A: A)
            back = (lambda A: QL @ A @ QR.T) if QL is not None else (lambda A: A)
            vs[i] = (0 if vs[i] is None else b2 * vs[i]) + (1 - b2) * rot(G) ** 2
            n = back((rot(M) / (1 - b1 ** t)) / (torch.sqrt(vs[i] / (1 - b2 ** t)) + eps))
            ws[i] = (1 - lr * weight_decay) * w - lr * n.reshape(g.shape)
    return ws


SHAPES = [(3, 4), (4, 3), (2, 2, 1, 3), (5,)]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 1000), st.sampled_from([0.0, 0.9]), st.sampled_from([0.0, 0.05]), st.sampled_from([1.0, 0.9]),
       st.sampled_from([1e-6, 1e-2]), st.integers(1, 3), st.integers(1, 3), st.sampled_from(["none", "sgd", "adam"]))
def test_shampoo_equals_dense_reference(seed, momentum, weight_decay, beta2, eps, update_freq, precondition_freq,
                                        grafting):
    """Within 1e-7: at eps = 1e-6 the inverse roots of the rank-deficient early statistics are ill-conditioned
    (eigh and scipy's Schur method differ by ~4e-9 in them); at eps = 1e-2 the two agree to ~1e-14."""
    init = _init(SHAPES, seed)
    kw = dict(lr=0.05, momentum=momentum, weight_decay=weight_decay, beta2=beta2, eps=eps, update_freq=update_freq,
              precondition_freq=precondition_freq, grafting=grafting)
    params = [w.clone().requires_grad_() for w in init]
    _run(params, Shampoo(params, **kw), 6, seed)
    for p, r in zip(params, _shampoo_reference(init, 6, seed, **kw)):
        assert torch.allclose(p, r, rtol=1e-7, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 1000), st.sampled_from([(0.9, 0.99), (0.95, 0.95), (0.0, 0.5)]), st.sampled_from([None, 0.8]),
       st.sampled_from([1e-8, 1e-3]), st.sampled_from([0.0, 0.1]), st.integers(1, 4))
def test_soap_equals_dense_reference(seed, betas, shampoo_beta, eps, weight_decay, precondition_freq):
    """Square matrices (and a conv weight whose matrix is square): their statistics are full rank from the first
    step, so each eigenbasis is unique up to signs (which SOAP's direction does not depend on). Within 1e-10 at
    eps = 1e-3 (usually 1e-14; 4.8e-12 at seed 880, betas (0.95, 0.95), a basis refreshed every step, where two
    eigenvalues of a 4 x 4 statistic come close); within 1e-6 at eps = 1e-8 (measured 4e-8), where entries of G' that vanish in exact arithmetic
    (after a refresh G' = Q_L^T G Q_R is nearly diagonal) are ratios of rounding errors near eps."""
    shapes = [(3, 3), (2, 1, 1, 2), (4, 4), (5,)]
    init = _init(shapes, seed)
    kw = dict(lr=0.01, betas=betas, shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
              precondition_freq=precondition_freq)
    params = [w.clone().requires_grad_() for w in init]
    _run(params, SOAP(params, **kw), 7, seed)
    kw["shampoo_beta"] = betas[1] if shampoo_beta is None else shampoo_beta  # the reference's explicit value
    reference = _soap_reference(init, 7, seed, **kw)
    for p, r in zip(params, reference):
        assert torch.allclose(p, r, rtol=0, atol=1e-6 if eps < 1e-6 else 1e-10)


@pytest.mark.parametrize("grafting", ["none", "adam"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shampoo_max_dim_keeps_small_sides_only(seed, grafting):
    """max_dim = 4: (3, 8) keeps its left factor, (8, 3) its right one (each with the inverse square root), (9, 9)
    takes diagonal AdaGrad, (2, 2) keeps both (inverse fourth roots); against the dense reference."""
    shapes = [(3, 8), (8, 3), (9, 9), (2, 2), (5,)]
    init = _init(shapes, seed)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.0, beta2=1.0, eps=1e-2, update_freq=1, precondition_freq=2,
              grafting=grafting, max_dim=4)
    params = [w.clone().requires_grad_() for w in init]
    opt = Shampoo(params, **kw)
    _run(params, opt, 5, seed)
    for p, r in zip(params, _shampoo_reference(init, 5, seed, **kw)):
        assert torch.allclose(p, r, rtol=0, atol=1e-12)
    assert [sorted(k for k in ("left", "right", "diag") if k in opt.state[p]) for p in params] == \
        [["left"], ["right"], ["diag"], ["left", "right"], ["diag"]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soap_max_dim_keeps_the_identity_basis_on_long_sides(seed):
    shapes = [(3, 8), (8, 3), (9, 9), (3, 3), (5,)]
    init = _init(shapes, seed)
    kw = dict(lr=0.01, betas=(0.9, 0.99), shampoo_beta=0.9, eps=1e-3, weight_decay=0.1, precondition_freq=2,
              max_dim=4)
    params = [w.clone().requires_grad_() for w in init]
    opt = SOAP(params, **kw)
    _run(params, opt, 5, seed)
    for p, r in zip(params, _soap_reference(init, 5, seed, **kw)):
        assert torch.allclose(p, r, rtol=0, atol=1e-10)
    assert opt.state[params[2]]["q_left"] is None and opt.state[params[0]]["q_right"] is None
    # the cap's default, None, keeps both sides of every matrix
    assert Shampoo(params).defaults["max_dim"] is None and SOAP(params).defaults["max_dim"] is None


def test_soap_rectangular_refreshed_each_step():
    """Rectangular matrices (rank-deficient statistics) with the basis refreshed every step: G and M lie in the
    statistics' range, so the arbitrary null-space basis does not change the step."""
    init = _init(SHAPES, 3)
    params = [w.clone().requires_grad_() for w in init]
    _run(params, SOAP(params, lr=0.01, eps=1e-3, precondition_freq=1), 5, 3)
    for p, r in zip(params, _soap_reference(init, 5, 3, 0.01, (0.95, 0.95), 0.95, 1e-3, 0.01, 1)):
        assert torch.allclose(p, r, rtol=0, atol=1e-10)


def test_soap_first_step_is_adams_in_an_exact_eigenbasis_and_vectors_take_adamw():
    """One step from zero moments: Adam's first step is lr * sign-like G'/(|G'|+eps) rotated back; 1-d AdamW."""
    gen = torch.Generator().manual_seed(5)
    w, b = torch.randn(3, 2, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    pw, pb = w.clone().requires_grad_(), b.clone().requires_grad_()
    tw = b.clone().requires_grad_()
    opt = SOAP([pw, pb], lr=0.1, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.0)
    ref = torch.optim.AdamW([tw], lr=0.1, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.0)
    g = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    pw.grad, pb.grad, tw.grad = g.clone(), torch.ones_like(b), torch.ones_like(b)
    opt.step()
    ref.step()
    U, _, Vh = torch.linalg.svd(g)  # eigenvectors of G G^T and G^T G: G' = U^T G V is diagonal
    rotated = U.T @ g @ Vh.T
    expected = w - 0.1 * U @ (rotated / (rotated.abs() + 1e-3)) @ Vh
    assert torch.allclose(pw, expected, rtol=0, atol=1e-12) and torch.allclose(pb, tw, rtol=0, atol=1e-15)


@pytest.mark.parametrize("s_eps", [(0.0, 1e-3), (1.0, 1e-6)])
def test_inverse_root_against_its_definition(s_eps):
    """(S + eps I)^{-1/4} to the fourth power times (S + eps I) is I, for a rank-deficient S."""
    scale, eps = s_eps
    a = torch.randn(5, 2)
    s = scale * (a @ a.T)
    r = inverse_root(s, eps, 4)
    assert torch.allclose(torch.linalg.matrix_power(r, 4) @ (s + eps * torch.eye(5)), torch.eye(5), atol=1e-8)


@pytest.mark.parametrize("cls, kw", [(Shampoo, dict(momentum=0.9, grafting="adam", precondition_freq=2)),
                                     (SOAP, dict(precondition_freq=2))])
def test_state_dict_deepcopy_pickle_continue_identically(cls, kw):
    init = _init(SHAPES, 4)
    ref = [w.clone().requires_grad_() for w in init]
    opt = cls(ref, lr=0.01, **kw)
    _run(ref, opt, 3, 4)
    clones = []
    for how in ("state_dict", "deepcopy", "pickle"):
        if how == "state_dict":
            ps = [p.detach().clone().requires_grad_() for p in ref]
            o = cls(ps, lr=0.5)
            o.load_state_dict(copy.deepcopy(opt.state_dict()))
        else:
            ps, o = copy.deepcopy((ref, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((ref, opt)))
        clones.append((ps, o))
    _run(ref, opt, 3, 5)
    for ps, o in clones:
        _run(ps, o, 3, 5)
        assert all(torch.equal(p, q) for p, q in zip(ps, ref))


@pytest.mark.parametrize("cls", [Shampoo, SOAP])
def test_groups_closure_scheduler_and_nonfinite(cls):
    a, b = torch.ones(3, 3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = cls([{"params": [a]}, {"params": [b], "lr": 0.0, "weight_decay": 0.0}], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = ((a - torch.eye(3)) ** 2).sum() + (b ** 2).sum()
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure))
    assert torch.equal(b, torch.ones(3)) and not torch.equal(a, torch.ones(3, 3))
    torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5).step()
    assert opt.param_groups[0]["lr"] == 0.05
    a0, state0 = a.detach().clone(), copy.deepcopy(opt.state_dict())
    a.grad = torch.full((3, 3), float("inf"))
    with pytest.raises(FloatingPointError, match=r"non-finite gradient in a tensor of shape \(3, 3\)"):
        opt.step()
    assert torch.equal(a, a0) and str(opt.state_dict()) == str(state0)


@pytest.mark.parametrize("cls, kw, match", [
    (Shampoo, dict(lr=-1.0), "lr"), (Shampoo, dict(momentum=1.0), "momentum"), (Shampoo, dict(beta2=0.0), "beta2"),
    (Shampoo, dict(eps=0.0), "eps"), (Shampoo, dict(update_freq=0), "update_freq"),
    (Shampoo, dict(precondition_freq=1.5), "precondition_freq"), (Shampoo, dict(grafting="adagrad"), "grafting"),
    (Shampoo, dict(graft_beta2=1.0), "graft_beta2"), (Shampoo, dict(weight_decay=float("nan")), "weight_decay"),
    (SOAP, dict(betas=(0.9,)), "betas"), (SOAP, dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    (SOAP, dict(shampoo_beta=1.0), "shampoo_beta"), (SOAP, dict(eps=-1.0), "eps"),
    (SOAP, dict(precondition_freq=0), "precondition_freq"), (SOAP, dict(lr=None), "lr"),
    (SOAP, dict(max_dim=0), "max_dim"), (Shampoo, dict(max_dim=2.5), "max_dim"),
])
def test_invalid_options(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.zeros(2, 2, requires_grad=True)], **kw)
    opt = cls([torch.zeros(2, 2, requires_grad=True)])
    with pytest.raises(ValueError, match="param group 1: " + match):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **kw})


def test_registry_names():
    from geomopt.nn import MLP
    model = MLP((4,), (3,), 2)
    assert type(build_optimizer("shampoo", model, lr=0.1, momentum=0.5)) is Shampoo
    assert type(build_optimizer("soap", model, lr=0.1)) is SOAP
    with pytest.raises(ValueError, match="soap.*no momentum"):
        build_optimizer("soap", model, lr=0.1, momentum=0.9)


@pytest.mark.parametrize("cls, key", [(Shampoo, "left"), (SOAP, "left")])
def test_nonfinite_statistics_raise_before_any_change(cls, key):
    """A statistic that overflowed is a FloatingPointError naming it (a divergence for `geomopt train`), and
    no parameter moves, not even those stepped before it."""
    first, second = torch.ones(2, 2, requires_grad=True), torch.ones(3, 2, requires_grad=True)
    opt = cls([first, second], lr=0.1, **({"precondition_freq": 1}))
    for p in (first, second):
        p.grad = torch.randn(p.shape)
    opt.step()
    before = [first.detach().clone(), second.detach().clone()]
    opt.state[second][key].fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"\(3, 3\) gradient statistic holds NaN/inf.*no parameter"):
        opt.step()
    assert torch.equal(first, before[0]) and torch.equal(second, before[1])
