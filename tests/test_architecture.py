"""The architecture holds: every import points down the floors of :mod:`geomopt.floors` (lazy imports inside
functions count), and ``docs/architecture.md`` states the same floors."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from geomopt.floors import FLOORS, floor_of

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "geomopt"


def module_name(path: Path) -> str:
    """``src/geomopt/nn/init.py`` -> ``geomopt.nn.init``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every geomopt import in ``path``, at any depth of the tree.

    ``from geomopt import nn`` yields ``geomopt.nn`` (a submodule) and ``from geomopt import __version__`` the root
    ``geomopt``; relative imports are resolved against the module's package.
    """
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base == "geomopt":
                found += [(node.lineno, "geomopt." + a.name if (SRC / a.name).exists()
                           or (SRC / f"{a.name}.py").exists() else "geomopt") for a in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == "geomopt" or name.startswith("geomopt.")]


def upward_imports(path: Path) -> list[str]:
    """'file:line: importer (floor i) imports target (floor j)' for each import of ``path`` that points up."""
    here = module_name(path)
    mine, top = floor_of(here), here.split(".")[1] if "." in here else ""
    bad = []
    for line, target in imported_modules(path):
        target_top = target.split(".")[1] if "." in target else ""
        if target_top != top and floor_of(target) > mine:
            bad.append(f"{path.relative_to(ROOT)}:{line}: {here} (floor {mine}) imports {target} "
                       f"(floor {floor_of(target)})")
    return bad


def test_every_import_points_down():
    bad = [msg for path in sorted(SRC.rglob("*.py")) for msg in upward_imports(path)]
    assert not bad, "imports that point up the floors of geomopt.floors:\n" + "\n".join(bad)


def test_every_package_is_on_a_floor():
    tops = {p.stem if p.suffix == ".py" else p.name for p in SRC.iterdir()
            if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    placed = {name for floor in FLOORS for name in floor} - {""}
    assert tops == placed, f"on no floor: {sorted(tops - placed)}; no such package: {sorted(placed - tops)}"


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """A module on the bottom floor that imports experiments lazily, inside a function, is reported by name."""
    fake = tmp_path / "src" / "geomopt"
    (fake / "nn").mkdir(parents=True)
    (fake / "nn" / "bad.py").write_text("def f():\n    from geomopt.experiments import zoo\n    from . import mlp\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert upward_imports(fake / "nn" / "bad.py") == [
        "src/geomopt/nn/bad.py:2: geomopt.nn.bad (floor 0) imports geomopt.experiments (floor 6)"]


def test_floor_of_refuses_unknown_packages():
    with pytest.raises(ValueError, match="no floor"):
        floor_of("geomopt.nowhere.x")


def test_docs_state_the_same_floors():
    """docs/architecture.md has a table ``| floor | packages |`` whose rows, top down, are FLOORS."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", text, flags=re.M)
    stated = {int(level): tuple(re.findall(r"`([^`]*)`", names)) for level, names in rows}
    assert stated == {level: tuple(f"geomopt.{n}" if n else "geomopt" for n in names)
                      for level, names in enumerate(FLOORS)}


LONG = 80  # lines: a function longer than this says why at its top


def long_functions(root: Path) -> list[str]:
    """'file:line name (n lines)' of every function or method over LONG lines under ``root`` whose docstring does
    not start a sentence with "Long because"."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                reason = re.search(r"(^|[.:]\s+)Long because", ast.get_docstring(node) or "")
                if length > LONG and not reason:
                    found.append(f"{rel}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_long_function_without_a_reason():
    bad = long_functions(SRC)
    assert not bad, f"functions over {LONG} lines with no 'Long because ...' at their top:\n" + "\n".join(bad)


def test_the_length_check_reads_the_reason(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(LONG))
    (tmp_path / "m.py").write_text(f'def short():\n    pass\n\n\ndef long():\n    """Does much."""\n{body}\n\n'
                                   f'def excused():\n    """Does much. Long because it must."""\n{body}')
    assert long_functions(tmp_path) == [f"m.py:5 long ({LONG + 2} lines)"]
