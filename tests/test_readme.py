"""Every ```python block of README.md runs as written (issue 16, point 9).

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
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"readme_block_{index}"}
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)
    if "loss" in namespace:  # a training example: it must not have blown up
        assert math.isfinite(float(namespace["loss"])) and float(namespace["loss"]) < 2.0
