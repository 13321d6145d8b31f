"""Label noise (Zhang et al., 2017): counts against binomial expectations, determinism, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.data import corrupt_labels, load_dataset


def _labels(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(k, (n,), generator=torch.Generator().manual_seed(seed))


def test_fraction_zero_is_identity() -> None:
    y = _labels(500, 10)
    out = corrupt_labels(y, 0.0, 10, seed=3)
    assert torch.equal(out, y) and out is not y


def test_input_not_modified() -> None:
    y = _labels(500, 10)
    copy = y.clone()
    corrupt_labels(y, 0.7, 10, seed=3)
    assert torch.equal(y, copy)


def test_fraction_one_is_uniform_and_independent_of_labels() -> None:
    n, k = 20000, 10
    y = torch.zeros(n, dtype=torch.int64)  # all one class: any spread comes from the noise
    out = corrupt_labels(y, 1.0, k, seed=0)
    counts = torch.bincount(out, minlength=k).double()
    chi2 = float(((counts - n / k) ** 2 / (n / k)).sum())
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("k", [2, 10])
def test_number_changed_is_about_fraction_times_one_minus_one_over_k(fraction: float, k: int) -> None:
    n = 20000
    y = _labels(n, k)
    changed = int((corrupt_labels(y, fraction, k, seed=1) != y).sum())
    m = round(fraction * n)
    mean, sd = m * (1 - 1 / k), math.sqrt(m * (1 / k) * (1 - 1 / k))  # Binomial(m, 1 - 1/k)
    assert abs(changed - mean) < 5 * sd
    assert changed <= m


def test_deterministic_and_seeded() -> None:
    y = _labels(1000, 10)
    a, b, c = (corrupt_labels(y, 0.5, 10, seed=s) for s in (4, 4, 5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_nested_in_fraction() -> None:
    y = _labels(1000, 10)
    small, large = corrupt_labels(y, 0.2, 10, seed=9), corrupt_labels(y, 0.6, 10, seed=9)
    moved = small != y
    assert torch.equal(large[moved], small[moved])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_fraction(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt_labels(_labels(10, 3), bad, 3, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_dataset("digits", label_noise=bad)


@settings(max_examples=60, deadline=None)
@given(
    fraction=st.floats(0.0, 1.0),
    n=st.integers(0, 300),
    k=st.integers(1, 12),
    seed=st.integers(0, 2**32),
)
def test_corrupt_labels_properties(fraction: float, n: int, k: int, seed: int) -> None:
    y = _labels(n, k, seed=seed % 1000)
    out = corrupt_labels(y, fraction, k, seed)
    assert out.shape == y.shape and out.dtype == torch.int64
    if n:
        assert 0 <= int(out.min()) and int(out.max()) < k
    assert int((out != y).sum()) <= round(fraction * n)
    if k == 1:
        assert torch.equal(out, y)


def test_load_dataset_noise_touches_train_labels_only() -> None:
    clean = load_dataset("digits", seed=2)
    noisy = load_dataset("digits", seed=2, label_noise=0.5)
    assert torch.equal(noisy.test.tensors[1], clean.test.tensors[1])
    assert torch.equal(noisy.test.tensors[0], clean.test.tensors[0])
    assert torch.equal(noisy.train.tensors[0], clean.train.tensors[0])
    changed = (noisy.train.tensors[1] != clean.train.tensors[1]).float().mean().item()
    assert changed == pytest.approx(0.5 * 0.9, abs=0.06)
    again = load_dataset("digits", seed=2, label_noise=0.5)
    assert torch.equal(again.train.tensors[1], noisy.train.tensors[1])
