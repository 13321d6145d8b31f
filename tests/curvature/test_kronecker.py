"""K-FAC / EKFAC curvature objects against independent float64 references: per-example
quantities by a Python loop of autograd calls, per-example gradients by torch.func, explicit
unfold of patches, dense Kronecker products and dense solves."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

from geomopt.curvature import (EKFAC, KFAC, Capture, compute_ekfac, compute_kfac, hessian_sqrt_columns,
                               supported_layers, symeig)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("float64_default")]


def mlp(d_in, hidden, d_out, seed, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden, bias=bias), nn.Tanh(), nn.Linear(hidden, d_out, bias=bias)).double()


def empirical_fisher(model, x, y):
    """(1/N) sum_n grad l_n grad l_n^T over all parameters, by torch.func per-example gradients."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])
    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g[k].reshape(x.shape[0], -1) for k in params], dim=1)
    return flat.T @ flat / x.shape[0], flat


def per_example_reference(model, x, y):
    """a_n (with a 1) and g_n = d l_n / d s_n of every Linear, by a loop of autograd calls."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    out = {i: ([], []) for i in range(len(linears))}
    for n in range(x.shape[0]):
        h, pre = x[n:n + 1], []
        for m in model:
            if isinstance(m, nn.Linear):
                out[len(pre)][0].append(torch.cat([h[0], torch.ones(1)]) if m.bias is not None else h[0])
                h = m(h)
                h.retain_grad()
                pre.append(h)
            else:
                h = m(h)
        F.cross_entropy(h, y[n:n + 1]).backward()
        for i, s in enumerate(pre):
            out[i][1].append(s.grad[0].clone())
    return [(torch.stack(a), torch.stack(g)) for a, g in out.values()]


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 7), d_in=st.integers(1, 4), d_out=st.integers(2, 4), seed=st.integers(0, 10**6))
def test_single_linear_factors_are_expectations(n, d_in, d_out, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, d_out)).double()
    x, y = torch.randn(n, d_in), torch.randint(0, d_out, (n,))
    kfac = compute_kfac(model, (x, y))
    (a, g), = per_example_reference(model, x, y)
    A, G = kfac.factors[0]
    torch.testing.assert_close(A, a.T @ a / n)
    torch.testing.assert_close(G, g.T @ g / n)


def test_two_layer_mlp_factors_and_batches():
    model = mlp(3, 5, 4, seed=1)
    x, y = torch.randn(9, 3), torch.randint(0, 4, (9,))
    ref = per_example_reference(model, x, y)
    whole = compute_kfac(model, (x, y))
    batched = compute_kfac(model, [(x[:4], y[:4]), (x[4:], y[4:])])  # averaged over examples, not batches
    for (a, g), (A, G), (A2, G2) in zip(ref, whole.factors, batched.factors):
        torch.testing.assert_close(A, a.T @ a / 9)
        torch.testing.assert_close(G, g.T @ g / 9)
        torch.testing.assert_close(A2, A)
        torch.testing.assert_close(G2, G)


def test_to_dense_is_kron_in_param_order_and_matches_per_example_outer_products():
    """With one example the empirical Fisher block is exactly vec(g a^T) vec(g a^T)^T = kron(A, G)
    (column-stacking vec) = K-FAC; checked against torch.func gradients in parameter order."""
    model = nn.Sequential(nn.Linear(3, 4)).double()
    x, y = torch.randn(1, 3), torch.tensor([2])
    kfac = compute_kfac(model, (x, y))
    fisher, _ = empirical_fisher(model, x, y)
    torch.testing.assert_close(kfac.to_dense(), fisher)
    # without a bias, the parameter order is vec_row(W): kron(G, A) == P kron(A, G) P^T
    model = nn.Sequential(nn.Linear(3, 4, bias=False)).double()
    kfac = compute_kfac(model, (torch.randn(5, 3), torch.randint(0, 4, (5,))))
    A, G = kfac.factors[0]
    perm = torch.arange(12).reshape(3, 4).T.reshape(-1)  # column-stacking index of each row-major entry
    torch.testing.assert_close(kfac.to_dense(), torch.kron(A, G)[perm][:, perm])
    torch.testing.assert_close(kfac.to_dense(), torch.kron(G, A))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10**6), damping=st.floats(1e-3, 1.0))
def test_mv_and_solve_equal_dense(seed, damping):
    model = mlp(3, 4, 3, seed=seed % 1000)
    torch.manual_seed(seed)
    x, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    for op in (compute_kfac(model, (x, y)), compute_ekfac(model, (x, y))):
        dense = op.to_dense()
        v = torch.randn(dense.shape[0], 2)
        torch.testing.assert_close(op.mv(v), dense @ v)
        torch.testing.assert_close(op.solve(v[:, 0], damping), torch.linalg.solve(dense + damping * torch.eye(len(v)), v[:, 0]))
    # K-FAC's pi-damped (factored) solve against the dense factored matrix
    kfac = compute_kfac(model, (x, y))
    v = torch.randn(sum(p.numel() for p in kfac.params))
    dense = []
    for A, G in kfac.factors:
        tA, tG = float(A.diagonal().mean()), float(G.diagonal().mean())
        pi = (tA / tG) ** 0.5
        Ad = A + pi * damping ** 0.5 * torch.eye(A.shape[0])
        Gd = G + damping ** 0.5 / pi * torch.eye(G.shape[0])
        dense.append(torch.kron(Gd, Ad))
    blocks = torch.block_diag(*dense)
    perms = torch.cat([b.permutation() + off for b, off in zip(kfac.blocks, [0, kfac.blocks[0].numel])])
    blocks = blocks[perms][:, perms]
    torch.testing.assert_close(kfac.solve(v, damping, factored=True), torch.linalg.solve(blocks, v))


def test_ekfac_diagonal_is_exact_projection_and_beats_kfac():
    """s = diag(U^T F U) for U = kron(U_G, U_A) (row-major), and ||F - EKFAC||_F <= ||F - KFAC||_F per block."""
    for seed in range(4):
        model = mlp(3, 4, 3, seed=seed)
        torch.manual_seed(seed)
        x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
        fisher, _ = empirical_fisher(model, x, y)
        kfac, ekfac = compute_kfac(model, (x, y)), compute_ekfac(model, (x, y))
        off = 0
        for i, b in enumerate(ekfac.blocks):
            block = fisher[off:off + b.numel, off:off + b.numel]
            perm = b.permutation()
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(len(perm))
            block_rm = block[inv][:, inv]  # row-major [W | b] order
            ua, ug = ekfac.bases[i]
            u = torch.kron(ug, ua)
            torch.testing.assert_close(ekfac.diagonals[i].reshape(-1), torch.diagonal(u.T @ block_rm @ u))
            off += b.numel
        err_k = torch.linalg.norm(fisher - kfac.to_dense())
        err_e = torch.linalg.norm(fisher - ekfac.to_dense())
        assert err_e <= err_k + 1e-12
        assert err_e < err_k  # strictly better on random nets (a test that could fail)


def test_kfac_equals_exact_ggn_on_deep_linear_net_with_one_example():
    """Deep linear net, squared loss, one example: the GGN block of layer l is exactly
    (a a^T) (x) (J_l^T J_l), which is K-FAC with fisher='ggn' (reference: dense Jacobian)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False), nn.Linear(2, 3, bias=False)).double()
    x, y = torch.randn(1, 3), torch.randn(1, 3)
    kfac = compute_kfac(model, (x, y), fisher="ggn", likelihood="gaussian")
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = torch.func.jacrev(lambda p: functional_call(model, p, (x,))[0])(params)
    J = torch.cat([jac[k].reshape(3, -1) for k in params], dim=1)
    ggn = J.T @ J
    dense = kfac.to_dense()
    off = 0
    for b in kfac.blocks:
        sl = slice(off, off + b.numel)
        torch.testing.assert_close(dense[sl, sl], ggn[sl, sl])
        off += b.numel


