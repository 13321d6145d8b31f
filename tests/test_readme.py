"""Every ```python block of README.md and of the documentation pages (docs/*.md) runs as written (issue 16,
point 9), and every geomopt command they show parses.

Reference: the README text itself; a block that raises, or a K-FAC/Path-SGD example whose loss is
not finite, fails. Blocks run in a fresh namespace each, in a temporary working directory (some write
run folders).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).parents[1] / "README.md"
PAGES = [README, *sorted((README.parent / "docs").glob("*.md"))]
BLOCKS = [b for page in PAGES for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"readme_block_{index}"}
    # dont_inherit: the block runs as written, without this file's `from __future__ import annotations`
    exec(compile(BLOCKS[index], f"README.md / docs python block {index}", "exec", dont_inherit=True), namespace)
    if "loss" in namespace:  # a training example: it must not have blown up
        assert math.isfinite(float(namespace["loss"])) and float(namespace["loss"]) < 2.0


# --- the README's shell commands (issue 29): typed as written, after `source .venv/bin/activate` ---------

import os  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import geomopt  # noqa: E402
from geomopt.cli import build_parser  # noqa: E402

TEXT = README.read_text()
SHELL_BLOCKS = [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", TEXT, re.S | re.M)
                if lang in ("", "sh", "bash", "shell")]
COMMANDS = [line.strip() for block in SHELL_BLOCKS[1:] for line in block.replace("\\\n", " ").splitlines()
            if line.strip().startswith("geomopt ")]
DOC_COMMANDS = [line.strip() for page in PAGES[1:]
                for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), re.S | re.M)
                if lang in ("", "sh", "bash", "shell") for line in body.replace("\\\n", " ").splitlines()
                if line.strip().startswith("geomopt ")]
FIRST = 5  # the README's first five commands after the two set-up commands must work as typed
# Flags appended to a command (argparse: the last value wins) so that it runs in seconds; commands of
# other subcommands (reproduce, zoo: minutes at their smallest) are only parsed.
TINY = {"train": ["--epochs", "1", "--train-size", "200", "--no-progress"],
        "prune": ["--examples", "100", "--finetune-epochs", "1", "--no-progress"],
        "measure": ["--measures", "norms,path,margin", "--no-progress"], "curvature": ["--examples", "100"],
        "implicit": ["--steps", "50", "--no-progress"], "correlate": ["--bootstrap", "10"], "report": []}


def _argv(command: str) -> list[str]:
    """The words of a README command, without its comment and its optional ``[...]`` parts."""
    return shlex.split(re.sub(r"\s\[[^\]]*\]", "", command), comments=True)


def test_setup_is_two_commands_then_activation():
    assert [line.split("#")[0].strip() for line in SHELL_BLOCKS[0].splitlines()] == ["make demo", "make test"]
    after = TEXT.split("```", 2)[2].split("\n\n")[1]  # the paragraph right after the set-up block
    assert "source .venv/bin/activate" in after
    makefile = (README.parent / "Makefile").read_text()
    assert "source $(VENV)/bin/activate" in makefile and makefile.count('@echo "$(NEXT)"') == 2


@pytest.mark.parametrize("command", COMMANDS + DOC_COMMANDS)
def test_readme_command_parses(command):
    """Every geomopt command the README and the docs show is accepted by the command line (flags, choices, types)."""
    build_parser().parse_args(_argv(command)[1:])


def test_readme_first_commands_run_as_typed(tmp_path):
    """The first commands run in a fresh folder, in bash after ``source .venv/bin/activate`` (the venv of this
    Python; ``geomopt`` must resolve there), each with the tiny flags of its subcommand appended."""
    assert len(COMMANDS) >= FIRST
    runnable = [c for c in COMMANDS[:FIRST] if _argv(c)[1] in TINY]
    assert len(runnable) >= 3, f"the README's first commands are mostly not runnable in a test: {COMMANDS[:FIRST]}"
    bin_dir = Path(sys.executable).parent
    setup = f"source {shlex.quote(str(bin_dir / 'activate'))}" if (bin_dir / "activate").is_file() else \
        f"export PATH={shlex.quote(str(bin_dir))}:$PATH"
    (tmp_path / "examples").symlink_to(README.parent / "examples")
    (tmp_path / "corpus.txt").write_text(TEXT)  # the README's `--data-dir corpus.txt`: your own text file
    for block in BLOCKS:  # a Python block that opens with `# NAME.py` is that file (e.g. mymodels.py)
        name = re.match(r"# (\w+\.py)\n", block)
        if name:
            (tmp_path / name.group(1)).write_text(block)
    env = {**os.environ, "PYTHONPATH": str(Path(geomopt.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    where = subprocess.run(["bash", "-c", f"{setup} && command -v geomopt"], capture_output=True, text=True, env=env)
    assert where.stdout.strip() == str(bin_dir / "geomopt"), where
    for command in runnable:
        line = shlex.join(_argv(command) + TINY[_argv(command)[1]])
        done = subprocess.run(["bash", "-c", f"{setup} && {line}"], cwd=tmp_path, capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
