"""K-FAC / EKFAC optimizers against independent references: one step equals the dense damped
inverse (built from per-example gradients by torch.func and explicit Kronecker products) times
the gradient; running averages by hand; state_dict round trips; exact resume through
geomopt.train; warnings and errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from geomopt.curvature import compute_ekfac, compute_kfac
from geomopt.optim import EKFAC, KFAC, build_optimizer
from geomopt.train import TrainConfig, read_metrics, train


pytestmark = pytest.mark.usefixtures("float64_default")


def net(seed=0, conv=False):
    torch.manual_seed(seed)
    if conv:
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 3))
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def data(conv=False, n=6, seed=1):
    torch.manual_seed(seed)
    x = torch.randn(n, 1, 4, 4) if conv else torch.randn(n, 4)
    return x, torch.randint(0, 3, (n,))


def flat_grad(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def dense_empirical_fisher(model, x, y):
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = vmap(grad(lambda p, xi, yi: F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])),
             in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g[k].reshape(x.shape[0], -1) for k in params], dim=1)
    return flat.T @ flat / x.shape[0]


def pi_damped_dense(model, x, y, damping):
    """blockdiag((A + pi sqrt(l)) (x) (G + sqrt(l)/pi)) in parameter order, from K-FAC factors."""
    kfac = compute_kfac(model, (x, y))
    blocks = []
    for b, (A, G) in zip(kfac.blocks, kfac.factors):
        pi = (float(A.diagonal().mean()) / float(G.diagonal().mean())) ** 0.5
        d = torch.kron(G + damping ** 0.5 / pi * torch.eye(len(G)), A + pi * damping ** 0.5 * torch.eye(len(A)))
        perm = b.permutation()
        blocks.append(d[perm][:, perm])
    return torch.block_diag(*blocks)


@pytest.mark.parametrize("conv", [False, True])
def test_kfac_first_step_is_pi_damped_natural_gradient(conv):
    model, (x, y) = net(conv=conv), data(conv)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    dense = pi_damped_dense(model, x, y, 0.1)
    opt = KFAC(model, momentum=0.0, kl_clip=None, lr=0.5, damping=0.1, factor_decay=0.0, update_freq=1, inv_freq=1)
    g = flat_grad(model, x, y)
    opt.step()
    new = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(new, theta - 0.5 * torch.linalg.solve(dense, g))


def test_ekfac_first_step_uses_exact_eigenbasis_diagonal():
    """factor_decay=0: after one step the diagonal is the batch's (reset, then replaced)."""
    model, (x, y) = net(), data()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ekfac = compute_ekfac(model, (x, y)).to_dense()
    fisher = dense_empirical_fisher(model, x, y)
    opt = EKFAC(model, momentum=0.0, kl_clip=None, lr=0.3, damping=0.05, factor_decay=0.0, update_freq=1, inv_freq=1)
    g = flat_grad(model, x, y)
    opt.step()
    new = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(new, theta - 0.3 * torch.linalg.solve(ekfac + 0.05 * torch.eye(len(g)), g))
    assert torch.linalg.norm(ekfac - fisher) > 0  # sanity: EKFAC is an approximation here


def test_running_averages_and_frequencies():
    model, (x, y) = net(), data(n=8)
    opt = EKFAC(model, momentum=0.0, kl_clip=None, lr=0.01, damping=0.1, factor_decay=0.6, update_freq=2, inv_freq=4)
    seen, diags = [], []
    for i in range(5):
        xi, yi = x[i % 4 * 2:(i % 4) * 2 + 2], y[i % 4 * 2:(i % 4) * 2 + 2]
        if i % 2 == 0:
            seen.append(compute_kfac(model, (xi, yi)).factors[1])
        basis_before = opt.state[model[2].weight].get("U_A")
        diags.append((xi, yi))
        opt.zero_grad()
        F.cross_entropy(model(xi), yi).backward()
        opt.step()
        st = opt.state[model[2].weight]
        if i in (1, 2, 3):  # basis recomputed at steps 0 and 4 only
            assert torch.equal(st["U_A"], basis_before)
    A_ref = seen[0][0]
    for A, _ in seen[1:]:
        A_ref = 0.6 * A_ref + 0.4 * A
    torch.testing.assert_close(opt.state[model[2].weight]["A"], A_ref)


