"""Hessian / GGN / Fisher operators against dense references built independently in float64:
``torch.autograd.functional.hessian`` of the loss, explicit Jacobians (``torch.func.jacrev``) with the
loss's output Hessian, per-example gradients by one autograd call per example."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian
from torch.func import functional_call, jacrev

from geomopt.curvature import FisherOperator, GGNOperator, HessianOperator, ScaledOperator, curvature_operator

pytestmark = pytest.mark.usefixtures("float64_default")


def _model(seed=0, d=4, h=3, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c))


def _batches(seed=0, sizes=(5, 3), d=4, c=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)) for n in sizes]


def _flat(model):
    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def unflat(t):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = t[i:i + s.numel()].view(s)
            i += s.numel()
        return out
    return theta, unflat


def _all(batches):
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _jacobians(model, x):
    """(N, C, d) output Jacobians, one jacrev per example."""
    theta, unflat = _flat(model)
    return torch.stack([jacrev(lambda t: functional_call(model, unflat(t), (xi[None],))[0])(theta) for xi in x])


def test_hessian_equals_autograd_functional_hessian_over_batches():
    model, batches = _model(), _batches()
    x, y = _all(batches)
    theta, unflat = _flat(model)
    dense = hessian(lambda t: nn.functional.cross_entropy(functional_call(model, unflat(t), (x,)), y), theta)
    op = HessianOperator(model, batches)
    assert op.shape == (theta.numel(), theta.numel())
    torch.testing.assert_close(op.to_dense(), dense, atol=1e-12, rtol=1e-10)
    v = torch.randn(theta.numel())
    torch.testing.assert_close(op.mv(v), dense @ v, atol=1e-12, rtol=1e-10)
    V = torch.randn(theta.numel(), 3)
    torch.testing.assert_close(op.matmat(V, chunk=2), dense @ V, atol=1e-12, rtol=1e-10)


def test_ggn_equals_explicit_jacobian_loss_hessian_product():
    """G = (1/N) sum_n J_n^T H_n J_n with H_n the cross-entropy's Hessian in the logits by autograd."""
    model, batches = _model(1), _batches(1)
    x, y = _all(batches)
    J = _jacobians(model, x)
    logits = model(x).detach()
    H = torch.stack([hessian(lambda f: nn.functional.cross_entropy(f[None], yi[None]), fi)  # noqa: B023
                     for fi, yi in zip(logits, y)])
    dense = torch.einsum("nca,ncd,ndb->ab", J, H, J) / len(y)
    torch.testing.assert_close(GGNOperator(model, batches).to_dense(), dense, atol=1e-12, rtol=1e-10)


