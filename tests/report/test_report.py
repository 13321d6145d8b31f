"""Report sections and the self-contained HTML report.

References: the PNG bytes on disk (the embedded data URI must base64-decode to exactly them,
starting with the PNG signature), ``html.escape`` of the inputs, and the section ``order``.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from geomopt.cli import main
from geomopt.report import Section, build_report, plot_bands, plot_curves, write_section

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL_TITLE = "Gamma <script>alert('x')</script> & co"


@pytest.fixture
def runs(tmp_path):
    """A runs directory with three sections: order 2 (with a figure), order 1, and order 5 (hostile title)."""
    root = tmp_path / "runs"
    alpha = root / "alpha"
    plot_curves({"panel": {"sgd": ([0, 1, 2], [1.0, 0.5, 0.25]), "path-sgd": ([0, 1, 2], [1.0, 0.4, 0.1])}},
                alpha / "curve.png", xlabel="epoch", ylabel="loss", logy=True)
    write_section(alpha, Section(
        title="Alpha", paragraphs=["x < y & z"], order=2,
        tables=[{"caption": "numbers", "columns": ["optimizer", "loss"],
                 "rows": [["sgd", 0.123456], ["path<sgd>", 3]]}],
        figures=[{"file": "curve.png", "caption": "training loss"}]))
    (root / "beta").mkdir(parents=True)
    write_section(root / "beta", Section(title="Beta", paragraphs=["first"], order=1))
    (root / "gamma").mkdir(parents=True)
    write_section(root / "gamma", Section(title=EVIL_TITLE, order=5))
    return root


def test_sections_in_order_with_tables_and_escaping(runs, tmp_path):
    page = build_report(runs, tmp_path / "report").read_text()
    body = page.split("<body>", 1)[1]
    h2 = re.findall(r"<h2>(.*?)</h2>", body)
    assert h2 == ["Beta", "Alpha", "Gamma &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co"]
    assert "<script" not in page
    assert "<p>x &lt; y &amp; z</p>" in page
    assert "<th>optimizer</th><th>loss</th>" in page
    assert "<td>sgd</td><td>0.1235</td>" in page
    assert "<td>path&lt;sgd&gt;</td><td>3</td>" in page
    assert "<caption>numbers</caption>" in page


def test_figure_embedded_as_exact_png(runs, tmp_path):
    page = build_report(runs, tmp_path / "report").read_text()
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 1
    decoded = base64.b64decode(uris[0], validate=True)
    assert decoded == (runs / "alpha" / "curve.png").read_bytes()
    assert decoded.startswith(PNG_SIGNATURE)
    assert "<figcaption>training loss</figcaption>" in page


def test_report_is_self_contained(runs, tmp_path):
    page = build_report(runs, tmp_path / "report").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.IGNORECASE)
    assert refs and all(ref.startswith("data:") or ref.startswith("#") for ref in refs)  # "#": in-page links
    ids = set(re.findall(r'id="([^"]+)"', page))
    assert all(ref[1:] in ids for ref in refs if ref.startswith("#"))
    assert "<link" not in page.lower() and "url(" not in page.lower() and "@import" not in page.lower()


def test_report_skips_its_own_directory(runs):
    """The default output directory lies inside the runs directory; building twice is stable."""
    first = build_report(runs, runs / "report").read_text()
    (runs / "report" / "section.json").write_text(json.dumps({"title": "stray"}))
    second = build_report(runs, runs / "report").read_text()
    assert "stray" not in second
    assert re.findall(r"<h2>(.*?)</h2>", first) == re.findall(r"<h2>(.*?)</h2>", second)


def test_write_section_with_missing_figure(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        write_section(tmp_path, Section(title="t", figures=[{"file": "nothere.png", "caption": ""}]))
    assert not (tmp_path / "section.json").exists()


def test_build_report_with_figure_deleted(runs, tmp_path):
    (runs / "alpha" / "curve.png").unlink()
    with pytest.raises(FileNotFoundError, match="curve.png"):
        build_report(runs, tmp_path / "report")


def test_empty_runs_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no section.json"):
        build_report(tmp_path, tmp_path / "report")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"paragraphs": []}'])
def test_invalid_section_json(runs, tmp_path, text):
    bad = runs / "broken" / "section.json"
    bad.parent.mkdir()
    bad.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        build_report(runs, tmp_path / "report")


def test_cli_report(runs, tmp_path, capsys):
    assert main(["report", str(runs)]) == 0
    out = runs / "report" / "index.html"
    assert str(out) in capsys.readouterr().out
    assert "<h2>Alpha</h2>" in out.read_text()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no section.json" in capsys.readouterr().err


def test_scoreboard_rows_link_to_sections(runs, tmp_path):
    """Reference: the claims.json written by write_claims, one row per claim, escaped, linked to its section."""
    from geomopt.sweep import Claim, Outcome, write_claims
    claims = [Claim("a", "Path<SGD> is faster", "Neyshabur et al. 2015", "Fig. 2", "0.01 vs 0.05",
                    lambda r: Outcome("holds", "-0.04 [-0.05, -0.03], < 0 in 3/3 seeds")),
              Claim("b", "It generalizes better", "Neyshabur et al. 2015", "Fig. 2", "1.6% vs 1.9%",
                    lambda r: Outcome("untestable here", "x", why="lr 0.3 at the high edge"))]
    write_claims(runs / "alpha", "alpha-exp", claims, None, title="Alpha", seeds=[0, 1, 2], seconds=150, tier="quick")
    page = build_report(runs, tmp_path / "report").read_text()
    board = page.split('<section id="scoreboard">', 1)[1].split("</section>", 1)[0]
    assert board.count("<tr>") == 3  # header + 2 claims; the paper's group row has its own class
    assert board.count('<tr class="paper">') == 1 and '<a href="#sec-alpha">Alpha</a>' in board
    assert "Path&lt;SGD&gt; is faster" in board
    assert '<section id="sec-alpha">' in page and 'href="#sec-alpha"' in page.split("<ul>", 1)[1]
    assert ">holds<" in board and ">untestable here<" in board
    assert "lr 0.3 at the high edge" in board and "2.5 min" in board and "quick tier" in board
    # the verdict is the second column, visible on a narrow screen
    assert board.index(">verdict<") < board.index(">the paper<")
    # the section shows its claims as a short table
    section = page.split('<section id="sec-alpha">', 1)[1].split("</section>", 1)[0]
    assert "Claims (quick tier), over seeds [0, 1, 2]" in section and "0.01 vs 0.05" in section
    # no claims: no scoreboard
    (runs / "alpha" / "claims.json").unlink()
    assert 'id="scoreboard"' not in build_report(runs, tmp_path / "report").read_text()


def test_band_figure(tmp_path):
    from geomopt.sweep import band
    mean, low, high = band([[1.0, 0.5, 0.2], [1.0, 0.7, float("inf")]])
    path = plot_bands({"p": {"sgd": ([0, 1, 2], mean, low, high)}}, tmp_path / "b.png", xlabel="e", ylabel="l",
                      logy=True)  # an infinite bound and bounds below 0 on a log axis
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="expected"):
        plot_bands({"p": {"sgd": ([0, 1], [1, 2], [0, 1])}}, tmp_path / "c.png", xlabel="e", ylabel="l")
