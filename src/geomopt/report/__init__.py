"""Figures and the self-contained HTML report.

Each experiment writes a *section* into its own directory: ``section.json`` (title, text,
tables, figure file names) beside its PNG figures and CSV/JSON numbers. ``build_report``
gathers every section under a runs directory into one HTML file with the figures embedded, opening
with the claims scoreboard (every ``claims.json`` under the runs directory, ``geomopt.report.scoreboard``).
"""

from geomopt.figures import plot_bands, plot_curves
from geomopt.report.html import Section, build_report, run_warnings, write_section
from geomopt.tables import write_records, write_tables

__all__ = ["Section", "write_section", "run_warnings", "build_report", "plot_curves", "plot_bands", "write_records", "write_tables"]