def test_state_dict_round_trip_and_continuation():
    for cls in (KFAC, EKFAC):
        model, (x, y) = net(), data()
        opt = cls(model, kl_clip=None, lr=0.1, damping=0.1, momentum=0.9, update_freq=2, inv_freq=3)
        for _ in range(4):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        sd = copy.deepcopy(opt.state_dict())  # as saved to disk (torch shares tensors in memory)
        assert sd["kronecker"]["step"] == 4 and "A" in sd["state"][0] and "G" in sd["state"][0]
        clone = net()
        clone.load_state_dict(model.state_dict())
        opt2 = cls(clone, kl_clip=None, lr=0.1, damping=0.1, momentum=0.9, update_freq=2, inv_freq=3)
        opt2.load_state_dict(sd)
        sd2 = opt2.state_dict()
        for k, v in sd["state"].items():
            for key, t in v.items():
                assert torch.equal(t, sd2["state"][k][key]), key
        for _ in range(4):
            for m, o in ((model, opt), (clone, opt2)):
                o.zero_grad(); F.cross_entropy(m(x), y).backward(); o.step()
        for p, q in zip(model.parameters(), clone.parameters()):
            assert torch.equal(p, q)


def test_scheduler_and_param_groups():
    model, (x, y) = net(), data()
    opt = KFAC(model, momentum=0.0, kl_clip=None, lr=0.1, damping=0.1,
               param_groups=[{"params": model[0].parameters(), "lr": 0.0},
                                                         {"params": model[2].parameters()}])
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step(); sched.step()
    after = list(model.parameters())
    assert torch.equal(before[0], after[0]) and not torch.equal(before[2], after[2])
    assert opt.param_groups[1]["lr"] == 0.05


def test_kl_clip_bounds_the_step():
    model, (x, y) = net(), data()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    dense = pi_damped_dense(model, x, y, 0.1)
    g = flat_grad(model, x, y)
    d = torch.linalg.solve(dense, g)
    lr, clip = 0.5, 1e-4
    nu = min(1.0, (clip / (lr ** 2 * float(d @ g))) ** 0.5)
    assert nu < 1
    opt = KFAC(model, momentum=0.0, lr=lr, damping=0.1, factor_decay=0.0, update_freq=1, inv_freq=1, kl_clip=clip)
    flat_grad(model, x, y)
    opt.step()
    new = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(new, theta - lr * nu * d)


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
@pytest.mark.parametrize("fisher", ["true", "ggn"])
def test_true_fisher_pass_leaves_grads_and_uses_sampled_targets(cls, fisher):
    model, (x, y) = net(), data()
    opt = cls(model, momentum=0.0, kl_clip=None, lr=0.1, damping=0.1, fisher=fisher, update_freq=1, inv_freq=1,
              factor_decay=0.0)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(0)
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    if fisher == "ggn" and cls is KFAC:  # factors are the exact GGN ones, whatever the observed targets
        A, G = opt.state[model[2].weight]["A"], opt.state[model[2].weight]["G"]
        clone = net()
        ref = compute_kfac(clone, (x, y), fisher="ggn").factors[1]
        torch.testing.assert_close(A, ref[0])
        torch.testing.assert_close(G, ref[1])


def test_unsupported_layers_fall_back_with_one_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    x, y = data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = EKFAC(model, momentum=0.0, kl_clip=None, lr=0.1, damping=0.1)
        for _ in range(3):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    relevant = [w for w in caught if "plain gradient" in str(w.message)]
    assert len(relevant) == 1 and "1.weight" in str(relevant[0].message) and "BatchNorm1d" in str(relevant[0].message)
    # the BatchNorm parameters took SGD steps
    bn_w = model[1].weight.detach().clone()
    opt.zero_grad(); F.cross_entropy(model(x), y).backward()
    expected = bn_w - 0.1 * model[1].weight.grad
    opt.step()
    torch.testing.assert_close(model[1].weight.detach(), expected)


def test_errors():
    with pytest.raises(ValueError, match="no optimized layer"):
        KFAC(nn.Sequential(nn.BatchNorm1d(3)), lr=0.1)
    with pytest.raises(ValueError, match="damping"):
        KFAC(net(), damping=0.0)
    with pytest.raises(ValueError, match="fisher"):
        EKFAC(net(), fisher="exact")
    with pytest.raises(ValueError, match="update_freq"):
        EKFAC(net(), update_freq=0)
    with pytest.raises(ValueError, match="not a parameter"):
        KFAC(net(), param_groups=[{"params": [nn.Parameter(torch.zeros(2))]}])
    model, (x, y) = net(), data()
    opt = KFAC(model, momentum=0.0, kl_clip=None, lr=0.1)
    opt.zero_grad(); F.cross_entropy(model(x), y).backward()
    model[0].weight.grad = None
    with torch.no_grad():
        x_bad = x.clone(); x_bad[0, 0] = float("nan")
    opt.zero_grad(); F.cross_entropy(model(x_bad), y).backward()
    with pytest.raises(FloatingPointError, match="NaN"):
        opt.step()
    late = KFAC(net(), momentum=0.0, kl_clip=None, lr=0.1)  # built after the backward: one warning, plain gradient step
    with pytest.warns(UserWarning, match="no forward/backward"):
        late.step()


