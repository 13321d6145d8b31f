"""mkdocs hooks: the Results ledger page shows the committed ledger's scoreboard (results/README.md)."""

from pathlib import Path

LEDGER = Path(__file__).parents[1] / "results" / "README.md"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "results.md":
        return markdown
    if not LEDGER.is_file():
        return markdown + "\n\nNo ledger has been filed yet (`geomopt results add RUNS`).\n"
    text = LEDGER.read_text()
    # the ledger's links are relative to results/; the README's verdict section is the reproductions page
    return markdown + "\n" + text.split("\n", 1)[1].replace("the README's section on verdicts",
                                                              "[Reproductions and verdicts](reproductions.md)")
