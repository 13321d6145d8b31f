"""Edge-of-stability reproduction: the per-run statistics on a hand-made trace, the logged sharpness against a
dense float64 Hessian (both losses), and a tiny end-to-end run whose claims are decided on the stored curves."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from geomopt.curvature import read_batches
from geomopt.data import make_loader
from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.edge_of_stability import edge_statistics
from geomopt.runs import load_run
from geomopt.train import TrainConfig, read_metrics, train
from geomopt.train.tasks import one_hot_mse, task_objective


def test_edge_statistics_by_hand():
    # lr = 0.5: threshold 2/lr = 4; ratios 0.25, 0.5, 1.0, 1.05, 1.3, 0.7 at steps 0, 10, ..., 50
    sharp = {0: 1.0, 10: 2.0, 20: 4.0, 30: 4.2, 40: 5.2, 50: 2.8}
    curve = [{"step": t, "loss": 2.0 - 0.03 * t, **({"sharpness": sharp[t]} if t in sharp else {})} for t in range(51)]
    curve[26]["loss"] = 5.0  # one spike (step 26) inside the window: one increase
    s = edge_statistics(curve, 0.5, band=0.1)
    assert s["reach_step"] == 20 and s["peak"] == pytest.approx(1.3) and s["initial_ratio"] == pytest.approx(0.25)
    assert s["within"] == pytest.approx(2 / 4)  # 1.0 and 1.05 within 10% of 1; 1.3 above, 0.7 below
    assert s["above"] == pytest.approx(1 / 4)
    assert s["median_ratio"] == pytest.approx(1.025)
    assert s["loss_increases"] == 1
    assert s["loss_drop"] == pytest.approx((2.0 - 0.03 * 20) / (2.0 - 0.03 * 50))
    below = edge_statistics([{**c, "sharpness": 3.8} if "sharpness" in c else c for c in curve], 0.5, band=0.1)
    assert below["reach_step"] is None and below["peak"] == pytest.approx(0.95)  # a plateau below 2/lr: no window


@pytest.mark.parametrize("loss", ["mse", "task"])
def test_tracked_sharpness_is_the_dense_float64_hessian_eigenvalue(tmp_path, loss):
    """The logged lambda_max after 3 full-batch steps equals the top eigenvalue of the Hessian of the same loss
    built densely by torch.autograd.functional.hessian in float64 (independent of the curvature toolbox)."""
    cfg = TrainConfig(widths=(3,), data="digits", train_size=40, batch_size=40, epochs=3, lr=0.1, init="torch",
                      track_sharpness=3, sharpness_examples=40, loss=loss)
    train(cfg, tmp_path, progress=False)
    logged = [r["sharpness"] for r in read_metrics(tmp_path) if r["kind"] == "callback"]
    _, model, _, bundle = load_run(tmp_path)
    ((x, y),) = read_batches(make_loader(bundle.train, 40, shuffle=False), None, 40)
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    loss_fn = one_hot_mse if loss == "mse" else torch.nn.functional.cross_entropy

    def f(flat):
        params, i = {}, 0
        for n, shape in zip(names, shapes):
            params[n] = flat[i:i + shape.numel()].reshape(shape)
            i += shape.numel()
        return loss_fn(torch.func.functional_call(model, params, (x.double(),)), y)

    top = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, theta, vectorize=True))[-1])
    assert len(logged) == 2 and logged[-1] == pytest.approx(top, rel=2e-3)


def test_mse_loss_is_half_the_squared_distance_to_one_hot():
    out = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([2, 0])
    assert float(one_hot_mse(out, y)) == pytest.approx(0.5 * ((0.25 + 1 + 1) + 1) / 2)
    with pytest.raises(ValueError, match="mse loss for classification"):
        one_hot_mse(out, torch.tensor([[2], [0]]))
    with pytest.raises(ValueError, match="loss 'mse' is for classification"):
        task_objective("regression", "mse")
    with pytest.raises(ValueError, match="field 'loss': expected"):
        TrainConfig(loss="hinge")


def test_tiny_reproduction_writes_curves_section_and_claims(tmp_path):
    exp = EXPERIMENTS["edge-of-stability"]
    section = exp.reproduce(tmp_path, tier="quick", jobs=1, overrides={
        "train_size": 60, "widths": [4], "lrs": [0.5], "steps": 10, "track_every": 5, "seeds": [0, 1]})
    root = section.parent
    assert (root / "sharpness.png").is_file() and (root / "results.csv").is_file()
    claims = json.loads((root / "claims.json").read_text())
    assert {c["id"] for c in claims["claims"]} == {f"{c}-{loss}" for c in ("sharpening", "edge", "loss-falls")
                                                   for loss in ("mse", "cross-entropy")}
    assert claims["tier"] == "quick" and claims["seeds"] == [0, 1]
    lines = (root / "runs" / "mse" / "lr0.5" / "seed0" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines if line.strip()]
    logged = {r["step"]: r["sharpness"] for r in metrics if r["kind"] == "callback"}
    assert list(logged) == [0, 5, 10]
    with (root / "curves.csv").open() as f:  # the sharpness traces are stored with the run's loss per step
        stored = [r for r in csv.DictReader(f) if r["run"] == "runs/mse/lr0.5/seed0"]
    assert [int(r["step"]) for r in stored] == list(range(11))
    assert {int(r["step"]): float(r["sharpness"]) for r in stored if r["sharpness"]} == logged
    with pytest.raises(ValueError, match="two seeds"):
        exp.reproduce(tmp_path, tier="quick", overrides={"seeds": [0]})
    with pytest.raises(ValueError, match="losses must be among"):
        exp.reproduce(tmp_path, tier="quick", overrides={"losses": ["hinge"]})


def test_stored_claims_are_recomputed_from_the_ledger_files(tmp_path):
    """What `geomopt results check` does: the config from experiment.json, the records from the csv files, the
    same verdicts as claims.json."""
    from geomopt.experiments.ledger import _recompute
    exp = EXPERIMENTS["edge-of-stability"]
    root = exp.reproduce(tmp_path, tier="quick", jobs=1, overrides={
        "train_size": 40, "widths": [4], "lrs": [0.5], "steps": 6, "track_every": 3, "losses": ["mse"],
        "seeds": [0, 1]}).parent
    stored = json.loads((root / "claims.json").read_text())
    assert [c["verdict"] for c in _recompute(stored, root)] == [c["verdict"] for c in stored["claims"]]
