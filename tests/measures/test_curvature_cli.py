"""`geomopt curvature RUN`: top-k, trace and spectrum of a tiny trained run against the dense Hessian."""

from __future__ import annotations

import json

import pytest
import torch

from geomopt.cli import main
from geomopt.curvature import HessianOperator, read_batches
from geomopt.data import make_loader
from geomopt.runs import load_run
from geomopt.train import TrainConfig, train


def test_curvature_cli_top_k_trace_spectrum(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(widths=(4,), epochs=2, train_size=100, batch_size=50, lr=0.1), run, progress=False)
    assert main(["curvature", str(run), "--top-k", "2", "--trace", "--spectrum", "--examples", "80"]) == 0
    res = json.loads((run / "curvature.json").read_text())
    assert (run / "spectrum.png").is_file() and "wrote" in capsys.readouterr().out
    _, model, _, bundle = load_run(run)
    dense = HessianOperator(model.double(), [(x.double(), y) for x, y in read_batches(
        make_loader(bundle.train, 1000, shuffle=False), None, 80)]).to_dense()
    evals = torch.linalg.eigvalsh(dense)
    assert res["top_eigenvalues"] == pytest.approx(evals.flip(0)[:2].tolist(), rel=1e-2)
    assert res["trace"] == pytest.approx(float(evals.sum()), rel=0.03)  # 3 x the 1% stated tolerance
    weights = torch.tensor(res["spectrum_weights"])
    torch.testing.assert_close(weights.sum(1), torch.ones(len(weights)), rtol=0, atol=1e-5)
    assert main(["curvature", str(run)]) == 2  # nothing asked for
    assert "at least one of" in capsys.readouterr().err


def test_curvature_cli_refuses_a_nan_weight_and_bad_counts_in_one_line(tmp_path, capsys):
    """A NaN weight in the checkpoint: exit 2, one line naming the parameter, curvature.json untouched
    (the old code printed a LinAlgError traceback for --top-k, 'trace nan' with exit 0 for --trace)."""
    run = tmp_path / "run"
    train(TrainConfig(widths=(4,), epochs=1, train_size=60, batch_size=30, lr=0.1), run, progress=False)
    for flag, value in (("--examples", "-5"), ("--examples", "0"), ("--top-k", "0")):
        assert main(["curvature", str(run), "--top-k", "1", flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{flag} must be an integer >= 1, got {value}" in err
    assert main(["curvature", str(run), "--top-k", "1", "--examples", "40"]) == 0
    before = (run / "curvature.json").read_text()
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["model"]["1.weight"][2, 7] = float("nan")
    torch.save(state, run / "checkpoint.pt")
    capsys.readouterr()
    for asked in (["--top-k", "3"], ["--trace"], ["--spectrum"]):
        assert main(["curvature", str(run), *asked, "--examples", "40"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("geomopt curvature: HessianOperator: parameter '1.weight' (shape (4, 64)) has 1 "
                              "non-finite (NaN/inf) entries")
    assert (run / "curvature.json").read_text() == before and not (run / "spectrum.png").exists()
