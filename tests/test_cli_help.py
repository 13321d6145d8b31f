"""Every flag of every subcommand explains itself in one line (issue 29): its help is more than its default;
`geomopt --help` ends with where to start (the demo, then train, then reproduce)."""

import argparse
import re

import pytest

from geomopt.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


PARSERS = list(_parsers(build_parser()))


@pytest.mark.parametrize("parser", PARSERS, ids=[p.prog for p in PARSERS])
def test_every_action_has_a_help_beyond_its_default(parser):
    for action in parser._actions:
        actions = action._choices_actions if isinstance(action, argparse._SubParsersAction) else [action]
        for a in actions:
            text = re.sub(r"\(default:[^)]*\)", "", a.help or "").strip()
            assert text and "\n" not in text, f"{parser.prog} {a.option_strings or a.dest}: help {a.help!r}"
    parser.format_help()  # renders (a stray % in a help string would raise here)


def test_train_help_shows_description_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE examples per optimizer step (default: 100)" in text
    assert "--schedule {constant,cosine,step} learning-rate schedule" in text and "50% and 75%" in text


def test_top_level_help_ends_with_start_here(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    start = capsys.readouterr().out.split("start here:")[1]
    steps = [start.index(s) for s in ("make demo", "source .venv/bin/activate", "geomopt train", "geomopt reproduce")]
    assert steps == sorted(steps)
