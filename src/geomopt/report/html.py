"""Report sections (section.json) and the self-contained HTML report."""

from __future__ import annotations

import base64
import datetime
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geomopt.report.scoreboard import STYLE as SCOREBOARD_STYLE
from geomopt.report.scoreboard import anchor, claims_table, scoreboard
from geomopt.sweep.claims import CLAIMS_FILE, INCONCLUSIVE, count_verdicts, read_claims
from geomopt.train.checkpoint import atomic_write_bytes, find_json, write_json

SECTION = "section.json"


@dataclass
class Section:
    """One experiment's part of the report.

    ``tables``: dicts with ``caption``, ``columns`` and ``rows`` (lists of cells);
    ``figures``: dicts with ``file`` (relative to the section's directory) and ``caption``;
    ``citations``: the papers reproduced, with their titles (``Authors, "Title", venue year``);
    ``warnings``: runs that diverged or did not converge, shown above the section's numbers.
    """

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, str]] = field(default_factory=list)
    order: int = 100
    citations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run_warnings(rows: list[dict[str, Any]], describe, unconverged_above, *, loss: str = "train_loss"
                 ) -> tuple[list[str], str | None]:
    """The section's warnings and a caveat sentence for its verdict: every run of ``rows`` that diverged
    (``row["diverged"]``), and every chosen run (``row["chosen"]``) whose final ``loss`` is above
    ``unconverged_above(row)`` (e.g. the chance-level loss: it did not converge). ``describe(row)`` names a run."""
    diverged = [f"DIVERGED: {describe(r)}" for r in rows if r.get("diverged")]
    stuck = [f"NOT CONVERGED: {describe(r)}: final {loss.replace('_', ' ')} {r[loss]:.4g} (above "
             f"{unconverged_above(r):.4g})" for r in rows
             if r.get("chosen") and not r.get("diverged") and not r[loss] <= unconverged_above(r)]
    if not diverged and not stuck:
        return [], None
    caveat = (f"Our result, caveat: {len(diverged)} of {len(rows)} runs diverged and {len(stuck)} run(s) at a chosen "
              "setting did not converge (listed at the top of this section); the tables show them as they ended.")
    return diverged + stuck, caveat


def write_section(directory: str | Path, section: Section) -> Path:
    """Write ``section.json`` into ``directory``; figure files must already be there."""
    directory = Path(directory)
    for fig in section.figures:
        if not (directory / fig["file"]).is_file():
            raise FileNotFoundError(f"section {section.title!r}: figure {directory / fig['file']} does not exist")
    path = directory / SECTION
    write_json(path, asdict(section))
    return path


