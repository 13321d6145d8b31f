"""Atomic checkpoints: a crash or Ctrl-C at any moment leaves the previous checkpoint intact."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; a missing, empty, truncated or foreign file
    raises an error naming it and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume (was the run started with this --out?)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        reason = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path} is not a readable geomopt checkpoint ({'empty file' if path.stat().st_size == 0 else reason}); "
                         "it is damaged or was written by something else: delete it and train again "
                         "(geomopt train ... --overwrite)") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a geomopt checkpoint (not a dict of states): delete it and train again "
                         "(geomopt train ... --overwrite)")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict(state)``; a checkpoint of another architecture raises ValueError naming ``path``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()][:3]
        raise ValueError(f"{path} holds a different model than its config.json describes ({'; '.join(lines)}); "
                         "was the checkpoint copied from another run? Train again with --overwrite") from None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, human-readable."""
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def find_json(root: str | Path, name: str, *, key: str, kind: type, what: str, hint: str,
              exclude: Path | None = None) -> list[tuple[dict[str, Any], Path]]:
    """Every file ``name`` below ``root`` (sorted by path; none inside ``exclude``) as (its JSON object,
    its folder).

    Raises:
        ValueError: a file is not valid JSON, or not an object whose ``key`` is a ``kind`` (the message
            names the file, calls it a ``what`` and ends with ``hint``).
    """
    found = []
    for path in sorted(Path(root).rglob(name)):
        if exclude is not None and exclude.resolve() in path.resolve().parents:
            continue
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get(key), kind):
            raise ValueError(f"{path} is not a {what}: expected a JSON object with a {kind.__name__} {key!r} ({hint})")
        found.append((record, path.parent))
    return found
