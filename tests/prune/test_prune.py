"""Pruning: loss statistics against dense/finite-difference references, OBS against a constrained
quadratic minimization, schedules, and torch.nn.utils.prune interoperability."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn.utils import prune as tprune

from geomopt.nn import MLP
from geomopt.prune import (
    apply_masks,
    count_prunable,
    loss_statistics,
    masks_from_state_dict,
    predicted_loss_change,
    prune_lowest,
    prune_model,
    schedule_counts,
    scores,
    sparsity,
)
from geomopt.prune.scores import kronecker_obs, kronecker_obs_update, obs_saliency, obs_update


def _data(n=12, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    return x, y


def _model(seed=0):
    return MLP((5,), (4, 3), 3, seed=seed, init="torch").double()


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("kind,method", [("mlp", "hooks"), ("mlp", "vmap"), ("cnn", "vmap"), ("cnn", "auto"),
                                         ("cnn", "hooks")])
def test_ggn_diagonal_equals_dense_gauss_newton(kind, method):
    """diag(mean_n J_n^T (diag p - p p^T) J_n) from an explicit Jacobian (jacrev) and dense products."""
    if kind == "mlp":
        model = _model()
        x, y = _data()
    else:
        from geomopt.nn import CNN
        model = CNN((1, 4, 4), (2,), 3, hidden=(3,), seed=0).double()
        x = torch.randn(12, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(1))
    stats = loss_statistics(model, [(x, y)], n_examples=12, chunk=5, method=method)
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    for name in stats["ggn_diag"]:
        def logits(w, xi):
            return functional_call(model, {**params, name: w}, (xi.unsqueeze(0),))[0]
        dense = torch.zeros(params[name].numel(), params[name].numel(), dtype=torch.float64)
        for xi in x:
            J = jacrev(logits)(params[name], xi).reshape(3, -1)  # (C, P)
            p = torch.softmax(logits(params[name], xi), -1)
            H = torch.diag(p) - torch.outer(p, p)
            dense += J.T @ H @ J
        dense /= len(x)
        torch.testing.assert_close(stats["ggn_diag"][name].flatten(), torch.diagonal(dense), rtol=1e-10, atol=1e-12)
    assert set(stats["ggn_diag"]) == {n for n in names if n.endswith("weight")}


def test_mean_gradient_and_linear_model_match_finite_differences():
    """LM's predicted change -g_i theta_i equals (L(theta - eps theta_i e_i) - L(theta)) / eps to first order."""
    model = _model(1)
    x, y = _data(seed=1)
    stats = loss_statistics(model, [(x[:7], y[:7]), (x[7:], y[7:])], n_examples=12, curvature=False)
    base = _loss(model, x, y).item()
    assert stats["loss"] == pytest.approx(base, rel=1e-12)
    eps = 1e-6
    w = model[3].weight
    for idx in [(0, 0), (1, 2), (2, 3)]:
        with torch.no_grad():
            old = w[idx].item()
            w[idx] = old * (1 - eps)
            fd = (_loss(model, x, y).item() - base) / eps
            w[idx] = old
        assert fd == pytest.approx(-stats["grad"]["3.weight"][idx].item() * old, rel=1e-4, abs=1e-9)


def test_scores_formulas_and_locality():
    model = _model(2)
    x, y = _data(seed=2)
    stats = loss_statistics(model, [(x, y)], n_examples=12)
    theta = model[1].weight.detach()
    g, d = stats["grad"]["1.weight"], stats["ggn_diag"]["1.weight"]
    expected = {"mp": 0.5 * theta ** 2 * 1.5, "lm": (g * theta).abs() + 0.25 * theta ** 2,
                "qm": (-g * theta + 0.5 * d * theta ** 2).abs() + 0.25 * theta ** 2,
                "obd": 0.5 * d * theta ** 2 + 0.25 * theta ** 2}
    for criterion, ref in expected.items():
        got = scores(model, criterion, stats, locality=0.5)["1.weight"]
        torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="unknown pruning criterion 'snip'"):
        scores(model, "snip", stats)
    with pytest.raises(ValueError, match="needs the gradient"):
        scores(model, "qm", None)