def test_ggn_with_mse_is_jacobian_gram_and_equals_hessian_of_linear_model():
    """For a linear model and squared error the GGN is the Hessian: 2 J^T J / (N C) for the mean over entries."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    g = torch.Generator().manual_seed(3)
    data = (torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g))
    ggn = GGNOperator(model, data, loss_fn=nn.functional.mse_loss).to_dense()
    hess = HessianOperator(model, data, loss_fn=nn.functional.mse_loss).to_dense()
    torch.testing.assert_close(ggn, hess, atol=1e-12, rtol=1e-10)
    J = _jacobians(model, data[0])
    torch.testing.assert_close(ggn, 2 * torch.einsum("nca,ncb->ab", J, J) / 12, atol=1e-12, rtol=1e-10)


def test_true_fisher_equals_ggn_and_explicit_softmax_form():
    model, batches = _model(2), _batches(2)
    x, _ = _all(batches)
    J = _jacobians(model, x)
    p = torch.softmax(model(x).detach(), -1)
    dense = torch.einsum("nca,ncd,ndb->ab", J, torch.diag_embed(p) - p[:, :, None] * p[:, None, :], J) / len(x)
    fisher = FisherOperator(model, batches, kind="true").to_dense()
    torch.testing.assert_close(fisher, dense, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fisher, GGNOperator(model, batches).to_dense(), atol=1e-12, rtol=1e-10)


def test_empirical_fisher_equals_mean_outer_product_of_per_example_gradients():
    model, batches = _model(3), _batches(3)
    x, y = _all(batches)
    grads = []
    for xi, yi in zip(x, y):
        model.zero_grad()
        nn.functional.cross_entropy(model(xi[None]), yi[None]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    G = torch.stack(grads)
    torch.testing.assert_close(FisherOperator(model, batches, kind="empirical").to_dense(), G.T @ G / len(y),
                               atol=1e-12, rtol=1e-10)


def test_mc_fisher_equals_outer_products_with_its_own_samples_and_approaches_true_fisher():
    model, batches = _model(4), _batches(4)
    x, _ = _all(batches)
    op = FisherOperator(model, batches, kind="mc", mc_samples=3, generator=torch.Generator().manual_seed(0))
    ys = torch.cat(op.samples, dim=1)  # (3, N)
    terms = []
    for k in range(3):
        for xi, yi in zip(x, ys[k]):
            model.zero_grad()
            nn.functional.cross_entropy(model(xi[None]), yi[None]).backward()
            g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            terms.append(torch.outer(g, g))
    torch.testing.assert_close(op.to_dense(), torch.stack(terms).sum(0) / (3 * len(x)), atol=1e-12, rtol=1e-10)
    many = FisherOperator(model, batches, kind="mc", mc_samples=1000, generator=torch.Generator().manual_seed(1))
    true = FisherOperator(model, batches, kind="true").to_dense()
    assert torch.linalg.matrix_norm(many.to_dense() - true) < 0.1 * torch.linalg.matrix_norm(true)


def test_gaussian_true_fisher_is_jacobian_gram():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    g = torch.Generator().manual_seed(5)
    data = (torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g))
    J = _jacobians(model, data[0])
    fisher = FisherOperator(model, data, likelihood="gaussian", kind="true").to_dense()
    torch.testing.assert_close(fisher, torch.einsum("nca,ncb->ab", J, J) / 5, atol=1e-12, rtol=1e-10)


def test_parameter_subset_is_the_block_of_the_full_matrix():
    model, batches = _model(5), _batches(5)
    full = HessianOperator(model, batches).to_dense()
    op = HessianOperator(model, batches, params=["2.weight", "0.bias"])
    assert op.names == ["0.bias", "2.weight"]  # model order
    sizes = [p.numel() for p in model.parameters()]
    starts = np.cumsum([0] + sizes)
    idx = torch.cat([torch.arange(starts[1], starts[2]), torch.arange(starts[2], starts[3])])
    torch.testing.assert_close(op.to_dense(), full[idx][:, idx], atol=1e-12, rtol=1e-10)


def test_scipy_linear_operator_and_eigsh():
    from scipy.sparse.linalg import eigsh
    model, batches = _model(6), _batches(6)
    op = GGNOperator(model, batches)
    dense = op.to_dense()
    lin = op.to_scipy()
    v = np.random.default_rng(0).standard_normal(op.shape[0])
    np.testing.assert_allclose(lin @ v, (dense @ torch.from_numpy(v)).numpy(), atol=1e-12)
    top = eigsh(lin, k=1, which="LA", return_eigenvectors=False)[0]
    assert top == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-8)


def test_scaled_operator_is_invariant_to_relu_layer_rescaling():
    """H -> T^-1 H T^-1 under theta -> T theta (node rescaling of a ReLU net): diag(theta) H diag(theta) is
    unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
    batches = _batches(7)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    a = HessianOperator(model, batches)
    before = ScaledOperator(a, theta.abs()).matmat(torch.eye(theta.numel()))
    with torch.no_grad():
        model[0].weight.mul_(2.5)
        model[0].bias.mul_(2.5)
        model[2].weight.div_(2.5)
    theta2 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    after = ScaledOperator(HessianOperator(model, batches), theta2.abs()).matmat(torch.eye(theta.numel()))
    torch.testing.assert_close(after, before, atol=1e-10, rtol=1e-8)


def test_loss_and_gradient_match_autograd():
    model, batches = _model(8), _batches(8)
    x, y = _all(batches)
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    value, g = HessianOperator(model, batches).loss_and_gradient()
    assert value == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(g, torch.cat([t.reshape(-1) for t in grads]))


def test_bad_inputs_raise_clear_errors():
    model, batches = _model(), _batches()
    with pytest.raises(ValueError, match="unknown parameter"):
        HessianOperator(model, batches, params=["nope"])
    with pytest.raises(ValueError, match="no examples"):
        HessianOperator(model, [])
    with pytest.raises(ValueError, match="unknown kind"):
        FisherOperator(model, batches, kind="typo")
    with pytest.raises(ValueError, match="unknown likelihood"):
        FisherOperator(model, batches, likelihood="poisson")
    with pytest.raises(ValueError, match="unknown curvature operator"):
        curvature_operator("kfac", model, batches)
    op = HessianOperator(model, batches)
    with pytest.raises(ValueError, match=r"expected a \(27,\) vector"):
        op.mv(torch.zeros(5))
