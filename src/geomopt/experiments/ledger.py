"""The results ledger: reproductions' stored outcomes that anyone can recompute (``results/<experiment>/<tier>/``).

Each entry holds what a reproduction wrote (``claims.json``, ``experiment.json``, ``results.csv``,
``curves.csv``, ``table.csv``, ``section.json`` and its figures) and ``provenance.json``: the command,
commit, date, wall time, machine, torch version, seeds, and the SHA-256 of every stored file.
``geomopt results add RUNS`` files reproductions into the ledger and regenerates its ``README.md`` (one
scoreboard across all papers, the paper's number beside ours); ``geomopt results check`` recomputes every
claim of every entry from its stored raw numbers with the current claim logic and reports each entry
whose stored verdict does not follow, whose files were edited by hand, or whose README is stale.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from geomopt.experiments.records import read_stored
from geomopt.sweep.claims import CLAIMS_FILE, VERDICTS, count_verdicts, evaluate_claims, read_claims
from geomopt.train.checkpoint import atomic_write_bytes, write_json

__all__ = ["PROVENANCE", "STORED_FILES", "describe_machine", "write_provenance", "add", "check", "readme"]

PROVENANCE = "provenance.json"
STORED_FILES = (CLAIMS_FILE, "experiment.json", "results.csv", "curves.csv", "table.csv", "section.json")


def describe_machine() -> str:
    """One line: CPU model, cores, torch threads, torch version, GPU if any."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def _commit() -> str:
    """The geomopt checkout's commit (``+dirty`` with uncommitted changes), or ``unknown`` outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_provenance(directory: str | Path, argv: list[str], started: float, wall_seconds: float) -> Path:
    """``directory/provenance.json`` for the reproduction just written there by ``geomopt`` + ``argv``."""
    import torch
    record = {"command": "geomopt " + " ".join(argv), "commit": _commit(),
              "date": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
              "wall_seconds": round(float(wall_seconds), 1), "machine": describe_machine(),
              "torch": torch.__version__, "python": platform.python_version()}
    path = Path(directory) / PROVENANCE
    write_json(path, record)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stored(directory: Path) -> list[str]:
    """The files of a reproduction folder that go into the ledger: the fixed ones and its figures."""
    section = json.loads((directory / "section.json").read_text()) if (directory / "section.json").is_file() else {}
    figures = [f["file"] for f in section.get("figures", [])]
    return [name for name in (*STORED_FILES, *figures) if (directory / name).is_file()]


def add(runs: str | Path, ledger: str | Path = "results") -> list[Path]:
    """File every reproduction under ``runs`` (each folder with a ``claims.json``) into
    ``ledger/<experiment>/<tier>/`` with its provenance and file hashes; regenerate ``ledger/README.md``.

    Raises:
        FileNotFoundError: no reproduction under ``runs``.
        ValueError: a reproduction without ``provenance.json`` (run it through ``geomopt reproduce``).
    """
    found = read_claims(runs, exclude=Path(ledger))
    if not found:
        raise FileNotFoundError(f"results add: no {CLAIMS_FILE} under {runs}; run `geomopt reproduce NAME --out {runs}`")
    written = []
    for record, directory in found:
        prov_path = directory / PROVENANCE
        if not prov_path.is_file():
            raise ValueError(f"results add: {directory} has no {PROVENANCE}; write it with `geomopt reproduce`")
        target = Path(ledger) / record["experiment"] / record.get("tier", "quick" if record.get("quick") else "full")
        if record.get("variant"):  # a rung of a scale ladder
            target = target / ("ladder-" + "".join(c if c.isalnum() or c in "=-_." else "_" for c in record["variant"]))
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        names = _stored(directory)
        for name in names:
            shutil.copy2(directory / name, target / name)
        provenance = json.loads(prov_path.read_text())
        provenance.update(seeds=record["seeds"], compute_seconds=record["seconds"],
                          files={name: _sha256(target / name) for name in names})
        write_json(target / PROVENANCE, provenance)
        written.append(target)
    for summary in sorted(Path(runs).rglob("ladder.json")):
        if Path(ledger).resolve() in summary.resolve().parents:
            continue
        info = json.loads(summary.read_text())
        target = Path(ledger) / info["experiment"] / info["tier"] / f"ladder-{info['field']}"
        target.mkdir(parents=True, exist_ok=True)
        for name in ("ladder.json", "ladder.png", "section.json"):
            if (summary.parent / name).is_file():
                shutil.copy2(summary.parent / name, target / name)
        written.append(target)
    _write_readme(Path(ledger))
    return written


def _entries(ledger: Path) -> list[tuple[dict[str, Any], Path]]:
    return [(r, d) for r, d in read_claims(ledger) if (d / PROVENANCE).is_file()]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def readme(ledger: str | Path) -> str:
    """The ledger's README: one scoreboard across all papers, in the thesis's order, per tier."""
    from geomopt.report.scoreboard import THESIS_ORDER
    entries = sorted(_entries(Path(ledger)), key=lambda e: (
        THESIS_ORDER.index(e[0]["experiment"]) if e[0]["experiment"] in THESIS_ORDER else len(THESIS_ORDER),
        str(e[1])))
    counts = count_verdicts([c for r, _ in entries for c in r["claims"]])
    lines = ["# Results ledger", "",
             "Generated by `geomopt results add`; checked by `geomopt results check` (which recomputes every verdict "
             "below from the stored raw numbers, `results.csv` and `curves.csv`). Each folder's `provenance.json` "
             "names the command, commit, machine and seeds. Verdicts: see the README's section on verdicts.", "",
             f"{sum(counts.values())} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()), ""]
    for record, directory in entries:
        prov = json.loads((directory / PROVENANCE).read_text())
        rel = directory.relative_to(Path(ledger)).as_posix()
        lines += [f"## {record['title']} — {rel}", "",
                  f"`{prov['command']}` · seeds {record['seeds']} · {prov['wall_seconds'] / 60:.0f} min wall, "
                  f"{record['seconds'] / 60:.0f} min compute · commit {prov['commit'][:12]} · {prov['machine']}", "",
                  "| verdict | claim | the paper | we measured | why / what would decide it |",
                  "|---|---|---|---|---|"]
        lines += [f"| **{c['verdict']}** | {_cell(c['text'])} ({_cell(c['where'])}) | {_cell(c['published'])} | "
                  f"{_cell(c['ours'])} | {_cell(c.get('why', ''))} |" for c in record["claims"]]
        lines.append("")
    return "\n".join(lines)


def _write_readme(ledger: Path) -> None:
    text = readme(ledger)
    atomic_write_bytes(ledger / "README.md", lambda f: f.write(text.encode()))


def _normalized(value: Any) -> Any:
    """JSON round trip, so that tuples, floats and key order compare as stored."""
    return json.loads(json.dumps(value, sort_keys=True))


def _recompute(record: dict[str, Any], directory: Path) -> list[dict[str, Any]]:
    """The claims of a ledger entry evaluated anew from its stored raw numbers."""
    from geomopt.experiments import EXPERIMENTS
    module = EXPERIMENTS[record["experiment"]]
    config = json.loads((directory / "experiment.json").read_text())
    exp = module.CONFIG().replace(config)
    return evaluate_claims(module.claims(exp), read_stored(directory, exp), record["seeds"])


def check(ledger: str | Path = "results") -> list[str]:
    """Every problem of the ledger: a file whose hash differs from its provenance (edited by hand), a claim
    whose stored record does not follow from the stored numbers, a stale README. Empty: all is well.

    Raises:
        FileNotFoundError: ``ledger`` is not a folder.
    """
    ledger = Path(ledger)
    if not ledger.is_dir():
        raise FileNotFoundError(f"results check: no ledger folder {ledger}")
    problems = []
    entries = _entries(ledger)
    for record, directory in entries:
        where = directory.relative_to(ledger).as_posix()
        files = json.loads((directory / PROVENANCE).read_text()).get("files", {})
        edited = [n for n, digest in files.items() if not (directory / n).is_file() or _sha256(directory / n) != digest]
        problems += [f"{where}/{n}: differs from the hash in {PROVENANCE} (edited by hand?)" for n in edited]
        try:
            fresh = _recompute(record, directory)
        except Exception as exc:  # noqa: BLE001  (a ledger entry the current code cannot read is a problem to report)
            problems.append(f"{where}: cannot recompute its claims: {type(exc).__name__}: {exc}")
            continue
        stored = {c["id"]: c for c in record["claims"]}
        for c in fresh:
            old = stored.pop(c["id"], None)
            if old is None:
                problems.append(f"{where}: claim {c['id']!r} is not in the stored {CLAIMS_FILE}")
            elif _normalized(old) != _normalized(c):
                what = (f"stored verdict {old['verdict']!r}, recomputed {c['verdict']!r}"
                        if old["verdict"] != c["verdict"] else "its stored numbers or text differ from the recomputed")
                problems.append(f"{where}: claim {c['id']!r}: {what}")
        problems += [f"{where}: stored claim {i!r} is no longer a claim of the experiment" for i in stored]
    if entries and (not (ledger / "README.md").is_file() or (ledger / "README.md").read_text() != readme(ledger)):
        problems.append(f"{ledger}/README.md is stale: run `geomopt results add` again or regenerate it")
    return problems


def main_check(ledger: str | Path) -> int:
    """``geomopt results check``: print the problems (or a one-line summary); exit code 1 when any."""
    problems = check(ledger)
    n = len(_entries(Path(ledger)))
    if problems:
        for p in problems:
            print(f"results check: {p}", file=sys.stderr)
        print(f"results check: {len(problems)} problem(s) in {n} ledger entries", file=sys.stderr)
        return 1
    counts = count_verdicts([c for r, _ in _entries(Path(ledger)) for c in r["claims"]])
    print(f"results check: {n} ledger entries, every verdict follows from its stored numbers ("
          + ", ".join(f"{counts[v]} {v}" for v in VERDICTS) + ")")
    return 0
