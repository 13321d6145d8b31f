"""A fixed-seed ``geomopt train`` for every optimizer gives the stored metrics, bit for bit.

The stored numbers (``metrics.json``) were written by ``tests/golden/cases.py`` before the optimizers,
the training loop and the models were restructured; a restructuring must not change a single one. On a
machine whose torch version or CPU kernels differ from the stored fingerprint, bit-identity is not
expected of float arithmetic, and the comparison falls back to a relative 1e-5.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.golden.cases import CASES, GOLDEN, fingerprint, run_case

STORED = json.loads(GOLDEN.read_text())


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_case_is_stored():
    assert sorted(STORED["cases"]) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_seed_metrics_are_unchanged(name, tmp_path, one_thread):
    got = run_case(name, tmp_path / name)
    want = STORED["cases"][name]
    assert [r.keys() for r in got] == [r.keys() for r in want]
    if fingerprint() == STORED["fingerprint"]:
        assert got == want, f"{name}: metrics differ from the stored fixed-seed run"
        return
    for g, w in zip(got, want):
        for key, value in w.items():
            if isinstance(value, float):
                assert math.isclose(g[key], value, rel_tol=1e-5, abs_tol=1e-8), (name, g, w)
            else:
                assert g[key] == value, (name, key)
