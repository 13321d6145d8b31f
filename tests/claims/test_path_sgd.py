"""Claim fixtures of `geomopt reproduce path-sgd`: synthetic stored results drive every claim to each verdict."""

import math

import pytest

from geomopt.experiments.path_sgd import PathSGDExperiment, claims
from geomopt.experiments.records import Records
from geomopt.sweep import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

EXP = PathSGDExperiment.quick().replace({"datasets": ["digits"]})
START = math.log(10)


def _curve(final: float, epoch1: float | None = None) -> list[dict]:
    """A training curve from ln 10 down to ``final`` over the quick protocol's epochs."""
    n = EXP.epochs
    losses = [START] + [final + (START - final) * math.exp(-0.5 * e) for e in range(1, n + 1)]
    losses[-1] = final
    if epoch1 is not None:
        losses[1] = epoch1
    return [{"epoch": e, "train_loss": v, "test_err": 0.1} for e, v in enumerate(losses)]


def records(final: dict[str, list[float]] | None = None, test_err: dict[str, list[float]] | None = None,
            epoch1_gap: list[float] | None = None, edge: str | None = None, unconverged: str | None = None) -> Records:
    """Stored results: ``final[opt]`` per-seed final training loss (both inits), ``test_err[opt]`` per seed;
    ``epoch1_gap[seed]``: Path-SGD's relative epoch-1 loss gap between the inits; ``edge``: the chosen lr of
    SGD at its grid's edge; ``unconverged``: that optimizer's chosen runs stay at chance."""
    final = final or {"sgd": [0.3] * 3, "adagrad": [0.3] * 3, "path-sgd": [0.1] * 3}
    test_err = test_err or {"sgd": [0.2] * 3, "adagrad": [0.2] * 3, "path-sgd": [0.1] * 3}
    rows, curves = [], {}
    for init in EXP.inits:
        for opt in EXP.optimizers:
            grid = EXP.lrs[opt]
            for lr in grid:
                for seed in EXP.seeds:
                    run = f"runs/digits/{init}/{opt}/lr{lr:g}/seed{seed}"
                    chosen = lr == grid[1]
                    loss = final[opt][seed] if chosen else 0.5
                    if chosen and unconverged == opt:
                        loss = START
                    e1 = 1.0
                    if opt == "path-sgd" and epoch1_gap is not None and init == "unbalanced":
                        e1 = 1.0 * (1 + epoch1_gap[seed])
                    elif opt != "path-sgd" and init == "unbalanced":
                        e1 = 1.5
                    rows.append({"run": run, "dataset": "digits", "init": init, "optimizer": opt, "lr": lr,
                                 "seed": seed, "train_loss": loss, "val_err": 0.2,
                                 "test_err": test_err[opt][seed] if chosen else 0.3, "diverged": False,
                                 "chosen": chosen, "edge": edge if chosen and opt == "sgd" else None})
                    curves[run] = _curve(loss, e1) if loss < START else [
                        {"epoch": e, "train_loss": START, "test_err": 0.9} for e in range(EXP.epochs + 1)]
    return Records(EXP, rows, curves)


def verdict(claim_id: str, recs: Records) -> str:
    [claim] = [c for c in claims(EXP) if c.id == claim_id]
    out = claim.test(recs)
    if out.verdict in (INCONCLUSIVE, UNTESTABLE):
        assert out.why
    return out.verdict


def test_every_claim_is_covered():
    assert {c.id for c in claims(EXP)} == {"invariant", "train-loss-balanced", "train-loss-unbalanced",
                                           "test-error-balanced", "test-error-unbalanced"}


def test_invariance_claim_reaches_every_verdict():
    assert verdict("invariant", records(epoch1_gap=[0.0, 1e-5, 0.0])) == HOLDS  # the paper: exact
    assert verdict("invariant", records(epoch1_gap=[0.2, 0.25, 0.3])) == FAILS
    assert verdict("invariant", records(epoch1_gap=[0.0, 0.004, 0.0003])) == INCONCLUSIVE
    recs = records(epoch1_gap=[0.0, 0.0, 0.0])
    for r in recs.rows:
        if r["optimizer"] == "path-sgd" and r["seed"] == 1:
            r["diverged"] = True
    assert verdict("invariant", recs) == UNTESTABLE


@pytest.mark.parametrize("init", ["balanced", "unbalanced"])
@pytest.mark.parametrize("metric", ["train-loss", "test-error"])
def test_beats_claims_reach_every_verdict(metric, init):
    cid = f"{metric}-{init}"
    key = "final" if metric == "train-loss" else "test_err"
    base = 0.3 if metric == "train-loss" else 0.2

    def recs(mine: list[float], **kw) -> Records:
        values = {"sgd": [base] * 3, "adagrad": [base] * 3, "path-sgd": mine}
        return records(**{key: values}, **kw)
    assert verdict(cid, recs([base - 0.1, base - 0.12, base - 0.09])) == HOLDS  # the paper: Path-SGD lower
    assert verdict(cid, recs([base + 0.1, base + 0.12, base + 0.09])) == FAILS
    assert verdict(cid, recs([base - 0.1, base + 0.05, base - 0.01])) == INCONCLUSIVE
    assert verdict(cid, recs([base - 0.1, base - 0.12, base - 0.09], edge="low")) == UNTESTABLE
    assert verdict(cid, recs([base + 0.1, base + 0.12, base + 0.09], unconverged="sgd")) == UNTESTABLE
