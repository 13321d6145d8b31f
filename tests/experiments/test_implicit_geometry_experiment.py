"""implicit-geometry end to end on a tiny configuration: outputs, gates, seeds and a ledger round trip."""

from __future__ import annotations

import json

import pytest
import torch

from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.implicit_geometry import digits_pair, synthetic_separable
from geomopt.experiments.records import read_csv
from geomopt.implicit.geometry import max_margin
from tests.experiments.ledger_roundtrip import ledger_problems

PNG = b"\x89PNG"
TINY = {"reg_n": 4, "reg_d": 10, "potentials": ["lp:3"], "md_lrs": [0.6, 1.0], "momenta": [0.5],
        "ng_lrs": [1.0, 0.5],
        "sd_lrs": [0.6, 1.0], "reg_steps": 1500, "synth_n": 12, "synth_side": 3, "digits_n": 30, "steps": 150,
        "points": 8, "adagrad_steps": 150}


def test_tiny_reproduction_writes_everything_and_gates_short_runs(tmp_path):
    section = EXPERIMENTS["implicit-geometry"].reproduce(tmp_path, tier="quick", jobs=1, seeds=2, overrides=TINY)
    root = tmp_path / "implicit-geometry"
    data = json.loads(section.read_text())
    assert "Gunasekar" in data["title"] and any("Run-quality gates" in p for p in data["paragraphs"])
    for fig in data["figures"]:
        assert (root / fig["file"]).read_bytes().startswith(PNG)
    rows = read_csv(root / "results.csv")
    parts = {r["part"] for r in rows}
    assert parts == {"bregman", "md", "ng", "sd", "max-margin", "separable", "adagrad"}
    assert {r["loss"] for r in rows if r["part"] == "separable"} == {"exponential", "logistic"}
    assert {r["seed"] for r in rows} == {0, 1}
    assert all(r["certified_gap"] < 1e-5 for r in rows if r["part"] == "max-margin")
    claims = {c["id"]: c for c in json.loads((root / "claims.json").read_text())["claims"]}
    assert list(claims) == ["mirror-bregman", "step-size-dependence", "natural-gradient", "max-margin",
                            "geometry-decides", "adagrad-init"]
    assert all(c["seeds"] == [0, 1] for c in claims.values())
    assert claims["mirror-bregman"]["verdict"] == "holds"  # tiny problems converge to the Bregman projection
    # 150 steps leave the separable and AdaGrad runs short of their gates: untestable, never decided
    assert claims["adagrad-init"]["verdict"] == "untestable here" and "not frozen" in claims["adagrad-init"]["why"]
    assert ledger_problems(tmp_path, "implicit-geometry", tmp_path / "ledger") == []


def test_synthetic_set_has_its_planted_margin_and_digits_are_two_classes():
    x, y = synthetic_separable(30, 4, 0.5, seed=3)
    assert x.shape == (30, 4, 4) and set(y.tolist()) == {-1.0, 1.0}
    assert max_margin(x, y, "l2").margin >= 0.5 * (1 - 1e-6)  # at least the planted l2 margin
    x, y = digits_pair((3, 8), 40, seed=1)
    assert x.shape == (40, 8, 8) and x.dtype == torch.float64 and set(y.tolist()) == {-1.0, 1.0}
    assert not torch.equal(x, digits_pair((3, 8), 40, seed=2)[0])
    with pytest.raises(ValueError, match="digits_n = 5000"):
        digits_pair((3, 8), 5000, seed=0)


def test_tables_and_figures_survive_a_diverged_run(tmp_path):
    """A run that diverged before its first record (no curve, NaN numbers) and a regression limit at inf are
    shown as non-finite, not a crash; the claims gate them."""
    import math

    from geomopt.experiments import implicit_geometry as ig
    from geomopt.experiments.records import Records
    from tests.claims.test_implicit_geometry import EXP, regression_rows, separable_records
    sep = separable_records()
    bad = sep.where(dataset="digits", norm="l1", seed=0, loss="exponential")[0]
    bad.update(diverged=True, log_loss=math.nan, gap_l1=math.nan, angle=math.nan)
    del sep.curves[bad["run"]]
    rows = regression_rows()
    rows[-1].update(diverged=True, residual=math.inf, w=[math.inf] * EXP.reg_d)
    margins = [{"run": f"mm/{d}/{n}/{s}", "part": "max-margin", "dataset": d, "norm": n, "seed": s, "margin": 0.5}
               for d in ig.DATASETS for n in ig.NORMS for s in EXP.seeds]
    records = Records(EXP, rows + sep.rows + margins, sep.curves)
    table = ig._separable_table(records)
    assert table["rows"][4][:3] == ["exponential", "digits", "l1"] and "(1 non-finite)" in table["rows"][4][4]
    assert "(1 non-finite)" in ig._regression_table(records)["rows"][-1][3]
    assert (tmp_path / ig._gap_figure(records, tmp_path)["file"]).is_file()
    max_margin_claim = next(c for c in ig.CLAIMS if c.id == "max-margin")
    assert "digits l1 steepest descent on the exponential loss, seed 0: diverged" in \
        max_margin_claim.evaluate(records)["why"]
    assert (tmp_path / ig._natural_gradient_figure(records, tmp_path)["file"]).is_file()
