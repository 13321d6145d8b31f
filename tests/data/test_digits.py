"""Digits: shapes, ranges and the seeded split, checked against sklearn's raw arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from geomopt.data import load_dataset


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    d = sk_load_digits()
    return d.data, d.target


def test_shapes_ranges_and_sizes(raw) -> None:
    b = load_dataset("digits", seed=0)
    assert b.name == "digits" and b.input_shape == (1, 8, 8) and b.num_classes == 10
    x, y = b.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[1:] == (1, 8, 8) and b.test.tensors[0].shape[1:] == (1, 8, 8)
    assert len(b.train) + len(b.test) == 1797
    assert len(b.test) == pytest.approx(0.2 * 1797, abs=10)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # Every example is a row of sklearn's data / 16 with its own target.
    table = {(row / 16).astype(np.float32).tobytes(): t for row, t in zip(*raw)}
    for xs, ys in (b.train.tensors, b.test.tensors):
        for row, label in zip(xs.reshape(len(xs), -1).numpy(), ys.tolist()):
            assert table[row.tobytes()] == label


def test_split_is_deterministic_disjoint_and_seeded() -> None:
    a, a2, c = (load_dataset("digits", seed=s) for s in (3, 3, 4))
    for s1, s2 in ((a.train, a2.train), (a.test, a2.test)):
        for t1, t2 in zip(s1.tensors, s2.tensors):
            assert torch.equal(t1, t2)
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    # Disjoint and covering: the 1797 sklearn rows are all distinct, so map rows to indices.
    index = {(row / 16).astype(np.float32).tobytes(): i for i, row in enumerate(sk_load_digits().data)}
    train_idx = {index[r.tobytes()] for r in a.train.tensors[0].reshape(len(a.train), -1).numpy()}
    test_idx = {index[r.tobytes()] for r in a.test.tensors[0].reshape(len(a.test), -1).numpy()}
    assert not train_idx & test_idx
    assert train_idx | test_idx == set(range(1797))


def test_split_is_stratified() -> None:
    b = load_dataset("digits", seed=7)
    train_counts = torch.bincount(b.train.tensors[1], minlength=10).double()
    test_counts = torch.bincount(b.test.tensors[1], minlength=10).double()
    frac = test_counts / (train_counts + test_counts)
    assert torch.all((frac - 0.2).abs() < 0.01)
