"""Tangent kernel vs an explicit per-example Jacobian loop (float64); alignment; trajectory complexity."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from geomopt.measures import TrajectoryComplexity, alignment, kernel_alignment, logging_points, ntk_gram
from geomopt.nn import CNN, MLP
from geomopt.train import fit, read_metrics


def explicit_jacobian(model, x):
    """Reference: one autograd.grad call per (example, output), rows in (example, output) order."""
    params = [p for p in model.parameters()]
    rows = []
    for i in range(len(x)):
        out = model(x[i:i + 1])[0]
        for a in range(out.shape[0]):
            g = torch.autograd.grad(out[a], params, retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


@pytest.mark.parametrize("make,shape", [
    (lambda: MLP((5,), (7, 6), 3, seed=0).double(), (5,)),
    (lambda: CNN((1, 6, 6), (3, 4), 3, hidden=(5,), seed=0).double(), (1, 6, 6)),
])
def test_ntk_gram_equals_explicit_jacobian_product(make, shape):
    model = make().eval()
    x = torch.randn(6, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    j = explicit_jacobian(model, x)
    ref = (j @ j.T).reshape(6, 3, 6, 3)
    k, layers = ntk_gram(model, x, per_layer=True, chunk_size=4)
    torch.testing.assert_close(k, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sum(layers.values()), ref, rtol=1e-10, atol=1e-10)


def test_alignment_of_the_target_kernel_is_one_and_formula_on_a_hand_kernel():
    y = torch.tensor([0, 1, 2, 1, 0, 2, 2])
    yc = nn.functional.one_hot(y, 3).double()
    yc = yc - yc.mean(0)
    kernel = torch.einsum("ia,jb->iajb", yc, yc)
    assert alignment(kernel, y) == pytest.approx(1.0, abs=1e-12)
    # hand-made (n, n) kernel, one real target: A = yc^T Kc yc / (||Kc||_F ||yc||^2)
    k2 = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    h = torch.eye(3, dtype=torch.float64) - 1 / 3
    kc, tc = h @ k2 @ h, t - t.mean()
    ref = float(tc @ kc @ tc) / (float(kc.norm()) * float(tc @ tc))
    assert alignment(k2, t) == pytest.approx(ref, abs=1e-12)


def test_kernel_trace_is_a_sum_over_examples_whatever_the_chunking():
    """Pitfall: the trace must not be scaled by the number of batches."""
    model = MLP((4,), (6,), 2, seed=1).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(2, (10,))
    j = explicit_jacobian(model, x)
    ref = float((j ** 2).sum())
    for chunk in (3, 10):
        assert kernel_alignment(model, x, y, chunk_size=chunk)["trace"] == pytest.approx(ref, rel=1e-10)


def test_batchnorm_in_train_mode_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="BatchNorm '1' is in training mode"):
        ntk_gram(model, torch.randn(4, 3))


def test_logging_points():
    assert logging_points(12) == [0, 5, 6, 7, 8, 10, 11]


def test_trajectory_complexity_logged_by_fit(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = MLP((5,), (8,), 2, seed=0)
    cb = TrajectoryComplexity(x[:16], y[:16], num_classes=2)
    weights = []

    def probe(step, m):
        weights.append(torch.cat([p.detach().reshape(-1).clone() for p in m.parameters()]))

    def both(step, m):
        probe(step, m)
        return cb(step, m)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    summary = fit(model, opt, loader, loader, epochs=2, out_dir=tmp_path, step_callback=both, progress=False)
    recs = [r for r in read_metrics(tmp_path) if r["kind"] == "callback"]
    assert [r["step"] for r in recs] == logging_points(summary["steps"])
    # recompute the complexity from the logged traces and the recorded weights
    total, prev = 0.0, None
    for r in recs:
        w = weights[r["step"]]
        if prev is not None:
            total += float((w - prev).norm()) * math.sqrt(r["trace"]) / 16
        prev = w
    assert recs[-1]["complexity"] == pytest.approx(total, rel=1e-6)
    assert set(recs[0]["per_layer"]) == {"1", "3"}


def test_fit_target_train_loss_stops_early_and_resume_keeps_it(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = MLP((5,), (16,), 2, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    s = fit(model, opt, loader, loader, epochs=50, out_dir=tmp_path, target_train_loss=0.3, progress=False)
    assert s["reached_target"] and s["epochs"] < 50 and s["train_loss"] <= 0.3
    s2 = fit(model, opt, loader, loader, epochs=50, out_dir=tmp_path, target_train_loss=0.3, progress=False,
             resume=True)
    assert s2["epochs"] == s["epochs"] and s2["steps"] == s["steps"]


def test_dropout_in_train_mode_is_refused_in_its_own_words():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"Dropout '2' \(p=0.5\) is active"):
        ntk_gram(model, torch.randn(4, 3))
    assert ntk_gram(model.eval(), torch.randn(4, 3)).shape == (4, 2, 4, 2)


def test_alignment_with_a_missing_class_equals_the_value_with_num_classes_given():
    """A probe set without the last class: the classes come from the kernel (3 outputs), not from max(y) + 1."""
    model = MLP((4,), (6,), 3, seed=2).double()
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])          # class 2 absent
    k = ntk_gram(model.eval(), x)
    # reference: the formula with 3 one-hot columns (the last one all zero after centering)
    yc = nn.functional.one_hot(y, 3).double()
    yc = yc - yc.mean(0)
    kc = k - k.mean(0, keepdim=True)
    kc = (kc - kc.mean(2, keepdim=True)).reshape(24, 24)
    ref = float(yc.reshape(-1) @ kc @ yc.reshape(-1)) / (float(kc.norm()) * float((yc ** 2).sum()))
    assert alignment(k, y) == pytest.approx(alignment(k, y, num_classes=3), abs=1e-12)
    assert alignment(k, y) == pytest.approx(ref, abs=1e-12)
    stats = kernel_alignment(model, x, y)
    assert stats["alignment"] == pytest.approx(kernel_alignment(model, x, y, num_classes=3)["alignment"], abs=1e-12)
    assert stats["alignment"] == pytest.approx(ref, abs=1e-10)
    rec = TrajectoryComplexity(x, y)(0, model)
    assert rec["alignment"] == pytest.approx(ref, abs=1e-10)
    with pytest.raises(ValueError, match="num_classes=2 but the kernel has 3 outputs"):
        alignment(k, y, num_classes=2)


def test_ntk_of_a_model_with_nan_weights_names_the_parameter():
    model = MLP((4,), (5,), 2, seed=0)
    with torch.no_grad():
        model[3].weight[0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"tangent kernel: parameter '3.weight' .* 1 non-finite"):
        ntk_gram(model.eval(), torch.randn(3, 4))
