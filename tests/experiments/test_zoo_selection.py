"""`geomopt correlate` says how many models it kept and why it dropped each of the others (reference:
a hand-made zoo folder whose runs fit, underfit, diverged or never finished)."""

import json

from geomopt.cli import main


def _run(zoo, name, *, acc=None, diverged=False, finished=True, l2=1.0, gap=0.1):
    run = zoo / name
    run.mkdir(parents=True)
    (run / "zoo.json").write_text(json.dumps({"lr": len(name)}))
    if finished:
        (run / "summary.json").write_text(json.dumps({"diverged": diverged}))
    if acc is not None:
        (run / "measures.json").write_text(json.dumps({"train_error": 1 - acc, "gap": gap, "l2_path": l2}))


def test_correlate_counts_kept_and_dropped_models(tmp_path, capsys):
    zoo = tmp_path / "zoo"
    for i, acc in enumerate([1.0, 0.995, 0.99]):
        _run(zoo, f"fit{i}", acc=acc, l2=i, gap=0.1 * i)
    _run(zoo, "low1", acc=0.9)
    _run(zoo, "low2", acc=0.95)
    _run(zoo, "blewup", diverged=True)
    _run(zoo, "failed", finished=False)
    assert main(["correlate", str(zoo), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert ("kept 3 of 7 models; dropped 2 with training accuracy below --min-train-acc 0.99 (lowest 0.9000; "
            "train them longer, or lower --min-train-acc), 1 diverged, 1 unfinished") in out
    assert main(["correlate", str(zoo), "--bootstrap", "0", "--min-train-acc", "0.999"]) == 2
    assert "kept 1 of 7 models; dropped 4 with training accuracy below --min-train-acc 0.999" in capsys.readouterr().err
    assert main(["correlate", str(zoo), "--bootstrap", "0", "--min-train-acc", "0"]) == 0
    assert "kept 5 of 7 models; dropped 1 diverged, 1 unfinished" in capsys.readouterr().out
