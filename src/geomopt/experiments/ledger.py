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

from geomopt.experiments.ladder import LADDER_FILE, rung_name, summarize, write_summary
from geomopt.experiments.records import read_stored
from geomopt.sweep.claims import CLAIMS_FILE, VERDICTS, count_verdicts, evaluate_claims, read_claims
from geomopt.train.checkpoint import atomic_write_bytes, write_json

__all__ = ["PROVENANCE", "STORED_FILES", "describe_machine", "write_provenance", "add", "file_ladder", "check",
           "readme", "write_readme"]

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
    """The geomopt checkout's commit (``+dirty`` with uncommitted changes to the package's code; a results
    ledger being filed is not code), or ``unknown`` outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", str(here.parent)],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


INVOCATION_KEYS = ("command", "commit", "date", "wall_seconds")


def _earlier_invocations(path: Path) -> list[dict[str, Any]]:
    """The invocations recorded in an earlier ``provenance.json`` of the same folder (whose finished runs the sweep
    engine's resume kept); a file from before invocations were listed counts as one."""
    if not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return list(earlier.get("invocations") or [{k: earlier[k] for k in INVOCATION_KEYS if k in earlier}])


def write_provenance(directory: str | Path, argv: list[str], started: float, wall_seconds: float) -> Path:
    """``directory/provenance.json`` for the reproduction just written there by ``geomopt`` + ``argv``: this
    invocation's command, commit, date and wall time, appended to the invocations an earlier ``provenance.json``
    there lists (a reproduction resumed across interruptions); ``wall_seconds`` is their sum."""
    import torch
    path = Path(directory) / PROVENANCE
    this = {"command": "geomopt " + " ".join(argv), "commit": _commit(),
            "date": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(float(wall_seconds), 1)}
    invocations = _earlier_invocations(path) + [this]
    record = {**this, "wall_seconds": round(sum(float(i.get("wall_seconds", 0.0)) for i in invocations), 1),
              "invocations": invocations, "machine": describe_machine(), "torch": torch.__version__,
              "python": platform.python_version()}
    write_json(path, record)
    return path


def _wall_text(prov: dict[str, Any]) -> str:
    """``N min wall`` (summed over the invocations of a resumed reproduction; an entry from before they were
    listed says that its number is the last invocation's)."""
    minutes = f"{prov['wall_seconds'] / 60:.0f} min wall"
    invocations = prov.get("invocations")
    if invocations is None:
        return minutes + " (last invocation)"
    return minutes + (f" over {len(invocations)} invocations" if len(invocations) > 1 else "")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stored(directory: Path) -> list[str]:
    """The files of a reproduction folder that go into the ledger: the fixed ones and its figures."""
    section = json.loads((directory / "section.json").read_text()) if (directory / "section.json").is_file() else {}
    figures = [f["file"] for f in section.get("figures", [])]
    return [name for name in (*STORED_FILES, *figures) if (directory / name).is_file()]


def _safe(name: str) -> str:
    """A folder name from a rung's name: characters other than letters, digits and ``=-_.`` become ``_``."""
    return "".join(c if c.isalnum() or c in "=-_." else "_" for c in name)


def _target(ledger: Path, record: dict[str, Any]) -> Path:
    """Where a reproduction goes: ``<experiment>/<tier>/``, a ladder's rung into ``.../ladder-FIELD/FIELD=VALUE/``."""
    target = ledger / record["experiment"] / _tier(record)
    if record.get("variant"):
        field, _, value = record["variant"].partition("=")
        target = target / f"ladder-{field}" / _safe(rung_name(field, json.loads(value)))
    return target


def _file(record: dict[str, Any], directory: Path, target: Path) -> None:
    """Copy a reproduction's stored files into ``target`` (emptied first, its ladders kept) with its provenance."""
    prov_path = directory / PROVENANCE
    if not prov_path.is_file():
        raise ValueError(f"results add: {directory} has no {PROVENANCE}; write it with `geomopt reproduce`")
    if target.exists():
        for old in target.iterdir():
            if old.is_dir() and old.name.startswith("ladder-"):
                continue
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    target.mkdir(parents=True, exist_ok=True)
    names = _stored(directory)
    for name in names:
        shutil.copy2(directory / name, target / name)
    provenance = json.loads(prov_path.read_text())
    provenance.update(seeds=record["seeds"], compute_seconds=record["seconds"],
                      files={name: _sha256(target / name) for name in names})
    write_json(target / PROVENANCE, provenance)


def add(runs: str | Path, ledger: str | Path = "results") -> list[Path]:
    """File every reproduction under ``runs`` (each folder with a ``claims.json``) into
    ``ledger/<experiment>/<tier>/`` with its provenance and file hashes, every scale ladder (a ``ladder.json``)
    into ``ledger/<experiment>/<tier>/ladder-FIELD/`` with its rungs, its summary rebuilt from the filed
    rungs (:func:`file_ladder`); regenerate ``ledger/README.md``.

    Raises:
        FileNotFoundError: no reproduction under ``runs``, or a ladder's rung missing.
        ValueError: a reproduction without ``provenance.json`` (run it through ``geomopt reproduce``).
    """
    ledger = Path(ledger)
    found = read_claims(runs, exclude=ledger)
    if not found:
        raise FileNotFoundError(f"results add: no {CLAIMS_FILE} under {runs}; run `geomopt reproduce NAME --out {runs}`")
    written = []
    for record, directory in found:
        target = _target(ledger, record)
        _file(record, directory, target)
        written.append(target)
    for summary in sorted(Path(runs).rglob(LADDER_FILE)):
        if ledger.resolve() not in summary.resolve().parents:
            info = json.loads(summary.read_text())
            written.append(file_ladder(ledger, info["experiment"], info["tier"], info["field"], info["values"]))
    write_readme(ledger)
    return written


def _rungs(ladder_dir: Path, field: str, values: list[Any]) -> list[Path]:
    return [ladder_dir / _safe(rung_name(field, v)) for v in values]


def file_ladder(ledger: str | Path, experiment: str, tier: str, field: str, values: list[Any]) -> Path:
    """Rebuild the ladder ``ledger/<experiment>/<tier>/ladder-FIELD/`` from its filed rungs (one per value):
    ``ladder.json``, ``ladder.png`` and ``section.json`` (:func:`geomopt.experiments.ladder.summarize`), and a
    ``provenance.json`` with the rungs' summed times and the hashes of those files.

    Raises:
        FileNotFoundError: a rung of ``values`` is not in the ledger.
    """
    root = Path(ledger) / experiment / tier / f"ladder-{field}"
    missing = [str(d) for d in _rungs(root, field, values) if not (d / CLAIMS_FILE).is_file()]
    if missing:
        raise FileNotFoundError(f"results add: ladder {experiment}/{tier} over {field}: rung(s) {missing} not filed")
    records = [json.loads((d / CLAIMS_FILE).read_text()) for d in _rungs(root, field, values)]
    for old in ("ladder.png", "section.json"):
        (root / old).unlink(missing_ok=True)
    write_summary(root, summarize(experiment, field, values, records, tier))
    provs = [json.loads((d / PROVENANCE).read_text()) for d in _rungs(root, field, values)]
    names = [n for n in (LADDER_FILE, "ladder.png", "section.json") if (root / n).is_file()]
    write_json(root / PROVENANCE, {
        "command": provs[0]["command"], "commit": provs[0]["commit"], "date": provs[0]["date"],
        "machine": provs[0]["machine"], "torch": provs[0]["torch"],
        "wall_seconds": sum(p["wall_seconds"] for p in provs), "compute_seconds": sum(r["seconds"] for r in records),
        "field": field, "values": list(values), "rungs": [d.name for d in _rungs(root, field, values)],
        "files": {n: _sha256(root / n) for n in names}})
    return root


def _all_entries(ledger: Path) -> list[tuple[dict[str, Any], Path]]:
    """Every filed reproduction, a ladder's rungs included."""
    return [(r, d) for r, d in read_claims(ledger) if (d / PROVENANCE).is_file()]


def _entries(ledger: Path) -> list[tuple[dict[str, Any], Path]]:
    """The scoreboard's reproductions: every filed one but a ladder's rungs."""
    return [(r, d) for r, d in _all_entries(ledger) if not r.get("variant")]


def _ladders(ledger: Path) -> list[Path]:
    """Every filed ladder's folder (with its ``ladder.json``), sorted."""
    return sorted(p.parent for p in ledger.rglob(LADDER_FILE) if (p.parent / PROVENANCE).is_file())


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def _effect_cell(rung: dict[str, Any]) -> str:
    if "mean" not in rung:
        return f"**{rung['verdict']}**"
    return f"**{rung['verdict']}**<br>{rung['mean']:.3g} [{rung['low']:.3g}, {rung['high']:.3g}]"


def _ladder_lines(ledger: Path, root: Path, verdicts: dict[str, str] | None) -> list[str]:
    """A ladder's README section: for each claim that fails or is untestable at its tier (every such claim
    at some rung when the tier's entry is not filed), each part's verdict and signed effect per rung and
    the trend. ``verdicts``: the tier entry's verdict per claim id."""
    ladder = json.loads((root / LADDER_FILE).read_text())
    prov = json.loads((root / PROVENANCE).read_text())
    field, bad = ladder["field"], ("fails", "untestable here")
    shown = {cid: e for cid, e in ladder["claims"].items()
             if (verdicts.get(cid) in bad if verdicts is not None else any(v in bad for v in e["verdicts"]))}
    lines = [f"### Scale ladder over `{field}` — {root.relative_to(ledger).as_posix()}", "",
             f"`{prov['command']}` · rungs {field} = {', '.join(json.dumps(v) for v in ladder['values'])} · seeds "
             f"{ladder['seeds'][0]} · {prov['compute_seconds'] / 60:.0f} min compute · commit {prov['commit'][:12]}", "",
             "Each cell: the verdict at that rung and the effect, mean [95% interval] over seeds, signed so that "
             "above 0 is the claim's side, in the units the comparison stores (an error rate as a fraction, not in %). A trend is stated only when the 95% intervals of the smallest and the "
             "largest rung that pass the run-quality gates are apart and every seed moved the same way.", ""]
    if not shown:
        return lines + ["No claim of this ladder fails or is untestable at its tier; every rung is in `ladder.json`.", ""]
    lines += ["| claim | part | " + " | ".join(f"{field}={_cell(json.dumps(v))}" for v in ladder["values"])
              + f" | as {field} grows |", "|---|---|" + "---|" * (len(ladder["values"]) + 1)]
    for cid, entry in shown.items():
        head = f"{cid} ({verdicts[cid]} at {ladder['tier']})" if verdicts is not None else cid
        for name, part in entry["parts"].items():
            lines.append(f"| {_cell(head)} | {_cell(name or '-')} | "
                         + " | ".join(_effect_cell(r) for r in part["rungs"]) + f" | {_cell(part['text'])} |")
    return lines + [""]


def _entry_lines(ledger: Path, record: dict[str, Any], directory: Path) -> list[str]:
    prov = json.loads((directory / PROVENANCE).read_text())
    rel = directory.relative_to(ledger).as_posix()
    lines = [f"## {record['title']} — {rel}", "",
             f"`{prov['command']}` · seeds {record['seeds']} · {_wall_text(prov)}, "
             f"{record['seconds'] / 60:.0f} min compute · commit {prov['commit'][:12]} · {prov['machine']}", "",
             "| verdict | claim | the paper | we measured | why / what would decide it |",
             "|---|---|---|---|---|"]
    lines += [f"| **{c['verdict']}** | {_cell(c['text'])} ({_cell(c['where'])}) | {_cell(c['published'])} | "
              f"{_cell(c['ours'])} | {_cell(c.get('why', ''))} |" for c in record["claims"]]
    return lines + [""]


def readme(ledger: str | Path) -> str:
    """The ledger's README: one scoreboard across all papers, in the thesis's order, per tier, each tier's
    scale ladders after its table (a ladder whose tier is not filed, at the end)."""
    from geomopt.report.scoreboard import THESIS_ORDER
    ledger = Path(ledger)
    entries = sorted(_entries(ledger), key=lambda e: (
        THESIS_ORDER.index(e[0]["experiment"]) if e[0]["experiment"] in THESIS_ORDER else len(THESIS_ORDER),
        str(e[1])))
    lines = ["# Results ledger", "",
             "Generated by `geomopt results add`; checked by `geomopt results check` (which recomputes every verdict "
             "below from the stored raw numbers, `results.csv` and `curves.csv`, and every scale ladder from its "
             "rungs). Each folder's `provenance.json` names the command, commit, machine and seeds, and, where the "
             "claims were decided anew after a rule changed (`geomopt results redecide`), when and what changed. "
             "Verdicts: see the README's section on verdicts.", ""] + _summary_lines(entries)
    ladders = _ladders(ledger)
    for record, directory in entries:
        lines += _entry_lines(ledger, record, directory)
        verdicts = {c["id"]: c["verdict"] for c in record["claims"]}
        for root in [r for r in ladders if r.parent == directory]:
            lines += _ladder_lines(ledger, root, verdicts)
    placed = {d for _, d in entries}
    for root in [r for r in ladders if r.parent not in placed]:
        lines += _ladder_lines(ledger, root, None)
    return "\n".join(lines)


def _tier(record: dict[str, Any]) -> str:
    return record.get("tier", "quick" if record.get("quick") else "full")


def _summary_lines(entries: list[tuple[dict[str, Any], Path]]) -> list[str]:
    """Verdict counts per tier, then one row per reproduction: its counts at every filed tier."""
    tiers = sorted({_tier(r) for r, _ in entries}, key=lambda t: (("mid", "full", "quick") + (t,)).index(t))
    lines = []
    for tier in tiers:
        counts = count_verdicts([c for r, _ in entries if _tier(r) == tier for c in r["claims"]])
        lines.append(f"- **{tier}**: {sum(counts.values())} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    lines += ["", "| reproduction | " + " | ".join(tiers) + " | scale ladders |",
              "|---|" + "---|" * (len(tiers) + 1)]
    by_experiment: dict[str, dict[str, str]] = {}
    ladders: dict[str, list[str]] = {}
    for record, directory in entries:
        counts = count_verdicts(record["claims"])
        title = record.get("title", record["experiment"])
        by_experiment.setdefault(title, {})[_tier(record)] = (
            ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no claims")
        ladders.setdefault(title, []).extend(_ladder_names(directory, _tier(record)))
    for title, per_tier in by_experiment.items():
        lines.append(f"| {title} | " + " | ".join(per_tier.get(t, "not filed") for t in tiers)
                     + f" | {'; '.join(ladders[title]) or '-'} |")
    return lines + [""]


def _ladder_names(directory: Path, tier: str) -> list[str]:
    """``FIELD (v1, v2, v3) at TIER`` for every ladder filed under an entry's folder."""
    out = []
    for summary in sorted(Path(directory).glob(f"ladder-*/{LADDER_FILE}")):
        ladder = json.loads(summary.read_text())
        values = ", ".join(json.dumps(v).replace(" ", "") for v in ladder["values"])
        out.append(f"`{ladder['field']}` ({values}) at {tier}")
    return out


def write_readme(ledger: str | Path) -> Path:
    """Write ``ledger/README.md`` (:func:`readme`; ``geomopt results readme`` regenerates it after a merge)."""
    text = readme(ledger)
    path = Path(ledger) / "README.md"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
    return path


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


def _edited(ledger: Path, directory: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """The files of ``directory`` (but ``skip``) whose hash differs from the one its provenance stores (or that
    are gone), each as a problem naming the file."""
    where = directory.relative_to(ledger).as_posix()
    files = json.loads((directory / PROVENANCE).read_text()).get("files", {})
    return [f"{where}/{n}: differs from the hash in {PROVENANCE} (edited by hand?)" for n, digest in files.items()
            if n not in skip and (not (directory / n).is_file() or _sha256(directory / n) != digest)]


def _check_entry(ledger: Path, record: dict[str, Any], directory: Path) -> list[str]:
    """A filed reproduction's problems: edited files, claims that do not follow from its stored numbers."""
    where = directory.relative_to(ledger).as_posix()
    problems = _edited(ledger, directory)
    try:
        fresh = _recompute(record, directory)
    except Exception as exc:  # noqa: BLE001  (a ledger entry the current code cannot read is a problem to report)
        return problems + [f"{where}: cannot recompute its claims: {type(exc).__name__}: {exc}"]
    stored = {c["id"]: c for c in record["claims"]}
    for c in fresh:
        old = stored.pop(c["id"], None)
        if old is None:
            problems.append(f"{where}: claim {c['id']!r} is not in the stored {CLAIMS_FILE}")
        elif _normalized(old) != _normalized(c):
            what = (f"stored verdict {old['verdict']!r}, recomputed {c['verdict']!r}"
                    if old["verdict"] != c["verdict"] else "its stored numbers or text differ from the recomputed")
            problems.append(f"{where}: claim {c['id']!r}: {what}")
    return problems + [f"{where}: stored claim {i!r} is no longer a claim of the experiment" for i in stored]


def _check_ladder(ledger: Path, root: Path) -> list[str]:
    """A filed ladder's problems: edited files, a missing or unsummarized rung, a summary (verdicts, effects,
    trends) that does not follow from its rungs' stored claims (which :func:`_check_entry` recomputes)."""
    where = root.relative_to(ledger).as_posix()
    problems = _edited(ledger, root)
    stored = json.loads((root / LADDER_FILE).read_text())
    rungs = _rungs(root, stored["field"], stored["values"])
    problems += [f"{where}: rung {d.name} is not filed" for d in rungs if not (d / CLAIMS_FILE).is_file()]
    problems += [f"{where}: {d.name} is filed but not a rung of {LADDER_FILE}"
                 for d in root.iterdir() if d.is_dir() and d not in rungs]
    if problems:
        return problems
    records = [json.loads((d / CLAIMS_FILE).read_text()) for d in rungs]
    fresh = summarize(stored["experiment"], stored["field"], stored["values"], records, stored["tier"])
    if _normalized(fresh) != _normalized(stored):
        changed = sorted(k for k in fresh["claims"] if _normalized(fresh["claims"][k]) != _normalized(
            stored.get("claims", {}).get(k)))
        problems.append(f"{where}: {LADDER_FILE} does not follow from its rungs' claims (claims {changed or 'fields'} "
                        "differ from the recomputed)")
    return problems


def check(ledger: str | Path = "results") -> list[str]:
    """Every problem of the ledger: a file whose hash differs from its provenance (edited by hand), a claim
    whose stored record does not follow from the stored numbers (every rung of a ladder included), a ladder
    whose summary does not follow from its rungs, a stale README. Empty: all is well.

    Raises:
        FileNotFoundError: ``ledger`` is not a folder.
    """
    ledger = Path(ledger)
    if not ledger.is_dir():
        raise FileNotFoundError(f"results check: no ledger folder {ledger}")
    entries = _all_entries(ledger)
    problems = [p for record, directory in entries for p in _check_entry(ledger, record, directory)]
    problems += [p for root in _ladders(ledger) for p in _check_ladder(ledger, root)]
    if entries and (not (ledger / "README.md").is_file() or (ledger / "README.md").read_text() != readme(ledger)):
        problems.append(f"{ledger}/README.md is stale: regenerate it with `geomopt results readme {ledger}`")
    return problems


def redecide(ledger: str | Path = "results") -> list[str]:
    """Decide every filed claim anew from its stored raw numbers with the current claim logic, for when the rules
    change: no run is repeated. Each entry whose claims differ gets a new ``claims.json``, its hash in
    ``provenance.json`` and a ``redecided`` note there (commit, date, the claims that changed, each with its old
    and new verdict); every ladder's summary is rebuilt from its rungs and ``README.md`` regenerated. Returns the
    changes, one line each (``where: claim (old -> new)``).

    Raises:
        FileNotFoundError: ``ledger`` is not a folder.
        ValueError: an entry whose raw numbers differ from their hashes (edited by hand: nothing is rewritten), or
            that the current code cannot read.
    """
    ledger = Path(ledger)
    if not ledger.is_dir():
        raise FileNotFoundError(f"results redecide: no ledger folder {ledger}")
    entries = _all_entries(ledger)
    edited = [p for _, d in entries for p in _edited(ledger, d, skip=(CLAIMS_FILE,))]
    if edited:
        raise ValueError("results redecide: refusing to decide from numbers that differ from their hashes:\n  "
                         + "\n  ".join(edited))
    decided = []  # every entry is decided before any file is written: an entry that cannot be read changes nothing
    for record, directory in entries:
        where = directory.relative_to(ledger).as_posix()
        try:
            fresh = _recompute(record, directory)
        except Exception as exc:  # noqa: BLE001  (name the entry the current code cannot read)
            raise ValueError(f"results redecide: {where}: cannot recompute its claims: {type(exc).__name__}: {exc}") \
                from exc
        old = {c["id"]: c for c in record["claims"]}
        changed = [f"{c['id']} ({old[c['id']]['verdict'] if c['id'] in old else 'new'} -> {c['verdict']})"
                   for c in fresh if c["id"] not in old or _normalized(old[c["id"]]) != _normalized(c)]
        changed += [f"{i} ({old[i]['verdict']} -> no longer a claim)" for i in old if i not in {c["id"] for c in fresh}]
        if changed:
            decided.append((record, directory, fresh, changed))
    changes = []
    for record, directory, fresh, changed in decided:
        write_json(directory / CLAIMS_FILE, {**record, "claims": fresh})
        prov = json.loads((directory / PROVENANCE).read_text())
        prov["files"][CLAIMS_FILE] = _sha256(directory / CLAIMS_FILE)
        prov.setdefault("redecided", []).append({"commit": _commit(), "claims": changed, "date": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds")})
        write_json(directory / PROVENANCE, prov)
        changes += [f"{directory.relative_to(ledger).as_posix()}: {c}" for c in changed]
    for root in _ladders(ledger):
        info = json.loads((root / LADDER_FILE).read_text())
        file_ladder(ledger, info["experiment"], info["tier"], info["field"], info["values"])
    write_readme(ledger)
    return changes


def main_check(ledger: str | Path) -> int:
    """``geomopt results check``: print the problems (or a one-line summary); exit code 1 when any."""
    problems = check(ledger)
    n, ladders = len(_entries(Path(ledger))), len(_ladders(Path(ledger)))
    if problems:
        for p in problems:
            print(f"results check: {p}", file=sys.stderr)
        print(f"results check: {len(problems)} problem(s) in {n} ledger entries", file=sys.stderr)
        return 1
    counts = count_verdicts([c for r, _ in _entries(Path(ledger)) for c in r["claims"]])
    print(f"results check: {n} ledger entries and {ladders} scale ladders, every verdict follows from its stored "
          "numbers (" + ", ".join(f"{counts[v]} {v}" for v in VERDICTS) + ")")
    return 0
