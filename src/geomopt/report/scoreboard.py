"""The claims scoreboard: one row per claim of every reproduction under a runs folder.

Reads each ``claims.json`` (:func:`geomopt.sweep.claims.write_claims`): paper, claim (linked to its
experiment's report section), figure/table, published number, ours with its 95% interval and the
seeds, the verdict as a coloured badge, the compute time the reproduction spent. The same rows,
without paper and time, make each section's short claims table.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from geomopt.sweep.claims import FAILS, HOLDS, PARTLY

BADGE = {HOLDS: "#1a7f37", PARTLY: "#9a6700", FAILS: "#cf222e"}

STYLE = """.badge{display:inline-block;padding:.1em .55em;border-radius:1em;color:#fff;font-size:.85em;
white-space:nowrap}
.caveat{display:block;color:#9a6700;font-size:.85em}table.claims td,table.claims th{text-align:left;vertical-align:top}
table.claims td.num{text-align:right;white-space:nowrap}table.claims td.ours{min-width:26em;font-size:.9em}"""


def anchor(directory: Path, runs_dir: Path) -> str:
    """The HTML id of the section in ``directory``: its path under ``runs_dir`` with ``/`` as ``-``."""
    try:
        rel = directory.resolve().relative_to(runs_dir.resolve())
    except ValueError:
        rel = Path(directory.name)
    text = "-".join(rel.parts) or "runs"
    return "sec-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def badge(verdict: str) -> str:
    colour = BADGE.get(verdict, "#57606a")
    label = "does not hold at this scale" if verdict == FAILS else verdict
    return f'<span class="badge" style="background:{colour}">{html.escape(label)}</span>'


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _ours(claim: dict[str, Any]) -> str:
    caveats = "".join(f'<span class="caveat">&#9888; {html.escape(c)}</span>' for c in claim.get("caveats", []))
    return html.escape(str(claim.get("ours", ""))).replace("\n", "<br>") + caveats


def scoreboard(records: list[tuple[dict[str, Any], Path]], runs_dir: Path) -> str:
    """The scoreboard table (HTML) of ``records`` = ``read_claims(runs_dir)``; empty string if none."""
    rows = []
    counts = {HOLDS: 0, PARTLY: 0, FAILS: 0}
    for record, directory in records:
        link = "#" + anchor(directory, runs_dir)
        seeds = len(record.get("seeds", []))
        protocol = "quick" if record.get("quick") else "full"
        for c in record["claims"]:
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
            rows.append(
                f"<tr><td>{html.escape(c['paper'])}<br><small>{html.escape(c['where'])}</small></td>"
                f"<td><a href=\"{link}\">{html.escape(c['text'])}</a><br><small>{html.escape(record['experiment'])}"
                f" ({protocol})</small></td><td>{html.escape(c['published'])}</td><td class=\"ours\">{_ours(c)}</td>"
                f"<td class=\"num\">{seeds}</td><td>{badge(c['verdict'])}</td>"
                f"<td class=\"num\">{_duration(float(record.get('seconds', 0.0)))}</td></tr>")
    if not rows:
        return ""
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    head = "".join(f"<th>{h}</th>" for h in ["paper", "claim", "published", "ours (mean [95% interval])", "seeds",
                                            "verdict", "compute"])
    return (f"<section id=\"scoreboard\"><h2>Scoreboard</h2><p>{len(rows)} claims: {html.escape(summary)}. A claim "
            "holds only when it holds in every seed and the 95% interval over seeds excludes the opposite; a "
            "selected hyperparameter at its grid's edge (&#9888;) makes it partly.</p>"
            f"<table class=\"claims\"><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def claims_table(record: dict[str, Any]) -> str:
    """A section's short table of its claims: claim, figure/table, published, ours, verdict."""
    head = "".join(f"<th>{h}</th>" for h in ["claim", "where", "published", "ours", "verdict"])
    rows = "".join(f"<tr><td>{html.escape(c['text'])}</td><td>{html.escape(c['where'])}</td>"
                   f"<td>{html.escape(c['published'])}</td><td class=\"ours\">{_ours(c)}</td>"
                   f"<td>{badge(c['verdict'])}</td></tr>"
                   for c in record["claims"])
    seeds = record.get("seeds", [])
    return (f"<table class=\"claims\"><caption>Claims, over seeds {html.escape(str(list(seeds)))}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
