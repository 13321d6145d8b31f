"""The results ledger: `geomopt results add` files a reproduction with provenance; `results check` recomputes
every verdict from the stored raw numbers and catches hand edits, changed numbers and a stale README."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from geomopt.cli import main
from geomopt.experiments.ledger import PROVENANCE, check, redecide

TINY = {"datasets": ["digits"], "widths": [16], "epochs": 2, "optimizers": ["sgd", "path-sgd"],
        "inits": ["kaiming", "unbalanced"], "lrs": {"sgd": [0.1], "path-sgd": [0.1]}, "seeds": [0, 1]}


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    root = tmp_path_factory.mktemp("ledger")
    argv = ["reproduce", "path-sgd", "--tier", "quick", "--out", str(root / "runs"), "--jobs", "1"]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0
    assert main(["results", "add", str(root / "runs"), "--ledger", str(root / "results")]) == 0
    return root / "results"


def _copy(ledger, tmp_path):
    import shutil
    target = tmp_path / "results"
    shutil.copytree(ledger, target)
    return target, target / "path-sgd" / "quick"


def test_add_writes_entry_with_provenance_and_readme(ledger, capsys):
    entry = ledger / "path-sgd" / "quick"
    prov = json.loads((entry / PROVENANCE).read_text())
    assert prov["command"].startswith("geomopt reproduce path-sgd --tier quick")
    assert prov["seeds"] == [0, 1] and prov["torch"] and prov["machine"] and prov["commit"]
    assert {"claims.json", "results.csv", "curves.csv", "experiment.json", "train_loss.png"} <= set(prov["files"])
    readme = (ledger / "README.md").read_text()
    assert "Path-SGD" in readme and "| verdict | claim | the paper | we measured" in readme
    assert main(["results", "check", str(ledger)]) == 0
    assert "every verdict follows" in capsys.readouterr().out


def test_check_fails_after_a_number_is_changed(ledger, tmp_path, capsys):
    target, entry = _copy(ledger, tmp_path)
    with (entry / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    rows[0]["train_loss"] = str(float(rows[0]["train_loss"]) * 1.5)
    with (entry / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["results", "check", str(target)]) == 1
    assert "results.csv: differs from the hash" in capsys.readouterr().err


def test_check_recomputes_verdicts_even_when_the_hashes_are_forged(ledger, tmp_path):
    """Change a stored per-epoch number and update its hash too: the recomputed claim no longer matches."""
    target, entry = _copy(ledger, tmp_path)
    text = (entry / "curves.csv").read_text().splitlines()
    header = text[0].split(",")
    col = header.index("train_loss")
    cells = text[2].split(",")  # a path-sgd or sgd run's epoch-1 record
    cells[col] = repr(float(cells[col]) * 3)
    text[2] = ",".join(cells)
    (entry / "curves.csv").write_text("\n".join(text) + "\n")
    prov = json.loads((entry / PROVENANCE).read_text())
    prov["files"]["curves.csv"] = hashlib.sha256((entry / "curves.csv").read_bytes()).hexdigest()
    (entry / PROVENANCE).write_text(json.dumps(prov))
    problems = check(target)
    assert problems and all("claim" in p for p in problems), problems


def test_check_reports_a_stale_readme_and_a_missing_folder(ledger, tmp_path, capsys):
    target, _ = _copy(ledger, tmp_path)
    (target / "README.md").write_text("# edited\n")
    assert any("README.md is stale" in p for p in check(target))
    assert main(["results", "check", str(tmp_path / "nowhere")]) == 2
    assert "no ledger folder" in capsys.readouterr().err


def test_report_renders_the_ledger(ledger, tmp_path):
    assert main(["report", "--results", str(ledger), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Scoreboard" in page and "quick tier" in page


def test_the_ledger_readme_opens_with_counts_per_tier_and_a_row_per_reproduction(tmp_path):
    from geomopt.experiments.ledger import _summary_lines

    def record(exp, tier, verdicts):
        return {"experiment": exp, "title": exp.upper(), "tier": tier,
                "claims": [{"id": str(i), "verdict": v} for i, v in enumerate(verdicts)]}, tmp_path / exp / tier

    ladder = tmp_path / "a" / "mid" / "ladder-widths"
    ladder.mkdir(parents=True)
    (ladder / "ladder.json").write_text(json.dumps({"field": "widths", "values": [[10], [20], [40]]}))
    lines = _summary_lines([record("a", "quick", ["holds", "fails"]), record("a", "mid", ["inconclusive"]),
                            record("b", "mid", ["holds", "holds"])])
    assert lines[0].startswith("- **mid**: 3 claims: 2 holds, 0 fails, 1 inconclusive")
    assert lines[1].startswith("- **quick**: 2 claims: 1 holds, 1 fails")
    assert "| reproduction | mid | quick | scale ladders |" in lines
    assert "| A | 1 inconclusive | 1 holds, 1 fails | `widths` ([10], [20], [40]) at mid |" in lines
    assert "| B | 2 holds | not filed | - |" in lines


def test_provenance_sums_the_wall_time_of_a_resumed_reproduction(tmp_path):
    """A reproduction interrupted and resumed in the same folder: its provenance lists both invocations and its
    wall time is their sum; a file from before invocations were listed counts as one invocation."""
    from geomopt.experiments.ledger import _wall_text, write_provenance
    (tmp_path / PROVENANCE).write_text(json.dumps({"command": "geomopt reproduce x", "commit": "abc", "date": "d",
                                                   "wall_seconds": 600.0, "machine": "m"}))
    assert _wall_text(json.loads((tmp_path / PROVENANCE).read_text())) == "10 min wall (last invocation)"
    write_provenance(tmp_path, ["reproduce", "x"], 0.0, 1200.0)
    write_provenance(tmp_path, ["reproduce", "x"], 10.0, 3.0)
    prov = json.loads((tmp_path / PROVENANCE).read_text())
    assert [i["wall_seconds"] for i in prov["invocations"]] == [600.0, 1200.0, 3.0]
    assert prov["wall_seconds"] == 1803.0 and prov["invocations"][0]["commit"] == "abc"
    assert _wall_text(prov) == "30 min wall over 3 invocations"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write_provenance(fresh, ["reproduce", "x"], 0.0, 90.0)
    assert _wall_text(json.loads((fresh / PROVENANCE).read_text())) == "2 min wall"


def _file_under_other_rules(entry):
    """Rewrite a stored claim as older rules might have decided it (another verdict and why), hash included."""
    record = json.loads((entry / "claims.json").read_text())
    claim = record["claims"][0]
    claim["verdict"] = "fails" if claim["verdict"] != "fails" else "holds"
    claim["why"] = "decided by older rules"
    (entry / "claims.json").write_text(json.dumps(record, indent=2))
    prov = json.loads((entry / PROVENANCE).read_text())
    prov["files"]["claims.json"] = hashlib.sha256((entry / "claims.json").read_bytes()).hexdigest()
    (entry / PROVENANCE).write_text(json.dumps(prov))
    return claim["id"]


def test_redecide_decides_stored_claims_anew_without_running(ledger, tmp_path, capsys):
    target, entry = _copy(ledger, tmp_path)
    raw = {n: (entry / n).read_bytes() for n in ("results.csv", "curves.csv")}
    claim_id = _file_under_other_rules(entry)
    assert any(claim_id in p for p in check(target))
    assert main(["results", "redecide", str(target)]) == 0
    assert f"path-sgd/quick: {claim_id} (" in capsys.readouterr().out
    assert check(target) == []
    assert {n: (entry / n).read_bytes() for n in raw} == raw  # the raw numbers are untouched
    note = json.loads((entry / PROVENANCE).read_text())["redecided"][-1]
    assert note["commit"] and note["date"] and note["claims"][0].startswith(claim_id)
    assert redecide(target) == []  # nothing left to change


def test_redecide_refuses_numbers_edited_by_hand(ledger, tmp_path, capsys):
    target, entry = _copy(ledger, tmp_path)
    _file_under_other_rules(entry)
    stored = (entry / "claims.json").read_bytes()
    (entry / "results.csv").write_text((entry / "results.csv").read_text().replace("0.", "1.", 1))
    with pytest.raises(ValueError, match="results.csv: differs from the hash"):
        redecide(target)
    assert (entry / "claims.json").read_bytes() == stored
    assert main(["results", "redecide", str(target)]) == 1
    assert "refusing" in capsys.readouterr().err


def test_redecide_writes_nothing_when_an_entry_cannot_be_read(ledger, tmp_path):
    import shutil
    target, entry = _copy(ledger, tmp_path)
    claim_id = _file_under_other_rules(entry)
    stored = (entry / "claims.json").read_bytes()
    broken = target / "path-sgd" / "zz-copy"  # decided after the entry above
    shutil.copytree(entry, broken)
    config = json.loads((broken / "experiment.json").read_text())
    config["no_such_field"] = 1
    (broken / "experiment.json").write_text(json.dumps(config))
    prov = json.loads((broken / PROVENANCE).read_text())
    prov["files"]["experiment.json"] = hashlib.sha256((broken / "experiment.json").read_bytes()).hexdigest()
    (broken / PROVENANCE).write_text(json.dumps(prov))
    with pytest.raises(ValueError, match="zz-copy: cannot recompute"):
        redecide(target)
    assert (entry / "claims.json").read_bytes() == stored and any(claim_id in p for p in check(target))
