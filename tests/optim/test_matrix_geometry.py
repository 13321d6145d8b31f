"""Shampoo's, SOAP's and Muon's geometries (the Geometry interface of the geometry + step-rule split) give the
optimizers' steps when composed with plain steps ``w <- w - lr D``: against Shampoo without grafting, SOAP with
beta1 = 0 and Muon without momentum, each of which is tested against its own reference."""

import copy

import pytest
import torch

from geomopt.optim import SOAP, EigenAdamGeometry, Muon, Preconditioner, Shampoo, ShampooGeometry, SpectralGeometry

SHAPES = [(3, 4), (2, 2, 1, 3), (5,)]


def _loss(params, x):
    return sum(((p.reshape(p.shape[0], -1) @ x[: p[0].numel()]).tanh() ** 2).sum() + (p ** 3).sum() / 10
               if p.dim() >= 2 else (p * x[: p.numel()]).sin().sum() for p in params)


def _pair(seed):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    return [w.clone().requires_grad_() for w in init], [w.clone().requires_grad_() for w in init]


def _geometry_steps(params, geometry, lr, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    group = {"params": params, "lr": lr}
    for k in range(steps):
        for p in params:
            p.grad = None
        _loss(params, torch.randn(32, generator=gen, dtype=torch.float64)).backward()
        geometry.update(k, [group])
        with torch.no_grad():
            for block in geometry.blocks():
                block.key.sub_(lr * geometry.direction(block, block.key.grad, group))


def _optimizer_steps(params, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        _loss(params, torch.randn(32, generator=gen, dtype=torch.float64)).backward()
        opt.step()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("max_dim", [None, 3, 2])  # 3: one-sided factors; 2: (3, 4) takes diagonal AdaGrad
def test_shampoo_geometry_is_shampoo(seed, max_dim):
    a, b = _pair(seed)
    _geometry_steps(a, ShampooGeometry(a, beta2=0.9, eps=1e-3, update_freq=2, precondition_freq=3, max_dim=max_dim),
                    0.05, 6, seed)
    _optimizer_steps(b, Shampoo(b, lr=0.05, beta2=0.9, eps=1e-3, update_freq=2, precondition_freq=3,
                                grafting="none", max_dim=max_dim), 6, seed)
    assert all(torch.allclose(p, q, rtol=0, atol=1e-12) for p, q in zip(a, b))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("max_dim", [None, 3, 2])
def test_eigen_adam_geometry_is_soap_without_first_moment(seed, max_dim):
    a, b = _pair(seed)
    _geometry_steps(a, EigenAdamGeometry(a, beta2=0.9, eps=1e-3, precondition_freq=2, max_dim=max_dim), 0.01, 6,
                    seed)
    _optimizer_steps(b, SOAP(b, lr=0.01, betas=(0.0, 0.9), eps=1e-3, weight_decay=0.0, precondition_freq=2,
                             max_dim=max_dim), 6, seed)
    assert all(torch.allclose(p, q, rtol=0, atol=1e-12) for p, q in zip(a, b))


@pytest.mark.parametrize("orthogonalize", ["svd", "newton-schulz"])
def test_spectral_geometry_is_muon_without_momentum(orthogonalize):
    a, b = _pair(2)
    a, b = a[:2], b[:2]
    _geometry_steps(a, SpectralGeometry(a, orthogonalize=orthogonalize, adjust_lr_fn="match_rms_adamw"), 0.02, 4, 2)
    _optimizer_steps(b, Muon(b, lr=0.02, momentum=0.0, nesterov=False, weight_decay=0.0, orthogonalize=orthogonalize,
                             adjust_lr_fn="match_rms_adamw"), 4, 2)
    assert all(torch.allclose(p, q, rtol=0, atol=1e-12) for p, q in zip(a, b))


def test_state_round_trip_readiness_and_nonfinite():
    a, b = _pair(3)
    geometry = ShampooGeometry(a)
    assert not any(geometry.ready(block) for block in geometry.blocks())
    _geometry_steps(a, geometry, 0.05, 2, 3)
    restored = ShampooGeometry(b)
    restored.load_state_dict(copy.deepcopy(geometry.state_dict()))
    assert all(restored.ready(block) for block in restored.blocks())
    for p, q in zip(a, b):
        for key, value in geometry.state[p].items():
            assert torch.equal(value, restored.state[q][key])
    a[0].grad = torch.full_like(a[0], float("nan"))
    with pytest.raises(FloatingPointError, match=r"Shampoo: non-finite gradient .* shape \(3, 4\)"):
        geometry.update(2, [{"params": a}])


@pytest.mark.parametrize("make, match", [
    (lambda ps: ShampooGeometry(ps, beta2=0.0), "beta2"), (lambda ps: ShampooGeometry(ps, precondition_freq=0), "freq"),
    (lambda ps: EigenAdamGeometry(ps, beta2=1.0), "beta2"), (lambda ps: EigenAdamGeometry(ps, eps=0.0), "eps"),
    (lambda ps: SpectralGeometry(ps, orthogonalize="qr"), "orthogonalize"),
    (lambda ps: SpectralGeometry(ps, ns_steps=0), "ns_steps"),
])
def test_invalid_options(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.zeros(2, 2, requires_grad=True)])


@pytest.mark.parametrize("name", ["shampoo", "soap", "muon"])
def test_as_a_preconditioner_in_front_of_sgd(name):
    """Preconditioner(geometry) + torch.optim.SGD takes the optimizer's steps (the kfac-pytorch interface)."""
    a, b = _pair(4)
    if name == "shampoo":
        geometry, opt_b = ShampooGeometry(a, eps=1e-3, precondition_freq=2), Shampoo(b, lr=0.05, eps=1e-3,
                                                                                    precondition_freq=2, grafting="none")
    elif name == "soap":
        geometry, opt_b = EigenAdamGeometry(a, eps=1e-3), SOAP(b, lr=0.05, betas=(0.0, 0.95), eps=1e-3, weight_decay=0)
    else:
        a, b = a[:2], b[:2]
        geometry, opt_b = SpectralGeometry(a, orthogonalize="svd"), Muon(b, lr=0.05, momentum=0.0, nesterov=False,
                                                                        weight_decay=0.0, orthogonalize="svd")
    precond, opt_a = Preconditioner(geometry), torch.optim.SGD(a, lr=0.05)
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        opt_a.zero_grad()
        _loss(a, torch.randn(32, generator=gen, dtype=torch.float64)).backward()
        precond.step()
        opt_a.step()
    _optimizer_steps(b, opt_b, 5, 4)
    assert all(torch.allclose(p, q, rtol=0, atol=1e-12) for p, q in zip(a, b))