def test_registry_builds_kronecker_optimizers():
    opt = build_optimizer("ekfac", net(), lr=0.1, damping=0.01, update_freq=5, inv_freq=50, fisher="true")
    assert isinstance(opt, EKFAC) and opt.param_groups[0]["momentum"] == 0.9 and opt.inv_freq == 50
    with pytest.raises(ValueError, match="kfac/ekfac"):
        build_optimizer("sgd", net(), lr=0.1, damping=0.01)


@pytest.mark.parametrize("optimizer", ["kfac", "ekfac"])
def test_resume_through_engine_gives_identical_metrics(tmp_path, optimizer):
    torch.set_default_dtype(torch.float32)
    cfg = TrainConfig(optimizer=optimizer, widths=(16,), epochs=2, batch_size=64, lr=0.02, train_size=300,
                      damping=0.03, update_freq=2, inv_freq=3, dropout=0.1, checkpoint_every=3)
    full = train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False, stop_after_steps=7)
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "full")) == strip(read_metrics(tmp_path / "cut"))
    assert full["train_loss"] == resumed["train_loss"] and full["train_loss"] < 2.0


def test_cli_trains_with_ekfac(tmp_path, capsys):
    from geomopt.cli import main
    torch.set_default_dtype(torch.float32)
    rc = main(["train", "--model", "cnn", "--widths", "4", "--data", "digits", "--train-size", "200", "--epochs", "1",
               "--batch-size", "50", "--optimizer", "ekfac", "--lr", "0.02", "--damping", "0.03", "--update-freq", "2",
               "--inv-freq", "2", "--fisher", "true", "--kl-clip", "0.01", "--diag-freq", "3", "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    cfg = TrainConfig.load(tmp_path / "config.json")
    assert (cfg.optimizer, cfg.damping, cfg.update_freq, cfg.fisher, cfg.kl_clip, cfg.diag_freq) == (
        "ekfac", 0.03, 2, "true", 0.01, 3)
    assert "ekfac on cnn/digits" in capsys.readouterr().out


def test_engine_turns_optimizer_floating_point_error_into_stopped_run(tmp_path):
    from geomopt.train import NonFiniteLossError, fit
    torch.set_default_dtype(torch.float32)

    class Failing(torch.optim.SGD):
        def step(self, closure=None):
            raise FloatingPointError("KFAC: layer '0': NaN/inf in its inputs")

    model = nn.Linear(4, 3)
    loader = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    with pytest.raises(NonFiniteLossError, match="layer '0'"):
        fit(model, Failing(model.parameters(), lr=0.1), loader, loader, epochs=1, out_dir=tmp_path, progress=False)


def wide_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))


@pytest.mark.parametrize("case", ["plain", "clipped", "weight_decay", "l2_in_loss"])
def test_ekfac_factored_rotation_step_equals_dense_reference(case):
    """Small batch, wide layers: the gradient is rotated into the eigenbasis from the per-example
    quantities (factored_layers) when it is exactly the captured one (also when clipped), densely
    otherwise; the step equals the EKFAC operator's dense solve either way."""
    model = wide_net()
    x, y = torch.randn(4, 12), torch.randint(0, 5, (4,))
    wd = 0.01 if case == "weight_decay" else 0.0
    ekfac = compute_ekfac(model, (x, y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    opt = EKFAC(model, momentum=0.0, kl_clip=None, lr=0.3, damping=0.05, factor_decay=0.0, update_freq=1, inv_freq=1,
                weight_decay=wd)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    if case == "l2_in_loss":
        loss = loss + 1e-3 * sum((p ** 2).sum() for p in model.parameters())
    loss.backward()
    if case == "clipped":
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]) + wd * theta
    opt.step()
    new = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(new, theta - 0.3 * ekfac.solve(g, 0.05))
    expected = {"0", "2"} if case in ("plain", "clipped") else set()
    assert opt.factored_layers == expected


