"""CSV files of results: one record per row (``results.csv``) and printed tables (``table.csv``)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def write_records(path: Path, rows: Sequence[dict[str, Any]], *, fields: Sequence[str] | None = None,
                  exclude: Iterable[str] = (), key: Sequence[str] | None = None) -> None:
    """``rows`` as CSV with a header: ``fields``, or every key in order of first appearance, less ``exclude``
    (values of keys left out are dropped). With ``key`` (the columns naming one run), the rows already in
    ``path`` whose key is not among ``rows`` are kept, first: a reproduction over fewer settings never
    deletes the finished rows of the others."""
    skip = set(exclude)
    earlier: list[dict[str, Any]] = []
    if key is not None and Path(path).is_file():
        new = {tuple(str(r.get(k, "")) for k in key) for r in rows}
        with Path(path).open(newline="") as f:
            earlier = [r for r in csv.DictReader(f) if tuple(r.get(k, "") for k in key) not in new]
    everything = [*earlier, *rows]
    names = list(fields) if fields is not None else [k for k in dict.fromkeys(k for r in everything for k in r)
                                                       if k not in skip]
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(everything)


def write_tables(path: Path, *tables: tuple[Sequence[str], Iterable[Sequence[Any]]]) -> None:
    """One or more ``(columns, rows)`` tables in one CSV file, separated by an empty line."""
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        for i, (columns, rows) in enumerate(tables):
            if i:
                writer.writerow([])
            writer.writerow(columns)
            writer.writerows(rows)
