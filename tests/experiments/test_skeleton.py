"""The experiment skeleton (geomopt.experiments.skeleton) on a toy reproduction that trains nothing, and every
registered reproduction declared with it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from geomopt.experiments import EXPERIMENTS
from geomopt.experiments.records import Records, read_stored
from geomopt.experiments.skeleton import (Experiment, Protocol, Ran, Report, plan_grid, planned_records, seed_band,
                                          selected, tuned_records)
from geomopt.experiments.tuning import Tuned
from geomopt.sweep import Claim, Selection, greater


@dataclass
class Toy(Protocol, name="toy"):
    values: tuple[float, ...] = (1.0, 2.0, 3.0)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    other_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    diverge: bool = False

    @classmethod
    def quick(cls) -> Toy:
        return cls(values=(1.0, 2.0), seeds=(0, 1, 2), other_seeds=(0, 1, 2))

    def check(self) -> None:
        if not self.values:
            raise ValueError(f"{self.NAME}: values must not be empty")


SEEN: dict[str, object] = {}


def _run(ctx) -> Ran:
    rows = [{"run": f"v{v:g}/seed{s}", "value": v, "seed": s, "train_loss": 1.0 / (v + s + 1),
             "score": [v, s], "diverged": ctx.exp.diverge and v == ctx.exp.values[0], "chosen": True}
            for v in ctx.exp.values for s in ctx.exp.seeds]
    curves = {r["run"]: [{"epoch": e, "train_loss": r["train_loss"] * (3 - e)} for e in range(3)] for r in rows}
    ran = Ran(Records(ctx.exp, rows, curves), seconds=1.5, state="from the run")
    SEEN["ran"] = ran
    return ran


def _larger_value_higher(records: Records):
    SEEN["claim records"] = records
    top, low = max(records.exp.values), min(records.exp.values)
    by = {v: [r["value"] * 10 + r["seed"] for r in records.where(value=v)] for v in (top, low)}
    return greater(by[top], by[low], label="high - low")


def _claims(exp: Toy) -> list[Claim]:
    return [Claim("larger", "A larger value scores higher", "Toy 2026", "Fig. 1", "higher", _larger_value_higher)]


def _report(ctx, records: Records, ran: Ran) -> Report:
    SEEN["report state"] = ran.state
    (ctx.root / "toy.png").write_bytes(b"not really a png")
    rows = [[v, len(records.where(value=v))] for v in ctx.exp.values]
    return Report([f"Protocol ({ctx.tier} tier)."], tables=[{"caption": "runs", "columns": ["value", "runs"],
                                                             "rows": rows}],
                  figures=[{"file": "toy.png", "caption": "a toy"}])


def _experiment(**kwargs) -> Experiment:
    return Experiment("toy", Toy, "A toy reproduction", ("Toy, \"A toy\", 2026",), 99, _run, _claims, _report, **kwargs)


def test_reproduce_writes_every_file_and_decides_claims_on_the_stored_records(tmp_path):
    section = _experiment(also_seeds=("other_seeds",)).reproduce(tmp_path, tier="quick", seeds=2)
    root = tmp_path / "toy"
    assert section == root / "section.json"
    assert {p.name for p in root.iterdir()} == {"experiment.json", "results.csv", "curves.csv", "table.csv",
                                                 "claims.json", "section.json", "toy.png"}
    config = json.loads((root / "experiment.json").read_text())
    assert config["seeds"] == [0, 1] and config["other_seeds"] == [0, 1]  # --seeds reaches also_seeds
    stored = SEEN["claim records"]
    assert stored is not SEEN["ran"].records and stored.rows == read_stored(root, stored.exp).rows
    assert stored.rows[0]["score"] == [1.0, 0]  # a list cell came back from results.csv as a list
    assert SEEN["report state"] == "from the run"
    claims = json.loads((root / "claims.json").read_text())
    assert (claims["experiment"], claims["tier"], claims["seeds"], claims["seconds"]) == ("toy", "quick", [0, 1], 1.5)
    assert [c["verdict"] for c in claims["claims"]] == ["holds"]
    sec = json.loads(section.read_text())
    assert (sec["title"], sec["order"], sec["citations"]) == ("A toy reproduction", 99, ['Toy, "A toy", 2026'])
    assert sec["paragraphs"] == ["Protocol (quick tier)."] and sec["warnings"] == []
    assert (root / "table.csv").read_text().splitlines() == ["value,runs", "1.0,2", "2.0,2"]


def test_warnings_and_caveat_come_from_the_declared_run_names(tmp_path):
    overrides = {"diverge": True}
    plain = json.loads(_experiment().reproduce(tmp_path / "a", tier="quick", overrides=overrides).read_text())
    assert plain["warnings"] == []  # no way to name a run was declared: no warnings
    named = _experiment(describe=lambda r: f"value {r['value']:g} seed {r['seed']}",
                        unconverged_above=lambda r: 0.3).reproduce(tmp_path / "b", tier="quick", overrides=overrides)
    sec = json.loads(named.read_text())
    assert "DIVERGED: value 1 seed 0" in sec["warnings"]
    assert any(w.startswith("NOT CONVERGED: value 2 seed 0") for w in sec["warnings"])  # loss 1/3 > 0.3
    assert sec["paragraphs"][0] == "Protocol (quick tier)." and sec["paragraphs"][-1].startswith("Our result, caveat")


def test_protocol_tiers_overrides_and_checks(tmp_path):
    with pytest.raises(ValueError, match="no 'mid' tier"):
        _experiment().reproduce(tmp_path, tier="mid")
    with pytest.raises(ValueError, match="tier must be one of"):
        _experiment().reproduce(tmp_path, tier="huge")
    with pytest.raises(ValueError, match="nope"):
        Toy().replace({"nope": 1})
    with pytest.raises(ValueError, match="toy: values must not be empty"):
        Toy().replace({"values": []})
    assert Toy.quick().replace({"values": [4]}).values == (4.0,) and Toy.NAME == "toy"


def test_tuned_and_planned_records_name_runs_by_their_folders(tmp_path):
    for run in ("p/lr0.1/seed0", "p/lr0.3/seed0", "q/seed0"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "metrics.jsonl").write_text(
            '{"kind": "epoch", "epoch": 0, "train_loss": 2.0}\n{"kind": "step", "step": 1}\n'
            '{"kind": "epoch", "epoch": 1, "train_loss": 1.0}\n')
    t = Tuned(Selection(value=0.3, scores={}, grid=(0.1, 0.3), edge="high"), seeds=(0,))
    t.runs = {(v, 0): (None, tmp_path / f"p/lr{v:g}/seed0", {"seconds": 2.0}) for v in (0.3, 0.1)}

    def row(key, value, seed, summary, tuned):
        return {"key": key, "lr": value, **selected(tuned, value, summary)}
    recs = tuned_records("exp", {"p": t}, tmp_path, row, lambda k, r: {"epoch": r["epoch"], "loss": r["train_loss"]})
    assert [r["run"] for r in recs.rows] == ["p/lr0.1/seed0", "p/lr0.3/seed0"]  # in (value, seed) order
    assert [(r["chosen"], r["edge"], r["seconds"]) for r in recs.rows] == [(False, None, 2.0), (True, "high", 2.0)]
    assert recs.curve("p/lr0.3/seed0", "loss") == [2.0, 1.0]  # epoch records only
    planned = [(None, tmp_path / "q/seed0", {"kind": "q", "seed": 0})]
    recs = planned_records("exp", planned, [{"train_loss": 1.0}], tmp_path, lambda s, d: {"final": s["train_loss"]},
                           lambda d: [{"dir": d.name}])
    assert recs.rows == [{"run": "q/seed0", "kind": "q", "seed": 0, "final": 1.0}]
    assert recs.curves == {"q/seed0": [{"dir": "seed0"}]}


def test_seed_band_cuts_to_the_common_length_and_scales():
    xs, mean, low, high = seed_band([[1.0, 2.0, 3.0], [3.0, 4.0]], scale=10)
    assert xs == [0, 1] and mean == [20.0, 30.0] and low[0] < 20.0 < high[0]
    assert seed_band([[1.0, 1.0]] * 2, xs=[5, 7, 9])[0] == [5, 7]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_reproduction_is_declared_with_the_skeleton(name):
    module = EXPERIMENTS[name]
    spec = module.EXPERIMENT
    assert isinstance(spec, Experiment) and spec.name == name
    assert module.reproduce == spec.reproduce and module.CONFIG is spec.config and spec.claims is module.claims
    assert issubclass(spec.config, Protocol) and spec.config.NAME == name
    assert isinstance(spec.config().replace({}), spec.config)



def test_plan_grid_is_the_full_factorial_with_the_last_axis_fastest(tmp_path):
    plan = plan_grid({"lr": (0.1, 0.3), "seed": (0, 1, 2)}, lambda lr, seed: (f"cfg {lr} {seed}", tmp_path / f"{seed}"))
    assert [key for _, _, key in plan] == [{"lr": lr, "seed": s} for lr in (0.1, 0.3) for s in (0, 1, 2)]
    assert plan[1][:2] == ("cfg 0.1 1", tmp_path / "1")
    assert plan_grid({"lr": (), "seed": (0,)}, lambda lr, seed: ("", tmp_path)) == []