def test_true_fisher_sampling_converges_to_ggn():
    model = mlp(2, 3, 3, seed=5)
    x = torch.randn(4, 2)
    exact = compute_kfac(model, (x, torch.zeros(4, dtype=torch.long)), fisher="ggn")
    gen = torch.Generator().manual_seed(0)
    mc = compute_kfac(model, (x, torch.zeros(4, dtype=torch.long)), fisher="true", mc_samples=4000, generator=gen)
    for (A, G), (A2, G2) in zip(exact.factors, mc.factors):
        torch.testing.assert_close(A2, A)
        torch.testing.assert_close(G2, G, atol=0.05 * float(G.abs().max()), rtol=0)


def test_categorical_hessian_sqrt():
    f = torch.randn(3, 4)
    s = hessian_sqrt_columns(f, "categorical")  # (C, N, C)
    p = torch.softmax(f, -1)
    h = torch.einsum("kno,knp->nop", s, s)
    torch.testing.assert_close(h, torch.diag_embed(p) - p[:, :, None] * p[:, None, :])


@settings(max_examples=6, deadline=None)
@given(stride=st.integers(1, 2), padding=st.integers(0, 1), dilation=st.integers(1, 2), bias=st.booleans(),
       seed=st.integers(0, 10**6))
def test_conv2d_factors_equal_explicit_unfold(stride, padding, dilation, bias, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, 2, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    model = nn.Sequential(conv, nn.Flatten())
    x = torch.randn(3, 2, 5, 5)
    with torch.no_grad():
        d_out = model(x).shape[1]
    model.append(nn.Linear(d_out, 2).double())
    y = torch.randint(0, 2, (3,))
    kfac = compute_kfac(model, (x, y))
    # reference: explicit patches by Python loops over output pixels
    n, t_h = 3, (5 + 2 * padding - dilation - 1) // stride + 1
    xp = F.pad(x, (padding,) * 4)
    patches = []
    for i in range(t_h):
        for j in range(t_h):
            r, c = i * stride, j * stride
            patch = xp[:, :, r:r + dilation + 1:dilation, c:c + dilation + 1:dilation].reshape(n, -1)
            patches.append(torch.cat([patch, torch.ones(n, 1)], 1) if bias else patch)
    a = torch.stack(patches, 1)  # (N, T, C k k)
    out = conv(x)
    out.retain_grad()
    F.cross_entropy(model[2](out.flatten(1)), y, reduction="sum").backward()
    g = out.grad.flatten(2).transpose(1, 2)
    A, G = kfac.factors[0]
    torch.testing.assert_close(A, torch.einsum("nti,ntj->ij", a, a) / (n * t_h * t_h))
    torch.testing.assert_close(G, torch.einsum("nti,ntj->ij", g, g) / n)
    # the per-example gradients sum_t g a^T are the true ones: EKFAC diagonal vs torch.func
    ekfac = compute_ekfac(model, (x, y))
    fisher, _ = empirical_fisher(model, x, y)
    b = ekfac.blocks[0]
    perm = b.permutation()
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    block = fisher[:b.numel, :b.numel][inv][:, inv]
    ua, ug = ekfac.bases[0]
    u = torch.kron(ug, ua)
    torch.testing.assert_close(ekfac.diagonals[0].reshape(-1), torch.diagonal(u.T @ block @ u))


def test_capture_mean_loss_scaling_matches_per_example():
    """Capture(grad_scale=None) undoes the 1/N of a mean loss."""
    model = mlp(3, 4, 2, seed=2)
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    with Capture(supported_layers(model)) as cap:
        F.cross_entropy(model(x), y).backward()
        a, g = cap.get("2")
    ref = per_example_reference(model, x, y)[1]
    torch.testing.assert_close(a[:, 0], ref[0])
    torch.testing.assert_close(g[0, :, 0], ref[1])


def test_errors():
    with pytest.raises(ValueError, match="no trainable layer"):
        compute_kfac(nn.Sequential(nn.BatchNorm1d(3)), (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="fisher"):
        compute_kfac(mlp(2, 2, 2, 0), (torch.randn(2, 2), torch.zeros(2, dtype=torch.long)), fisher="bogus")
    with pytest.raises(FloatingPointError, match="NaN"):
        symeig(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), name="x")
    kfac = compute_kfac(mlp(2, 2, 2, 0), (torch.randn(2, 2), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="expected a vector"):
        kfac.mv(torch.randn(3))
    assert isinstance(kfac, KFAC) and isinstance(kfac.to_ekfac(), EKFAC)


def test_symeig_reconstructs_and_handles_singular():
    torch.manual_seed(0)
    v = torch.randn(6, 2)
    m = (v @ v.T).float()  # rank 2, float32
    e, u = symeig(m)
    assert e.dtype == torch.float32 and (e >= 0).all()
    torch.testing.assert_close(u @ torch.diag(e) @ u.T, m, atol=1e-5, rtol=1e-5)


def test_damped_inverse_matches_dense_and_survives_singular_factors():
    from geomopt.curvature import damped_inverse
    torch.manual_seed(1)
    v = torch.randn(5, 2)
    m = v @ v.T  # singular PSD
    torch.testing.assert_close(damped_inverse(m, 0.1), torch.linalg.inv(m + 0.1 * torch.eye(5)))
    with pytest.raises(FloatingPointError, match="NaN"):
        damped_inverse(m * float("inf"), 0.1)


# ---------------------------------------------------------------- fast paths (precision, solves, factored rotation)
def spd(d, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(3 * d, d, generator=g, dtype=torch.float64)
    return (scale * v.T @ v / (3 * d)).to(dtype)


def test_damped_inverse_float32_path_matches_float64_reference():
    from geomopt.curvature.kronecker import damped_inverse, damped_solve, factor_precision
    m = spd(40, 0)
    assert factor_precision(m, 0.1) == torch.float32
    ref = torch.linalg.inv(m.double() + 0.1 * torch.eye(40, dtype=torch.float64))
    inv = damped_inverse(m, 0.1)
    assert inv.dtype == torch.float32
    torch.testing.assert_close(inv.double(), ref, rtol=1e-4, atol=1e-5)
    for rows in (7, 90):  # fewer rows than the factor's size: triangular solves; more: inverse and GEMM
        rhs = torch.randn(rows, 40).float()
        torch.testing.assert_close(damped_solve(m, 0.1, rhs).double(), rhs.double() @ ref, rtol=1e-4, atol=1e-5)
        rhs64 = rhs.double()
        torch.testing.assert_close(damped_solve(m.double(), 0.1, rhs64), rhs64 @ ref)


def test_ill_conditioned_float32_factor_is_factorized_in_float64():
    """Shift 1e-6 of the norm: a float32 Cholesky inverse is visibly wrong (checked), ours is not."""
    from geomopt.curvature.kronecker import damped_inverse, factor_precision
    d = 60
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    m64 = (q * torch.logspace(0, -8, d, dtype=torch.float64)) @ q.T
    m = m64.float()
    shift = 1e-6
    assert factor_precision(m, shift) == torch.float64
    ref = torch.linalg.inv(m.double() + shift * torch.eye(d, dtype=torch.float64))
    err = lambda x: float(torch.linalg.norm(x.double() - ref) / torch.linalg.norm(ref))  # noqa: E731
    naive = torch.cholesky_inverse(torch.linalg.cholesky(m + shift * torch.eye(d, dtype=torch.float32)))
    assert err(naive) > 1e-4  # float32 would not do (so the test can fail)
    assert err(damped_inverse(m, shift)) < 1e-6


def test_indefinite_and_nonfinite_factors():
    from geomopt.curvature.kronecker import damped_inverse, damped_solve
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    evals = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    m = (q * evals) @ q.T  # indefinite: Cholesky fails in float32 and float64
    ref = (q / (evals.clamp_min(0) + 0.1)) @ q.T  # the PSD projection, damped
    for dtype in (torch.float32, torch.float64):
        inv = damped_inverse(m.to(dtype), 0.1, name="layer 'x' factor A")
        assert inv.dtype == dtype and torch.isfinite(inv).all()
        torch.testing.assert_close(inv.double(), ref, rtol=1e-4, atol=1e-4)
        rhs = torch.randn(3, 5, dtype=dtype)
        torch.testing.assert_close(damped_solve(m.to(dtype), 0.1, rhs).double(), rhs.double() @ ref, rtol=1e-4, atol=1e-4)
    bad = m.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="layer 'x' factor A.*NaN"):
        damped_inverse(bad, 0.1, name="layer 'x' factor A")
    with pytest.raises(FloatingPointError, match="layer 'x' factor A.*NaN"):
        damped_solve(bad.float(), 0.1, torch.randn(2, 5), name="layer 'x' factor A")
    with pytest.raises(ValueError, match="positive shift"):
        damped_inverse(m, 0.0)


def test_factored_solve_of_columns_equals_column_by_column():
    model = mlp(3, 4, 3, seed=3)
    x, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    kfac = compute_kfac(model, (x, y))
    v = torch.randn(sum(p.numel() for p in kfac.params), 3)
    cols = torch.stack([kfac.solve(v[:, j], 0.05, factored=True) for j in range(3)], dim=1)
    torch.testing.assert_close(kfac.solve(v, 0.05, factored=True), cols)
    torch.testing.assert_close(kfac.solve(v, 0.05), torch.stack([kfac.solve(v[:, j], 0.05) for j in range(3)], 1))


@pytest.mark.parametrize("t,d_out,d_in", [(1, 3, 4), (2, 5, 6), (7, 3, 9), (7, 9, 3), (12, 4, 5)])
def test_eigenbasis_diagonal_every_contraction_order_equals_brute_force(t, d_out, d_in):
    from geomopt.curvature import eigenbasis_diagonal
    torch.manual_seed(t)
    a, g = torch.randn(5, t, d_in), torch.randn(2, 5, t, d_out)
    ua, _ = torch.linalg.qr(torch.randn(d_in, d_in))
    ug, _ = torch.linalg.qr(torch.randn(d_out, d_out))
    ref = sum((ug.T @ sum(torch.outer(g[k, n, s], a[n, s]) for s in range(t)) @ ua) ** 2
              for k in range(2) for n in range(5)) / 5
    torch.testing.assert_close(eigenbasis_diagonal(a, g, ua, ug), ref)
    torch.testing.assert_close(eigenbasis_diagonal(a.transpose(1, 2).contiguous().transpose(1, 2), g, ua, ug), ref)


def test_factored_rotation_is_the_dense_rotation_or_refuses():
    from geomopt.curvature.kronecker import factored_rotation
    torch.manual_seed(0)
    n, d_out, d_in = 4, 6, 7
    a, g = torch.randn(n, 1, d_in), torch.randn(1, n, 1, d_out)
    ua, _ = torch.linalg.qr(torch.randn(d_in, d_in))
    ug, _ = torch.linalg.qr(torch.randn(d_out, d_out))
    m = sum(torch.outer(g[0, i, 0], a[i, 0]) for i in range(n)) / n  # the gradient those records produce
    ga, aa = g @ ug, a @ ua
    torch.testing.assert_close(factored_rotation(m, a, g, ga, aa), ug.T @ m @ ua)
    torch.testing.assert_close(factored_rotation(0.3 * m, a, g, ga, aa), ug.T @ (0.3 * m) @ ua)  # clipped gradient
    other = torch.randn(d_out, d_in)
    assert factored_rotation(m + 1e-6 * other, a, g, ga, aa) is None  # e.g. an L2 term: rotate densely
    tol = 4 * n ** 0.5 * torch.finfo(m.dtype).eps * g.norm() * a.norm() / n  # the rounding level it accepts
    for _ in range(10):  # rank-one mismatches (a hook on one output) 10x that level: seen by the probes
        u, v = torch.randn(d_out), torch.randn(d_in)
        e = torch.outer(u, v) * (10 * tol / (u.norm() * v.norm()))
        assert factored_rotation(m + e, a, g, ga, aa) is None
    g2 = torch.cat([g, g])
    assert factored_rotation(2 * m, a, g2, g2 @ ug, aa) is None  # several backward passes
    assert factored_rotation(m * float("nan"), a, g, ga, aa) is None


def test_inplace_activation_after_layer_backpropagates_to_parameters():
    """Capture.output_tensors refuses outputs modified in place; the factors stay exact."""
    torch.manual_seed(4)
    lin1, lin2 = nn.Linear(3, 5), nn.Linear(5, 2)
    inplace = nn.Sequential(lin1, nn.ReLU(inplace=True), lin2)
    plain = nn.Sequential(lin1, nn.ReLU(), lin2)
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    for (A, G), (A2, G2) in zip(compute_kfac(inplace, (x, y)).factors, compute_kfac(plain, (x, y)).factors):
        torch.testing.assert_close(A, A2)
        torch.testing.assert_close(G, G2)
    with Capture(supported_layers(inplace), keep_outputs=True) as cap:
        inplace(x)
        assert cap.output_tensors() is None
    with Capture(supported_layers(plain), keep_outputs=True) as cap:
        plain(x)
        assert len(cap.output_tensors()) == 2


@settings(max_examples=8, deadline=None)
@given(stride=st.integers(1, 2), padding=st.sampled_from([0, 1, "same"]), dilation=st.integers(1, 2),
       bias=st.booleans(), shared=st.booleans(), seed=st.integers(0, 10**6))
def test_conv2d_per_example_gradients_equal_torch_func(stride, padding, dilation, bias, shared, seed):
    """The grouped-convolution per-example gradients (no patches) are torch.func's, also for a layer
    called twice (shared weights: summed over calls) and for the einsum of patches."""
    from geomopt.curvature import per_example_gradients
    if padding == "same":
        stride = 1  # torch allows 'same' only with stride 1
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 2, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = conv, nn.LazyLinear(2)

        def forward(self, x):
            h = self.conv(x)
            if shared:  # the same weights on a second input: per-example gradients add up
                h = h + self.conv(x.flip(-1))
            return self.head(torch.relu(h).flatten(1))
    model = Net()
    x, y = torch.randn(4, 2, 7, 7), torch.randint(0, 2, (4,))
    model(x)  # materialize the lazy head
    _, per_example = empirical_fisher(model, x, y)
    d_out = conv.weight.shape[0]
    ref = per_example[:, :conv.weight.numel()].reshape(4, d_out, -1)
    if bias:
        ref = torch.cat([ref, per_example[:, conv.weight.numel():conv.weight.numel() + d_out, None]], -1)
    with Capture(supported_layers(model, include=lambda m: m is conv)) as cap:
        F.cross_entropy(model(x), y).backward()
        m = cap.per_example_gradients("conv")
        torch.testing.assert_close(m[0], ref)
        torch.testing.assert_close(cap.per_example_gradients("conv", 1, 3)[0], ref[1:3])
        if not shared:
            a, g = cap.get("conv")
            torch.testing.assert_close(per_example_gradients(a, g)[0], ref)


def test_capture_refuses_an_input_modified_in_place_after_the_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 16, 2))
    x, y = torch.randn(3, 1, 6, 6), torch.randint(0, 2, (3,))
    with Capture(supported_layers(model)) as cap:
        F.cross_entropy(model(x), y).backward()
        x.mul_(2)
        with pytest.raises(RuntimeError, match="layer '0'.*modified in place"):
            cap.inputs("0")
        with pytest.raises(RuntimeError, match="layer '0'.*modified in place"):
            cap.per_example_gradients("0")
        cap.inputs("2")  # the other layer's input is intact


