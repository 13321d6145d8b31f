"""Scale ladders: each claim's signed effect per rung, a trend decided from the rungs' intervals (never from
means one seed could move), and their place in the results ledger (`results add` files the rungs and
rebuilds the summary; `results check` recomputes both and catches hand edits)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil

import pytest

from geomopt.cli import main
from geomopt.experiments.ladder import AWAY, NONE, TOWARD, decide_trend, parts, summarize, trend
from geomopt.experiments.ledger import PROVENANCE, check, readme
from geomopt.sweep import all_of, equivalent, gated, greater, less
from geomopt.sweep.claims import Claim, count_verdicts

TINY = {"datasets": ["digits"], "widths": [16], "optimizers": ["sgd", "path-sgd"],
        "inits": ["kaiming", "unbalanced"], "lrs": {"sgd": [0.1], "path-sgd": [0.1]}, "seeds": [0, 1]}
A, B = [1.0, 1.1, 1.2], [2.0, 2.2, 2.1]


# ----------------------------------------------------------------------------- synthetic: parts and trends

def test_parts_are_signed_to_the_claims_side_and_gated_parts_are_untestable():
    (single,) = parts({"verdict": "holds", "numbers": less(A, B).numbers}).values()
    assert single["verdict"] == "holds" and single["mean"] == pytest.approx(1.0)
    assert single["low"] <= single["mean"] <= single["high"] and all(s > 0 for s in single["seeds"])
    split = parts({"verdict": "fails", "numbers": all_of({"a": less(A, B), "b": greater(A, B)}).numbers})
    assert split["a"]["mean"] > 0 > split["b"]["mean"] and split["b"]["verdict"] == "fails"
    blocked = gated(all_of({"a": less(A, B), "b": greater(A, B)}), ["run x: not converged"])
    assert {p["verdict"] for p in parts({"verdict": blocked.verdict, "numbers": blocked.numbers}).values()} == {
        "untestable here"}
    nested = all_of({"lr 0.1": all_of({"x": less(A, B)})})
    assert list(parts({"verdict": nested.verdict, "numbers": nested.numbers})) == ["lr 0.1 / x"]
    same = equivalent(A, A, margin=0.1)
    assert parts({"verdict": same.verdict, "numbers": same.numbers}) == {"": {"verdict": "holds"}}


def _rung(mean, spread=0.1, verdict="fails"):
    return {"verdict": verdict, "mean": mean, "low": mean - 2 * spread, "high": mean + 2 * spread,
            "seeds": [mean - spread, mean, mean + spread]}


SEEDS = [[0, 1, 2]] * 3


def test_trend_needs_the_extreme_rungs_intervals_apart_and_is_symmetric():
    up = decide_trend("w", [10, 100, 1000], [_rung(-1.0), _rung(-0.5), _rung(0.2, verdict="holds")], SEEDS)
    assert up["direction"] == TOWARD and up["slope_per_log_size"] > 0 and "w=10 and 1000" in up["text"]
    down = decide_trend("w", [10, 100, 1000], [_rung(0.2), _rung(-0.5), _rung(-1.0)], SEEDS)
    assert down["direction"] == AWAY and down["slope_per_log_size"] < 0
    flat = decide_trend("w", [10, 100, 1000], [_rung(-1.0, 0.5), _rung(-0.8, 0.5), _rung(-0.6, 0.5)], SEEDS)
    assert flat["direction"] == NONE and "no trend detectable with 3 seeds" in flat["text"]
    assert "intervals overlap" in flat["text"]
    shuffled = decide_trend("w", [1000, 10, 100], [_rung(0.2), _rung(-1.0), _rung(-0.5)], SEEDS)
    assert shuffled["direction"] == TOWARD


def test_trend_is_not_decided_by_one_seed_or_by_gated_rungs():
    small = {"verdict": "fails", "mean": -0.8, "low": -1.2, "high": -0.8, "seeds": [-1.1, -1.0, -0.3]}
    large = {"verdict": "inconclusive", "mean": 0.0, "low": -0.2, "high": 0.2, "seeds": [0.1, 0.3, -0.4]}
    mid = _rung(-0.4)
    # the intervals are apart, but seed 2 moved down: paired by seed (same seeds) and unpaired alike, no trend
    one_seed = decide_trend("w", [1, 2, 3], [small, mid, large], SEEDS)
    assert one_seed["direction"] == NONE and "not every seed moved the same way" in one_seed["text"]
    assert decide_trend("w", [1, 2, 3], [small, mid, large], [[0, 1, 2], [0, 1, 2], [3, 4, 5]])["direction"] == NONE
    gates = decide_trend("w", [1, 2, 3], [_rung(-1.0, verdict="untestable here"), _rung(0.5),
                                          _rung(2.0, verdict="untestable here")], SEEDS)
    assert gates["direction"] == NONE and gates["text"].startswith("no trend: 1 of 3 rungs")
    assert trend([1, 2, 4], [0.0, 1.0, 2.0]) == pytest.approx(1 / math.log(2)) and math.isnan(trend([1], [1.0]))


# ----------------------------------------------------------------------------- synthetic: the README

def _record(outcomes, variant=None):
    claims = [Claim(cid, f"claim {cid}", "P", "Fig. 1", "published", lambda _, o=o: o).evaluate(None, [0, 1, 2])
              for cid, o in outcomes.items()]
    record = {"experiment": "path-sgd", "title": "Path-SGD", "seeds": [0, 1, 2], "seconds": 60.0, "tier": "mid",
              "quick": False, "counts": count_verdicts(claims), "claims": claims}
    return {**record, "variant": variant} if variant else record


def _write(directory, record):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "claims.json").write_text(json.dumps(record))
    (directory / PROVENANCE).write_text(json.dumps({"command": "geomopt reproduce path-sgd", "commit": "abc",
                                                    "wall_seconds": 60, "machine": "m", "compute_seconds": 180}))


def test_readme_shows_each_failing_claims_ladder_and_counts_no_rung(tmp_path):
    gap = [-2.0, -1.6, 0.0]  # the fails claim "a": the gap closes with the width; "b" holds throughout
    rungs = [_record({"a": less(A, [x + d for x, d in zip(B, (g, g + 0.05, g - 0.05))]), "b": less(A, B)},
                     variant=f"widths={w}") for g, w in zip(gap, (10, 100, 1000))]
    _write(tmp_path / "path-sgd" / "mid", _record({"a": greater(A, B), "b": less(A, B)}))
    root = tmp_path / "path-sgd" / "mid" / "ladder-widths"
    for w, r in zip((10, 100, 1000), rungs):
        _write(root / f"widths={w}", r)
    (root / "ladder.json").write_text(json.dumps(summarize("path-sgd", "widths", [10, 100, 1000], rungs, "mid")))
    (root / PROVENANCE).write_text(json.dumps({"command": "geomopt reproduce path-sgd --ladder ...", "commit": "abc",
                                               "compute_seconds": 180}))
    text = readme(tmp_path)
    assert "2 claims: 1 holds, 1 fails" in text and "### Scale ladder over `widths`" in text
    row = next(line for line in text.splitlines() if line.startswith("| a (fails at mid)"))
    assert row.count("**fails**") == 2 and "**holds**" in row and TOWARD in row
    assert "| b (" not in text


# ----------------------------------------------------------------------------- a real ladder in the ledger

@pytest.fixture(scope="module")
def filed(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    argv = ["reproduce", "path-sgd", "--tier", "quick", "--out", str(root / "runs"), "--jobs", "1",
            "--ladder", "epochs=[1, 2, 3]"]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0
    assert main(["results", "add", str(root / "runs"), "--ledger", str(root / "results")]) == 0
    return root


def _copy(filed, tmp_path):
    target = tmp_path / "results"
    shutil.copytree(filed / "results", target)
    return target, target / "path-sgd" / "quick" / "ladder-epochs"


def test_a_ladder_is_filed_with_its_rungs_and_its_summary_rebuilt(filed, capsys):
    run = json.loads((filed / "runs" / "path-sgd-ladder-epochs" / "ladder.json").read_text())
    assert run["values"] == [1, 2, 3] and (filed / "runs" / "path-sgd-ladder-epochs" / "ladder.png").is_file()
    root = filed / "results" / "path-sgd" / "quick" / "ladder-epochs"
    assert {p.name for p in root.iterdir()} == {"epochs=1", "epochs=2", "epochs=3", "ladder.json", "ladder.png",
                                                "section.json", PROVENANCE}
    ladder = json.loads((root / "ladder.json").read_text())
    assert ladder == run  # rebuilt from the filed rungs, it equals what the run wrote
    assert all(len(p["rungs"]) == 3 and p["direction"] in (TOWARD, AWAY, NONE)
               for p in ladder["claims"]["train-loss-balanced"]["parts"].values())
    assert set(json.loads((root / PROVENANCE).read_text())["files"]) == {"ladder.json", "ladder.png", "section.json"}
    assert main(["results", "check", str(filed / "results")]) == 0
    assert "1 scale ladders" in capsys.readouterr().out
    assert "### Scale ladder over `epochs`" in (filed / "results" / "README.md").read_text()
    assert main(["reproduce", "path-sgd", "--ladder", "epochs=[1, 2]", "--out", str(filed / "x")]) == 2
    assert "3 or more values" in capsys.readouterr().err


def test_check_fails_after_a_rungs_number_is_edited(filed, tmp_path):
    target, root = _copy(filed, tmp_path)
    path = root / "epochs=2" / "results.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    rows[0]["train_loss"] = str(float(rows[0]["train_loss"]) * 1.5)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert any("ladder-epochs/epochs=2/results.csv: differs from the hash" in p for p in check(target))


def _forge(directory, name):
    prov = json.loads((directory / PROVENANCE).read_text())
    prov["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / PROVENANCE).write_text(json.dumps(prov))


def test_check_recomputes_rungs_and_the_summary_even_when_hashes_are_forged(filed, tmp_path):
    target, root = _copy(filed, tmp_path)
    rung = root / "epochs=3"
    lines = (rung / "curves.csv").read_text().splitlines()
    col = lines[0].split(",").index("train_loss")
    cells = lines[2].split(",")
    cells[col] = repr(float(cells[col]) * 3)
    lines[2] = ",".join(cells)
    (rung / "curves.csv").write_text("\n".join(lines) + "\n")
    _forge(rung, "curves.csv")
    assert any("epochs=3: claim" in p for p in check(target))

    target, root = _copy(filed, tmp_path / "again")
    ladder = json.loads((root / "ladder.json").read_text())
    part = next(iter(ladder["claims"]["train-loss-balanced"]["parts"].values()))
    part["text"], part["direction"] = f"{TOWARD} as epochs grows (edited)", TOWARD
    (root / "ladder.json").write_text(json.dumps(ladder))
    assert any("ladder.json: differs from the hash" in p for p in check(target))
    _forge(root, "ladder.json")
    problems = check(target)
    assert any("does not follow from its rungs" in p and "train-loss-balanced" in p for p in problems), problems


def test_check_finds_a_missing_or_extra_rung_and_readme_regenerates(filed, tmp_path, capsys):
    target, root = _copy(filed, tmp_path)
    shutil.move(root / "epochs=2", root / "epochs=5")
    problems = check(target)
    assert any("rung epochs=2 is not filed" in p for p in problems)
    assert any("epochs=5 is filed but not a rung" in p for p in problems)
    target, _ = _copy(filed, tmp_path / "again")
    (target / "README.md").write_text("# merged by hand\n")
    assert any("README.md is stale" in p and "results readme" in p for p in check(target))
    assert main(["results", "readme", str(target)]) == 0 and not check(target)


def test_the_html_report_of_a_ladder_keeps_rungs_out_of_the_scoreboard(filed, tmp_path):
    assert main(["report", "--results", str(filed / "results"), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Scale ladder: path-sgd over epochs" in page and page.count('<section id="sec-path-sgd-quick-ladder') == 4
    assert "Scoreboard" not in page  # the ledger holds only the ladder: its rungs are no scoreboard entries
