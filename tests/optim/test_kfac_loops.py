"""K-FAC / EKFAC in any training loop, against the plain loop ``zero_grad; forward; backward; step`` as
the reference: zero_grad after the forward, step(closure), gradient accumulation over micro-batches
(against one batch of all their examples) and the training engine give the same parameters; the
true / GGN Fisher pass leaves module buffers and the user's RNG stream untouched; every option is
validated (naming it and its group); NaN/inf raises before any parameter changes; zero-damping solves
are pseudo-inverses (against torch.linalg.pinv of the dense matrix)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomopt.curvature import compute_ekfac, compute_kfac
from geomopt.optim import EKFAC, KFAC

pytestmark = pytest.mark.usefixtures("float64_default")

STEPS = 3


def net(seed=0, bn=False):
    torch.manual_seed(seed)
    if bn:
        return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3))
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def batches(n=8, steps=STEPS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(steps)]


def make(cls, model, fisher):
    kw = dict(lr=0.2, damping=0.05, momentum=0.9, update_freq=1, inv_freq=2, fisher=fisher, seed=0)
    return cls(model, kl_clip=None, **kw)


def run(cls, fisher, order):
    model = net()
    opt = make(cls, model, fisher)
    for x, y in batches():
        if order == "plain":
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        elif order == "zero_grad_after_forward":
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        elif order == "closure":
            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)
        elif order == "accumulate":  # two micro-batches, each loss divided by their number
            opt.zero_grad()
            for xi, yi in ((x[:4], y[:4]), (x[4:], y[4:])):
                (F.cross_entropy(model(xi), yi) / 2).backward()
            opt.step()
        elif order == "accumulate_late_zero_grad":  # forward, zero_grad, backward per micro-batch... after the first
            loss = F.cross_entropy(model(x[:4]), y[:4]) / 2
            opt.zero_grad()
            loss.backward()
            (F.cross_entropy(model(x[4:]), y[4:]) / 2).backward()
            opt.step()
        elif order == "evaluation_forward_with_grad":  # a forward without backward is not a micro-batch
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            model(x).sum()  # never backpropagated
            opt.step()
    return model, opt


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
@pytest.mark.parametrize("fisher", ["empirical", "ggn"])
@pytest.mark.parametrize("order", ["zero_grad_after_forward", "closure", "accumulate", "accumulate_late_zero_grad",
                                   "evaluation_forward_with_grad"])
def test_every_loop_order_gives_the_plain_loops_update(cls, fisher, order):
    ref, ref_opt = run(cls, fisher, "plain")
    got, opt = run(cls, fisher, order)
    for p, q in zip(ref.parameters(), got.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
    for (_, m, _), (_, m2, _) in zip(ref_opt.layers, opt.layers):
        for key in ("A", "G"):
            torch.testing.assert_close(opt.state[m2.weight][key], ref_opt.state[m.weight][key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
def test_accumulated_factors_equal_the_whole_batch_factors(cls):
    """Reference: compute_kfac on the 8 examples at once; the optimizer saw two micro-batches of 4."""
    model = net()
    x, y = batches(steps=1)[0]
    ref = compute_kfac(model, (x, y))
    opt = cls(model, momentum=0.0, kl_clip=None, lr=0.0, damping=0.1, factor_decay=0.0, update_freq=1, inv_freq=1)
    opt.zero_grad()
    for xi, yi in ((x[:4], y[:4]), (x[4:], y[4:])):
        (F.cross_entropy(model(xi), yi) / 2).backward()
    opt.step()
    for (_, m, _), (a, g) in zip(opt.layers, ref.factors):
        torch.testing.assert_close(opt.state[m.weight]["A"], a)
        torch.testing.assert_close(opt.state[m.weight]["G"], g)
    if cls is EKFAC:  # the diagonal of the 8 examples in the new eigenbasis (factor_decay=0: the batch's)
        ekfac = compute_ekfac(model, (x, y))
        for (_, m, _), s in zip(opt.layers, ekfac.diagonals):
            torch.testing.assert_close(opt.state[m.weight]["S"], s)


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
def test_engine_gives_the_plain_loops_update(tmp_path, cls):
    from geomopt.train import fit
    data = batches()
    ref, _ = run(cls, "empirical", "plain")
    model = net()
    fit(model, make(cls, model, "empirical"), data, data[:1], epochs=1, out_dir=tmp_path, progress=False)
    for p, q in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
@pytest.mark.parametrize("fisher", ["true", "ggn"])
def test_fisher_pass_leaves_buffers_and_rng_untouched(cls, fisher):
    model = net(bn=True)
    opt = cls(model, momentum=0.0, kl_clip=None, lr=0.1, damping=0.1, update_freq=1, inv_freq=1, fisher=fisher)
    x, y = batches(steps=1)[0]
    torch.manual_seed(5)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    assert int(buffers["1.num_batches_tracked"]) == 1
    state = torch.get_rng_state()
    opt.step()
    after_step = torch.rand(4)
    torch.set_rng_state(state)
    assert torch.equal(after_step, torch.rand(4))  # the user's stream continues as if no pass had run
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k


def test_true_fisher_samples_are_reproducible_and_resume_exactly():
    """The sampled targets come from the optimizer's own generator (seed), saved in state_dict."""
    def loop(opt, model, data):
        for x, y in data:
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    data = batches(steps=4)
    runs = []
    for cut in (None, 2):
        model = net()
        opt = KFAC(model, momentum=0.0, kl_clip=None, lr=0.1, damping=0.1, update_freq=1, inv_freq=1, fisher="true",
                   seed=3)
        if cut is None:
            loop(opt, model, data)
        else:
            loop(opt, model, data[:cut])
            clone = net()
            clone.load_state_dict(model.state_dict())
            opt2 = KFAC(clone, momentum=0.0, kl_clip=None, lr=0.1, damping=0.1, update_freq=1, inv_freq=1,
                        fisher="true", seed=99)
            opt2.load_state_dict(opt.state_dict())
            loop(opt2, clone, data[cut:])
            model = clone
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("cls", [KFAC, EKFAC])
@pytest.mark.parametrize("key,bad", [("lr", float("nan")), ("lr", -1.0), ("damping", 0.0), ("damping", -1.0),
                                     ("damping", float("inf")), ("momentum", 1.0), ("momentum", float("nan")),
                                     ("weight_decay", float("nan")), ("weight_decay", -0.1)])
