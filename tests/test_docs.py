"""The documentation site builds with mkdocs in strict mode (any warning, e.g. a broken link or a docstring
mkdocstrings cannot read, fails), and its results page shows the committed ledger."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (make test installs it)")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra (make test installs it)")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    pages = {p.relative_to(site).as_posix() for p in site.rglob("index.html")}
    assert {"index.html", "optimizers/index.html", "reproductions/index.html", "results/index.html",
            "api/optim/index.html"} <= pages
    results = (site / "results" / "index.html").read_text()
    if (ROOT / "results" / "README.md").is_file():
        assert "claims:" in results and "provenance.json" in results
    assert "SteepestDescent" in (site / "api" / "optim" / "index.html").read_text()
    shutil.rmtree(site)