def print_section(path: str | Path) -> None:
    """Print a section's tables, its claims (``claims.json`` beside it: verdict, ours, published) and any
    "Our result" / "Verdict" paragraph as plain text."""
    section = json.loads(Path(path).read_text())
    print(f"\n== {section['title']} ==")
    for c in section.get("citations", []):
        print(f"Paper: {c}")
    for w in section.get("warnings", []):
        print(f"warning: {w}")
    for table in section.get("tables", []):
        rows = [[_text(v) for v in row] for row in table["rows"]]
        widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(str(c))
                  for i, c in enumerate(table["columns"])]
        print(f"\n{table.get('caption', '')}")
        print("  ".join(str(c).rjust(w) for c, w in zip(table["columns"], widths)))
        for r in rows:
            print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    claims = Path(path).parent / CLAIMS_FILE
    if claims.is_file():
        record = json.loads(claims.read_text())
        counts = ", ".join(f"{n} {v}" for v, n in count_verdicts(record["claims"]).items())
        print(f"\nClaims (seeds {record.get('seeds')}): {counts}")
        for c in record["claims"]:
            print(f"  [{c['verdict']}] {c['text']} ({c['where']}; the paper: {c['published']})")
            print("    we measured: " + str(c["ours"]).replace("\n", "\n          "))
            if c.get("why"):
                print(f"    {'what would decide it' if c['verdict'] == INCONCLUSIVE else 'why'}: {c['why']}")
    for p in section.get("paragraphs", []):
        if p.startswith(("Our result", "Verdict")):
            print(f"\n{p}")


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _render(section: dict[str, Any], directory: Path, runs_dir: Path, claims: dict[str, Any] | None) -> str:
    parts = [f"<section id=\"{anchor(directory, runs_dir)}\"><h2>{html.escape(section['title'])}</h2>"]
    if section.get("citations"):
        parts.append("<p class=\"cite\">Paper" + ("s" if len(section["citations"]) > 1 else "") + ": "
                     + "; ".join(html.escape(c) for c in section["citations"]) + "</p>")
    if section.get("warnings"):
        parts.append("<div class=\"warn\"><b>Diverged or unconverged runs</b> (left out of the verdicts or named "
                     "there):<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in section["warnings"]) + "</ul></div>")
    parts += [f"<p>{html.escape(p)}</p>" for p in section.get("paragraphs", [])]
    if claims is not None:
        parts.append(claims_table(claims))
    for table in section.get("tables", []):
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table["columns"])
        rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table["rows"])
        parts.append(f"<table><caption>{html.escape(table.get('caption', ''))}</caption>"
                     f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    for fig in section.get("figures", []):
        path = directory / fig["file"]
        if not path.is_file():
            raise FileNotFoundError(f"report: section {section['title']!r}: figure {path} does not exist")
        data = base64.b64encode(path.read_bytes()).decode()
        mime = "image/svg+xml" if fig["file"].endswith(".svg") else "image/png"
        parts.append(f"<figure><img alt=\"{html.escape(fig.get('caption', ''))}\" src=\"data:{mime};base64,{data}\">"
                     f"<figcaption>{html.escape(fig.get('caption', ''))}</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}caption{text-align:left;font-weight:bold;padding:.3em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:.9em;color:#555}.cite{font-style:italic;color:#444}
.warn{background:#fff3f0;border-left:4px solid #c0392b;padding:.4em 1em;margin:1em 0}""" + SCOREBOARD_STYLE


def build_report(runs_dir: str | Path, out_dir: str | Path) -> Path:
    """Gather every ``section.json`` under ``runs_dir`` into ``out_dir/index.html`` (figures embedded),
    opening with the scoreboard of every ``claims.json`` found there (each also shown in its section; a
    scale ladder's rungs are shown in their sections and the ladder's, not in the scoreboard)."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    try:
        found = find_json(runs_dir, SECTION, key="title", kind=str, what="section", exclude=out_dir,
                          hint="write it with geomopt.report.write_section")
        records = read_claims(runs_dir, exclude=out_dir)
    except ValueError as exc:
        raise ValueError(f"report: {exc}") from exc
    if not found:
        raise FileNotFoundError(f"report: no {SECTION} under {runs_dir}; run `geomopt reproduce NAME --out {runs_dir}` first")
    found.sort(key=lambda item: (item[0].get("order", 100), item[0]["title"]))
    by_dir = {d.resolve(): r for r, d in records}
    toc = "".join(f"<li><a href=\"#{anchor(d, runs_dir)}\">{html.escape(s['title'])}</a></li>" for s, d in found)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = "\n".join(_render(s, d, runs_dir, by_dir.get(d.resolve())) for s, d in found)
    board = [(r, d) for r, d in records if not r.get("variant")]
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>geomopt report</title>"
            f"<style>{_STYLE}</style></head><body><h1>geomopt report</h1><p>Built {stamp} from "
            f"{html.escape(str(runs_dir))}.</p>{scoreboard(board, runs_dir)}<ul>{toc}</ul>{body}</body></html>\n")
    out = out_dir / "index.html"
    atomic_write_bytes(out, lambda f: f.write(page.encode()))
    return out
