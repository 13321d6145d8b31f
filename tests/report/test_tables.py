"""results.csv / table.csv writers, read back with the csv module."""

from __future__ import annotations

import csv

from geomopt.report import write_records, write_tables


def test_write_records_header_is_the_union_of_keys_in_order_less_excluded(tmp_path):
    rows = [{"a": 1, "dir": "x", "b": 2.5}, {"a": 3, "b": 4, "c": "late"}]
    write_records(tmp_path / "r.csv", rows, exclude=["dir"])
    with (tmp_path / "r.csv").open() as f:
        got = list(csv.reader(f))
    assert got == [["a", "b", "c"], ["1", "2.5", ""], ["3", "4", "late"]]
    write_records(tmp_path / "s.csv", rows, fields=["b", "a"])
    assert (tmp_path / "s.csv").read_text().splitlines() == ["b,a", "2.5,1", "4,3"]


def test_write_tables_separates_tables_by_an_empty_row(tmp_path):
    write_tables(tmp_path / "t.csv", (["x", "y"], [[1, 2], [3, 4]]), (["z"], [["w"]]))
    with (tmp_path / "t.csv").open() as f:
        got = list(csv.reader(f))
    assert got == [["x", "y"], ["1", "2"], ["3", "4"], [], ["z"], ["w"]]