def test_obs_equals_constrained_minimization_on_a_quadratic():
    """For L = 0.5 (t - t*)^T H (t - t*) at its minimum, min over t with t_q = 0 of L equals
    t*_q^2 / (2 [H^-1]_qq), reached at t* + obs_update (solved here by eliminating t_q)."""
    g = torch.Generator().manual_seed(3)
    n = 6
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    H = B @ B.T + 0.5 * torch.eye(n, dtype=torch.float64)
    t_star = torch.randn(n, generator=g, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    sal = obs_saliency(t_star, torch.diagonal(Hinv))
    for q in range(n):
        keep = [i for i in range(n) if i != q]
        # minimize 0.5 d^T H d with d_q = -t*_q: d_keep = -H_kk^-1 H_kq d_q
        d = torch.zeros(n, dtype=torch.float64)
        d[q] = -t_star[q]
        d[keep] = -torch.linalg.solve(H[keep][:, keep], H[keep, q] * d[q])
        best = 0.5 * d @ H @ d
        assert sal[q].item() == pytest.approx(best.item(), rel=1e-10)
        torch.testing.assert_close(obs_update(t_star, Hinv, q), d)


def test_kronecker_obs_equals_dense_obs_with_kron_hessian():
    """With H = A (x) G on vec(W) (column-major: index j * out + i), the Kronecker formulas equal dense OBS."""
    g = torch.Generator().manual_seed(4)
    out_f, in_f = 3, 4
    def spd(k):
        M = torch.randn(k, k, generator=g, dtype=torch.float64)
        return M @ M.T + torch.eye(k, dtype=torch.float64)
    A, G = spd(in_f), spd(out_f)
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    H = torch.kron(A, G)
    Hinv = torch.linalg.inv(H)
    vec = W.T.reshape(-1)  # column-major vec
    sal, _ = kronecker_obs(W, torch.linalg.inv(A), torch.linalg.inv(G))
    dense_sal = obs_saliency(vec, torch.diagonal(Hinv)).reshape(in_f, out_f).T
    torch.testing.assert_close(sal, dense_sal)
    removed = torch.zeros(out_f, in_f, dtype=torch.bool)
    removed[1, 2] = True
    delta = kronecker_obs_update(W, removed, torch.linalg.inv(A), torch.linalg.inv(G))
    dense_delta = obs_update(vec, Hinv, 2 * out_f + 1).reshape(in_f, out_f).T
    torch.testing.assert_close(delta, dense_delta)


@settings(max_examples=60, deadline=None, database=None)
@given(total=st.integers(1, 5000), p=st.floats(0, 0.999), steps=st.integers(1, 150))
def test_schedule_reaches_exactly_the_requested_sparsity(total, p, steps):
    counts = schedule_counts(total, p, steps)
    assert len(counts) == steps and all(c >= 0 for c in counts)
    assert sum(counts) == round(total * p)
    # each step removes about r = 1 - (1 - p)^(1/k) of what is left
    left = total
    for c in counts[:-1]:
        assert abs(c - left * (1 - (1 - p) ** (1 / steps))) <= 1 + 1e-9 * total
        left -= c


@pytest.mark.parametrize("criterion,steps", [("mp", 1), ("lm", 3), ("qm", 4), ("obd", 2)])
def test_iterative_pruning_reaches_target_and_predictions_are_recorded(criterion, steps):
    model = _model(5)
    x, y = _data(n=30, seed=5)
    history = prune_model(model, [(x, y)], criterion=criterion, target_sparsity=0.7, steps=steps, n_examples=30,
                          progress=False)
    total = count_prunable(model)
    assert sparsity(model) == pytest.approx(round(0.7 * total) / total)
    assert [h.step for h in history] == list(range(1, steps + 1))
    assert (history[0].predicted_change is None) == (criterion == "mp")
    assert history[-1].loss_after == pytest.approx(_loss(model, x, y).item(), rel=1e-10)


def test_qm_predicts_small_loss_changes():
    """The quadratic model's prediction tracks the actual change for a small pruning step."""
    torch.manual_seed(0)
    model = _model(6)
    x, y = _data(n=40, seed=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad(); _loss(model, x, y).backward(); opt.step()
    history = prune_model(model, [(x, y)], criterion="qm", target_sparsity=0.05, steps=1, n_examples=40,
                          progress=False)
    h = history[0]
    assert h.predicted_change == pytest.approx(h.actual_change, rel=0.5, abs=2e-3)


def test_pruned_weights_stay_zero_during_finetuning_and_masks_round_trip():
    model = _model(7)
    x, y = _data(n=20, seed=7)
    prune_model(model, [(x, y)], criterion="mp", target_sparsity=0.5, steps=2, n_examples=20, progress=False)
    assert tprune.is_pruned(model)
    masks = {n: m.clone() for n, m in masks_from_state_dict(model.state_dict()).items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(5):
        opt.zero_grad(); _loss(model, x, y).backward(); opt.step()
    for name, mask in masks.items():
        weight = model.get_submodule(name[:-len(".weight")]).weight
        assert bool((weight[~mask.bool()] == 0).all())
    # round trip into a fresh model through state_dict
    fresh = _model(99)
    apply_masks(fresh, masks_from_state_dict(model.state_dict()))
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x))
    # make pruning permanent with torch's own API
    for module in model.modules():
        if tprune.is_pruned(module) and hasattr(module, "weight_mask"):
            tprune.remove(module, "weight")
    assert not tprune.is_pruned(model)
    assert sparsity(model) == pytest.approx(round(0.5 * count_prunable(model)) / count_prunable(model))


def test_predicted_loss_change_sums_removed_weights():
    model = _model(8)
    x, y = _data(seed=8)
    stats = loss_statistics(model, [(x, y)], n_examples=12)
    weights = {"1.weight": model[1].weight.detach()}
    removed = {"1.weight": torch.zeros_like(weights["1.weight"], dtype=torch.bool)}
    removed["1.weight"][0, :2] = True
    theta = weights["1.weight"][0, :2]
    g, d = stats["grad"]["1.weight"][0, :2], stats["ggn_diag"]["1.weight"][0, :2]
    assert predicted_loss_change("qm", stats, removed, weights) == pytest.approx(
        float((-g * theta + 0.5 * d * theta ** 2).sum()))
    assert predicted_loss_change("mp", stats, removed, weights) is None
    assert not math.isnan(predicted_loss_change("obd", stats, removed, weights))


def test_prune_lowest_refuses_more_than_available():
    model = _model(9)
    s = scores(model, "mp")
    with pytest.raises(ValueError, match="only"):
        prune_lowest(model, s, count_prunable(model) + 1)


def test_hooks_method_refuses_layers_outside_the_curvature_registry():
    from geomopt.nn import CNN
    model = CNN((1, 8), (2,), 3, seed=0)  # Conv1d: not in geomopt.curvature's registry
    with pytest.raises(ValueError, match="method='vmap'"):
        loss_statistics(model, [(torch.randn(4, 1, 8), torch.tensor([0, 1, 2, 0]))], n_examples=4, method="hooks")


def test_kronecker_factors_are_exact_for_one_example():
    """With one example, K-FAC of a Linear layer is exact: GGN = (a a^T) (x) sum_c g_c g_c^T, so the
    exact Gauss-Newton diagonal equals outer(diag G, diag A); and A is the input second moment."""
    model = _model(10)
    x, y = _data(n=1, seed=10)
    stats = loss_statistics(model, [(x, y)], n_examples=1, kronecker=True)
    for name, (A, G) in stats["kfac"].items():
        torch.testing.assert_close(stats["ggn_diag"][name], torch.outer(torch.diagonal(G), torch.diagonal(A)))
    x, y = _data(n=12, seed=11)
    A = loss_statistics(model, [(x, y)], n_examples=12, kronecker=True)["kfac"]["1.weight"][0]
    torch.testing.assert_close(A, x.T @ x / 12)


def test_kobs_prunes_to_target_with_compensation():
    model = _model(12)
    x, y = _data(n=30, seed=12)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    history = prune_model(model, [(x, y)], criterion="kobs", target_sparsity=0.6, steps=2, n_examples=30,
                          compensate=True, progress=False)
    total = count_prunable(model)
    assert sparsity(model) == pytest.approx(round(0.6 * total) / total)
    assert all(h.predicted_change is not None and h.predicted_change >= 0 for h in history)
    # the surviving weights moved (the OBS compensation), pruned ones are exactly zero
    w, mask = model[1].weight, model[1].weight_mask.bool()
    assert not torch.allclose(w[mask], before["1.weight"][mask])
    assert bool((w[~mask] == 0).all())
    with pytest.raises(ValueError, match="kronecker=True"):
        scores(model, "kobs", loss_statistics(model, [(x, y)], n_examples=30))


def test_kobs_without_compensation_leaves_surviving_weights():
    model = _model(13)
    x, y = _data(n=30, seed=13)
    before = model[1].weight.detach().clone()
    prune_model(model, [(x, y)], criterion="kobs", target_sparsity=0.5, steps=1, n_examples=30, progress=False)
    mask = model[1].weight_mask.bool()
    torch.testing.assert_close(model[1].weight[mask], before[mask])


def test_gradual_pruning_during_training_follows_the_cubic_schedule(tmp_path):
    from geomopt.prune import GradualPruner, gradual_sparsity
    from geomopt.train import fit, read_metrics
    torch.manual_seed(0)
    model = _model(14)
    x, y = _data(n=40, seed=14)
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]
    pruner = GradualPruner(batches, criterion="qm", final_sparsity=0.7, start_step=2, end_step=10, every=2,
                           n_examples=40)
    fit(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), batches, batches, epochs=3,
        out_dir=tmp_path, step_callback=pruner, progress=False)
    total = count_prunable(model)
    assert sparsity(model) == pytest.approx(round(0.7 * total) / total)
    logged = [r for r in read_metrics(tmp_path) if r["kind"] == "callback"]
    assert [r["step"] for r in logged] == [4, 6, 8, 10]  # step 2: schedule still at 0
    for r in logged:
        assert r["sparsity"] == pytest.approx(round(total * gradual_sparsity(r["step"], 2, 10, 0.7)) / total)
    for module in (model[1], model[3], model[5]):
        assert bool((module.weight[~module.weight_mask.bool()] == 0).all())
