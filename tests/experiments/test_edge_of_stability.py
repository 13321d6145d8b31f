"""Edge-of-stability reproduction: the per-run statistics on hand-made trajectories, and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest

from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.edge_of_stability import edge_statistics


def test_edge_statistics_by_hand():
    # lr = 0.5: threshold 2/lr = 4; ratios 0.25, 0.5, 1.0, 1.1, 0.7 at steps 0, 10, 20, 30, 40
    traj = {"sharp_steps": [0, 10, 20, 30, 40], "sharpness": [1.0, 2.0, 4.0, 4.4, 2.8],
            "loss_steps": list(range(1, 41)), "loss": [2.0 - 0.04 * t for t in range(1, 41)]}
    traj["loss"][25] = 5.0  # one spike (step 26) inside the window: two changes, one increase
    s = edge_statistics(traj, 0.5, reach=0.9, band=0.2)
    assert s["reach_step"] == 20 and s["peak"] == pytest.approx(1.1) and s["initial_ratio"] == pytest.approx(0.25)
    assert s["median_ratio"] == pytest.approx(1.0)
    assert s["within"] == pytest.approx(2 / 3)  # 1.0 and 1.1 within 0.2 of 1; 0.7 not
    assert s["loss_increases"] == 1
    assert s["loss_drop"] == pytest.approx((2.0 - 0.04 * 21) / (2.0 - 0.04 * 40))  # loss at step 20 is record 21
    never = edge_statistics({**traj, "sharpness": [1.0, 1.0, 1.0, 1.0, 1.0]}, 0.5, reach=0.9, band=0.2)
    assert never["reach_step"] is None and never["loss_increases"] == 0


def test_tiny_reproduction_writes_section_claims_and_figure(tmp_path):
    exp = EXPERIMENTS["edge-of-stability"]
    section = exp.reproduce(tmp_path, quick=True, jobs=1, overrides={
        "train_size": 60, "widths": [4], "lrs": [0.5, 2.0], "steps": 10, "track_every": 5, "seeds": [0, 1]})
    root = section.parent
    assert (root / "sharpness.png").is_file() and (root / "results.csv").is_file()
    claims = json.loads((root / "claims.json").read_text())
    assert {c["id"] for c in claims["claims"]} == {"sharpness-reaches-2-over-lr", "sharpness-hovers-at-2-over-lr",
                                                   "loss-falls-non-monotonically"}
    lines = (root / "runs" / "lr0.5" / "seed0" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines if line.strip()]
    assert [r["step"] for r in metrics if r["kind"] == "callback"] == [0, 5, 10]
    with pytest.raises(ValueError, match="two seeds"):
        exp.reproduce(tmp_path, quick=True, overrides={"seeds": [0]})