@pytest.mark.parametrize("conv", [False, True])
def test_ekfac_diag_freq_re_estimates_the_diagonal_only_on_its_steps(conv):
    """With lr = 0 every step sees the same statistics s, so after the reset to e_G e_A^T at step 0 the
    running diagonal is decay^u S_0 + (1 - decay^u) s after u updates: diag_freq=3 after steps 0..3
    (updates at 0 and 3) equals diag_freq=1 after steps 0..1."""
    x, y = data(conv)
    states = {}
    for diag_freq, steps in [(3, 4), (1, 2), (1, 4)]:
        model = net(conv=conv)
        opt = EKFAC(model, momentum=0.0, kl_clip=None, lr=0.0, damping=0.1, factor_decay=0.5, update_freq=100,
                    inv_freq=100, diag_freq=diag_freq)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        states[diag_freq, steps] = [opt.state[m.weight]["S"].clone() for _, m, _ in opt.layers]
    for a, b, c in zip(states[3, 4], states[1, 2], states[1, 4]):
        torch.testing.assert_close(a, b)
        assert (a - c).abs().max() > 1e-3 * c.abs().max()  # two more updates do change it
    with pytest.raises(ValueError, match="diag_freq"):
        EKFAC(net(), diag_freq=0)
    with pytest.raises(ValueError, match="EKFAC option"):
        build_optimizer("kfac", net(), lr=0.1, diag_freq=2)


def test_ekfac_between_diagonal_steps_linear_layers_still_rotate_from_their_examples(monkeypatch):
    """diag_freq=3 on wide layers with few examples (2N < d_out + d_in): the diagonal steps (0, 3) rotate
    both layers from their examples; between them only the layer where rotating the examples first is
    still cheaper than the dense rotation does (layer 0: 3364 < 6032 multiply-adds; layer 2: 1936 > 1870);
    the trajectory equals the one with every rotation dense."""
    import geomopt.optim.kronecker_geometry as kfac_module  # where the EKFAC direction rotates
    torch.manual_seed(3)
    x, y = torch.randn(4, 12), torch.randint(0, 5, (4,))

    def run(dense):
        if dense:
            monkeypatch.setattr(kfac_module, "factored_rotation", lambda *args: None)
        model = wide_net()
        opt = EKFAC(model, kl_clip=None, lr=0.01, damping=0.1, momentum=0.9, update_freq=2, inv_freq=4, diag_freq=3)
        factored = []
        for _ in range(5):  # diagonal at steps 0 and 3, new eigenbasis at 4
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            factored.append(sorted(opt.factored_layers))
        monkeypatch.undo()
        return model, factored
    fast, factored = run(dense=False)
    slow, none = run(dense=True)
    both, first = ["0", "2"], ["0"]
    assert factored == [both, first, first, both, first] and none == [[]] * 5
    for p, q in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("diag_decay,expected", [(None, 0.95), (0.75, 0.75), (0.0, 0.0)])
def test_ekfac_kfac_eigenvalues_keep_weight_decay_to_the_j(diag_decay, expected):
    """With lr = 0 every step sees the same batch diagonal s, so after the reset to S_0 = e_G e_A^T and j
    diagonal updates (S_j - s) = d^j (S_0 - s): with d = 0.95 and inv_freq = 20, 0.95 after the first step,
    0.95^20 = 36% after the 20th, 61% on average (the docstring's numbers); d = 0 is the batch's diagonal."""
    model, (x, y) = net(), data()
    opt = EKFAC(model, momentum=0.0, kl_clip=None, lr=0.0, damping=0.1, factor_decay=0.95, update_freq=1,
                inv_freq=20, diag_decay=diag_decay)
    ekfac = compute_ekfac(model, (x, y))
    kfac_diagonals = compute_kfac(model, (x, y)).to_ekfac().diagonals  # e_G e_A^T
    weights = []
    for _ in range(20):
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        m, s0, s = opt.layers[-1][1], kfac_diagonals[-1], ekfac.diagonals[-1]
        weights.append(float(((opt.state[m.weight]["S"] - s) * (s0 - s)).sum() / (s0 - s).square().sum()))
    torch.testing.assert_close(torch.tensor(weights), torch.tensor([expected ** (j + 1) for j in range(20)]))
    if diag_decay is None:
        assert weights[0] == pytest.approx(0.95) and weights[-1] == pytest.approx(0.3585, abs=1e-4)
        assert sum(weights) / 20 == pytest.approx(0.609, abs=1e-3)
    with pytest.raises(ValueError, match="diag_decay"):
        EKFAC(net(), diag_decay=1.0)