def test_options_are_validated_at_construction_in_groups_and_at_step(cls, key, bad):
    with pytest.raises(ValueError, match=f"option: {key} must be"):
        cls(net(), **{key: bad})
    model = net()
    with pytest.raises(ValueError, match=f"param group 1: {key} must be"):
        cls(model, param_groups=[{"params": model[0].parameters()}, {"params": model[2].parameters(), key: bad}])
    model = net()
    opt = cls(model, momentum=0.0, kl_clip=None, lr=0.1, damping=0.1, param_groups=[{"params": model[0].parameters()},
                                                        {"params": model[2].parameters()}])
    x, y = batches(steps=1)[0]
    opt.zero_grad(); F.cross_entropy(model(x), y).backward()
    opt.param_groups[1][key] = bad  # as a scheduler or a user might
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=f"param group 1: {key} must be"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("kw,match", [({"factor_decay": float("nan")}, "factor_decay"),
                                      ({"factor_decay": 1.0}, "factor_decay"),
                                      ({"kl_clip": float("inf")}, "kl_clip"), ({"kl_clip": 0.0}, "kl_clip"),
                                      ({"update_freq": 1.5}, "update_freq"), ({"inv_freq": 0}, "inv_freq"),
                                      ({"mc_samples": 0}, "mc_samples"), ({"diag_freq": 0}, "diag_freq")])
def test_other_options_are_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        EKFAC(net(), **kw)


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_nan_gradient_on_a_step_without_factor_update_raises_before_any_change(cls, fisher):
    model = net()
    opt = cls(model, kl_clip=None, lr=0.1, damping=0.1, momentum=0.9, update_freq=3, inv_freq=3, diag_freq=3,
              fisher=fisher) \
        if cls is EKFAC else cls(model, kl_clip=None, lr=0.1, damping=0.1, momentum=0.9, update_freq=3, inv_freq=3,
                                 fisher=fisher)
    (x, y), (x2, y2) = batches(steps=2)
    opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    opt.zero_grad(); F.cross_entropy(model(x2), y2).backward()
    model[2].weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    with pytest.raises(FloatingPointError, match="'2.weight'"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(torch.equal(v, state[k]) for k, v in opt.state[model[0].weight].items())


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
def test_nan_factor_raises_naming_the_layer_before_any_change(cls):
    model = net()
    opt = cls(model, momentum=0.0, kl_clip=None, lr=0.1, damping=0.1, update_freq=1, inv_freq=1)
    (x, y), (x2, y2) = batches(steps=2)
    opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    opt.state[model[2].weight]["G"][0, 0] = float("inf")  # e.g. an overflow in an earlier update
    opt.zero_grad(); F.cross_entropy(model(x2), y2).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="layer '2'"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_nan_output_in_the_true_fisher_pass_is_named():
    """A NaN input on a step whose gradient is not checked by the user: the Fisher pass reports it
    instead of torch.multinomial's 'probability tensor contains nan'."""
    model = net()
    opt = KFAC(model, momentum=0.0, kl_clip=None, lr=0.1, damping=0.1, update_freq=1, fisher="true")
    x, y = batches(steps=1)[0]
    x[0, 0] = float("nan")
    opt.zero_grad(); F.cross_entropy(model(x), y).backward()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # finite gradients, so only the Fisher pass meets the NaN
    with pytest.raises(FloatingPointError, match="KFAC: .*output has NaN"):
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def rank_deficient_case():
    """An always-zero input pixel (as in sklearn digits): A is singular."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False))
    torch.manual_seed(0)
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    x[:, 1] = 0.0
    return model, (x, y)


@pytest.mark.parametrize("factored", [False, True])
def test_kfac_solve_with_zero_damping_is_the_pseudo_inverse(factored):
    model, data = rank_deficient_case()
    kfac = compute_kfac(model, data)
    dense = kfac.to_dense()
    v = dense @ torch.randn(dense.shape[0])  # in the range
    out = kfac.solve(v, 0.0, factored=factored)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.linalg.pinv(dense, hermitian=True) @ v)
    torch.testing.assert_close(dense @ out, v)
    with pytest.raises(ValueError, match="damping"):
        kfac.solve(v, float("nan"))


def test_ekfac_solve_with_zero_damping_is_the_pseudo_inverse():
    model, data = rank_deficient_case()
    ekfac = compute_ekfac(model, data)
    dense = ekfac.to_dense()
    v = dense @ torch.randn(dense.shape[0])
    out = ekfac.solve(v, 0.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.linalg.pinv(dense, hermitian=True) @ v)
    with pytest.raises(ValueError, match="damping"):
        ekfac.solve(v, -1.0)
