"""``--model MODULE:FACTORY``: your own network from the command line, end to end (train, resume, measure,
a zoo, a sweep worker process), its errors in one line, and the rule that a run folder, zoo file or
checkpoint from someone else never runs code by itself (the module is not even imported)."""

import argparse
import json
import os
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.cli import main
from geomopt.cli.train import _model_type
from geomopt.nn import MODELS, build_model, trusted_models
from geomopt.nn.factory import UntrustedModelError, is_factory_reference
from geomopt.sweep import Trial, run_sweep
from geomopt.sweep.local import LocalBackend
from geomopt.train import TrainConfig, load_checkpoint, train

CANARY = "tests.train.canary_model"  # imported only by the tests that trust it
REF = f"{CANARY}:factory"
SMALL = "tests.train.factories:small_mlp"
CONFIG = TrainConfig(model=REF, model_options={"hidden": 8}, data="digits", train_size=200, batch_size=50, lr=0.1,
                     epochs=2, seed=0)


def _final(run_dir) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: summary[k] for k in ("steps", "train_loss", "test_loss", "test_acc")}


def _refused(code: int, capsys, source: str) -> None:
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and source in err and "--trust-config" in err
    assert CANARY not in sys.modules  # refused before anything was imported


def test_train_resume_and_measure_a_factory_model(tmp_path, capsys, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(CONFIG, full, progress=False)  # a config handed to train() from Python is the caller's own
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, cut, progress=False, stop_after_steps=5)
    monkeypatch.delitem(sys.modules, CANARY)
    _refused(main(["train", "--resume", str(cut), "--no-progress"]), capsys, str(cut / "config.json"))
    _refused(main(["measure", str(full), "--measures", "norms", "--no-progress"]), capsys, str(full / "config.json"))
    given = tmp_path / "given.json"  # a --config file naming a module: the same rule
    given.write_text(json.dumps(CONFIG.to_dict()))
    _refused(main(["train", "--config", str(given), "--out", str(tmp_path / "c"), "--no-progress"]), capsys, str(given))
    assert main(["train", "--resume", str(cut), "--model", SMALL, "--no-progress"]) == 2  # another model: refused
    assert "model: stored" in capsys.readouterr().err
    assert main(["train", "--resume", str(cut), "--model", REF, "--no-progress"]) == 0
    assert _final(cut) == _final(full)  # resumed = uninterrupted, to the bit
    assert main(["train", "--resume", str(cut), "--trust-config", "--epochs", "3", "--no-progress"]) == 0
    assert _final(cut)["steps"] == 12
    assert main(["measure", str(full), "--measures", "norms", "--trust-config", "--no-progress"]) == 0
    assert (full / "measures.json").is_file()


def test_zoo_file_naming_a_factory_needs_trust(tmp_path, capsys, monkeypatch):
    grid = tmp_path / "zoo.toml"
    grid.write_text(f'[base]\nmodel = "{REF}"\nmodel_options = {{hidden = 8}}\ntrain_size = 200\nbatch_size = 50\n'
                    f'epochs = 1\n\n[grid]\nlr = [0.1]\n')
    monkeypatch.delitem(sys.modules, CANARY, raising=False)
    flags = ["zoo", "--grid", str(grid), "--out", str(tmp_path / "zoo"), "--jobs", "1", "--no-measures"]
    _refused(main(flags), capsys, str(grid))
    assert main([*flags, "--trust-config"]) == 0
    assert json.loads((tmp_path / "zoo" / "lr0.1" / "config.json").read_text())["model"] == REF


def test_sweep_worker_process_builds_the_factory_model(tmp_path):
    config = CONFIG.replace(model=SMALL, epochs=1)
    [result] = run_sweep([Trial(config, tmp_path / "t")], backend=LocalBackend(1, in_process=False), progress=False)
    assert result.status == "done", result.errors
    assert _final(tmp_path / "t") == {k: v for k, v in train(config, tmp_path / "here", progress=False).items()
                                      if k in ("steps", "train_loss", "test_loss", "test_acc")}


@pytest.mark.parametrize("model, options, message", [
    ("no_such_module_xyz:f", "{}", "cannot import 'no_such_module_xyz' (ModuleNotFoundError"),
    ("tests.train.factories:missing", "{}", "has no attribute 'missing'"),
    ("tests.train.factories:NOT_CALLABLE", "{}", "'NOT_CALLABLE' is a int, not a function"),
    ("tests.train.factories:not_a_module", "{}", "the factory returned a list, not a torch.nn.Module"),
    (SMALL, '{"width": 3}', "raised TypeError: small_mlp() got an unexpected keyword argument 'width'"),
    ("mlp", '{"hidden": 3}', "are the keyword arguments of a MODULE:FACTORY model"),
])
def test_factory_errors_are_one_line(tmp_path, capsys, model, options, message):
    code = main(["train", "--model", model, "--model-options", options, "--train-size", "100", "--epochs", "1",
                 "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@given(st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_model_flag_accepts_exactly_names_and_references(text):
    try:
        assert _model_type(text) == text and (text in MODELS or is_factory_reference(text))
    except argparse.ArgumentTypeError as exc:
        assert text not in MODELS and not is_factory_reference(text) and "invalid choice" in str(exc)


@given(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True), min_size=1, max_size=3),
       st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True), min_size=1, max_size=2))
def test_dotted_module_colon_attribute_is_a_reference(module, attribute):
    assert is_factory_reference(".".join(module) + ":" + ".".join(attribute))


@pytest.mark.parametrize("text, ok", [("pkg.mod:f", True), ("m:Cls.build", True), ("mlp", False), ("a:b:c", False),
                                      (":f", False), ("m:", False), ("1m:f", False), ("m.:f", False),
                                      ("os.system('x'):f", False)])
def test_factory_reference_form(text, ok, tmp_path, capsys):
    assert is_factory_reference(text) == ok
    if not ok and text != "mlp":  # the command line refuses it before anything runs
        with pytest.raises(SystemExit):
            main(["train", "--model", text, "--out", str(tmp_path)])
        assert "argument --model: invalid choice" in capsys.readouterr().err


def test_build_model_imports_only_trusted_references(monkeypatch):
    monkeypatch.delitem(sys.modules, CANARY, raising=False)
    with pytest.raises(UntrustedModelError):
        build_model(REF, (1, 8, 8), 10, widths=(4,))
    assert CANARY not in sys.modules
    with trusted_models(REF):
        a = build_model(REF, (1, 8, 8), 10, widths=(4,), seed=3)
    with pytest.raises(UntrustedModelError):  # the trust ended with the block
        build_model(REF, (1, 8, 8), 10, widths=(4,))
    with trusted_models(everything=True):
        c = build_model(REF, (1, 8, 8), 10, widths=(4,), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))  # init: a function of the seed


class _RunsCode:
    """Unpickling this object calls os.makedirs(marker): code a foreign checkpoint could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def test_checkpoint_loading_runs_no_code(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "extra": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match="not a readable geomopt checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