@pytest.mark.parametrize("t,d_out,d_in", [(7, 3, 4), (12, 4, 5)])
def test_eigenbasis_diagonal_takes_per_example_gradients_without_inputs(t, d_out, d_in):
    """When both sides rotate after forming M_n, a given per-example rule replaces the inputs entirely
    (they are not even expanded), chunk by chunk."""
    from geomopt.curvature import eigenbasis_diagonal, per_example_gradients
    from geomopt.curvature import kronecker
    torch.manual_seed(t)
    a, g = torch.randn(5, t, d_in), torch.randn(1, 5, t, d_out)
    ua, _ = torch.linalg.qr(torch.randn(d_in, d_in))
    ug, _ = torch.linalg.qr(torch.randn(d_out, d_out))
    chunks = []

    def rule(i, j):
        chunks.append((i, j))
        return per_example_gradients(a[i:j], g[:, i:j])

    def no_inputs():
        raise AssertionError("the inputs were expanded")
    old = kronecker.CHUNK_ELEMENTS
    kronecker.CHUNK_ELEMENTS = 2 * d_out * d_in  # two examples per chunk
    try:
        s = eigenbasis_diagonal(no_inputs, g, ua, ug, per_example=rule)
    finally:
        kronecker.CHUNK_ELEMENTS = old
    assert chunks == [(0, 2), (2, 4), (4, 6)]
    torch.testing.assert_close(s, eigenbasis_diagonal(a, g, ua, ug))


@pytest.mark.parametrize("stride,dilation,bias", [(1, 1, True), (2, 1, False), (1, 2, True)])
def test_conv2d_grouped_per_example_gradients_of_several_passes_equal_patch_products(stride, dilation, bias):
    """K backward passes at once (the true-Fisher / GGN passes): the grouped convolution equals the
    products of the explicit patches (LayerHandler's generic rule) for every pass."""
    from geomopt.curvature import Conv2dHandler, LayerHandler
    torch.manual_seed(stride + 2 * dilation)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=1, dilation=dilation, bias=bias)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        out_shape = conv(x).shape
    grads = torch.randn(3, *out_shape)  # K = 3
    handler = Conv2dHandler()
    fast = handler.per_example_gradients(conv, x, grads)
    torch.testing.assert_close(fast, LayerHandler.per_example_gradients(handler, conv, x, grads))
    assert fast.shape == (3, 5, 4, 27 + bias)
