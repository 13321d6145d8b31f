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

from geomopt.sweep.claims import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE, VERDICTS

BADGE = {HOLDS: "#1a7f37", FAILS: "#cf222e", INCONCLUSIVE: "#9a6700", UNTESTABLE: "#57606a"}
# the thesis's order of the reproductions: Path-SGD first, then generalization, implicit bias, curvature, models
THESIS_ORDER = ("path-sgd", "path-sgd-rnn", "exploring-generalization", "overparametrization", "implicit-mf",
                "deep-mf", "implicit-geometry", "ekfac", "edge-of-stability", "pruning", "bn-lstm")

STYLE = """.badge{display:inline-block;padding:.1em .55em;border-radius:1em;color:#fff;font-size:.85em;
white-space:nowrap}
.why{display:block;color:#57606a;font-size:.85em}table.claims td,table.claims th{text-align:left;vertical-align:top}
table.claims td.num{text-align:right;white-space:nowrap}table.claims td.ours{min-width:16em;font-size:.9em}
table.claims tr.paper td{background:#f6f8fa;font-weight:bold}"""


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
    return f'<span class="badge" style="background:{colour}">{html.escape(verdict)}</span>'


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _ours(claim: dict[str, Any]) -> str:
    why = f'<span class="why">{html.escape(claim["why"])}</span>' if claim.get("why") else ""
    return html.escape(str(claim.get("ours", ""))).replace("\n", "<br>") + why


def _order(item: tuple[dict[str, Any], Path]) -> tuple[int, str, str]:
    name = item[0].get("experiment", "")
    rank = THESIS_ORDER.index(name) if name in THESIS_ORDER else len(THESIS_ORDER)
    return rank, name, str(item[1])


def tier(record: dict[str, Any]) -> str:
    """A claims record's protocol tier (records written before tiers say only ``quick``)."""
    return record.get("tier") or ("quick" if record.get("quick") else "full")


def scoreboard(records: list[tuple[dict[str, Any], Path]], runs_dir: Path) -> str:
    """The scoreboard table (HTML) of ``records`` = ``read_claims(runs_dir)``, grouped by paper in the thesis's
    order; empty string if none."""
    rows = []
    counts = dict.fromkeys(VERDICTS, 0)
    for record, directory in sorted(records, key=_order):
        link = "#" + anchor(directory, runs_dir)
        rows.append(f"<tr class=\"paper\"><td colspan=\"4\"><a href=\"{link}\">{html.escape(record['title'])}</a> "
                    f"&middot; {html.escape(record['experiment'])}, {tier(record)} tier, seeds "
                    f"{html.escape(str(record.get('seeds', [])))}</td>"
                    f"<td class=\"num\">{_duration(float(record.get('seconds', 0.0)))}</td></tr>")
        for c in record["claims"]:
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
            rows.append(
                f"<tr><td>{html.escape(c['text'])}<br><small>{html.escape(c['paper'])}, {html.escape(c['where'])}"
                f"</small></td><td>{badge(c['verdict'])}</td><td>{html.escape(c['published'])}</td>"
                f"<td class=\"ours\">{_ours(c)}</td><td class=\"num\">{len(c.get('seeds', record.get('seeds', [])))}"
                "</td></tr>")
    if not records:
        return ""
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    head = "".join(f"<th>{h}</th>" for h in ["claim", "verdict", "the paper", "we measured (mean [95% interval])",
                                            "seeds / compute"])
    return (f"<section id=\"scoreboard\"><h2>Scoreboard</h2><p>{sum(counts.values())} claims: {html.escape(summary)}. "
            "<b>holds</b> / <b>fails</b>: every seed and the 95% interval on the claim's side / on the opposite side "
            "(for 'no difference' claims: two one-sided tests with the claim's margin); <b>inconclusive</b>: neither, "
            "with what would decide it; <b>untestable here</b>: a run diverged, did not converge or was not run, or a "
            "selected value is at its grid's edge (the gate is named).</p>"
            f"<table class=\"claims\"><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def claims_table(record: dict[str, Any]) -> str:
    """A section's short table of its claims: claim, verdict, the paper's number, ours."""
    head = "".join(f"<th>{h}</th>" for h in ["claim", "verdict", "the paper", "we measured"])
    rows = "".join(f"<tr><td>{html.escape(c['text'])}<br><small>{html.escape(c['where'])}</small></td>"
                   f"<td>{badge(c['verdict'])}</td><td>{html.escape(c['published'])}</td>"
                   f"<td class=\"ours\">{_ours(c)}</td></tr>"
                   for c in record["claims"])
    seeds = record.get("seeds", [])
    return (f"<table class=\"claims\"><caption>Claims ({tier(record)} tier), over seeds {html.escape(str(list(seeds)))}"
            f"</caption><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
