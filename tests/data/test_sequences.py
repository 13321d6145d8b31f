"""Sequence datasets: adding problem, copy memory, sequential/permuted images, character LM.

References: the definitions themselves (markers counted, targets recomputed from the marked
values, the trivial predictor's MSE against its closed form 1/6), a permutation checked to be a
bijection, text windows checked against the raw file.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomopt.data import DataFormatError, load_dataset
from geomopt.data.sequences import (
    ADDING_BASELINE_MSE,
    COPY_LENGTH,
    adding_problem,
    copy_baseline,
    copy_memory,
    fixed_permutation,
    load_chars,
    row_bundle,
)


@settings(max_examples=20, deadline=None, database=None)
@given(num=st.integers(1, 40), T=st.integers(2, 60), seed=st.integers(0, 2**31))
def test_adding_problem_definition(num, T, seed):
    x, y = adding_problem(num, T, seed)
    assert x.shape == (num, T, 2) and y.shape == (num, 1) and x.dtype == y.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    assert (markers.sum(1) == 2).all()  # exactly two markers
    first, second = markers[:, : T // 2].sum(1), markers[:, T // 2:].sum(1)
    assert (first == 1).all() and (second == 1).all()  # one in each half
    torch.testing.assert_close(y[:, 0], (values * markers).sum(1))  # target = sum of the marked values
    x2, y2 = adding_problem(num, T, seed)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_adding_trivial_baseline_and_seeds():
    _, y = adding_problem(200_000, 10, 0)
    assert abs(float(((y - 1.0) ** 2).mean()) - ADDING_BASELINE_MSE) < 3e-3
    a, b = load_dataset("adding", seed=0, seq_len=30, train_size=50), load_dataset("adding", seed=1, seq_len=30,
                                                                                  train_size=50)
    assert not torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])  # a fixed test set
    assert len(a.train) == 50 and a.input_shape == (30, 2) and a.task == "regression" and a.num_classes == 1
    with pytest.raises(ValueError, match="T must be an integer >= 2"):
        adding_problem(3, 1, 0)


def test_copy_memory_definition():
    T = 7
    x, y = copy_memory(5, T, 3)
    assert x.shape == y.shape == (5, T + 2 * COPY_LENGTH)
    symbols = x[:, :COPY_LENGTH]
    assert ((symbols >= 1) & (symbols <= 8)).all()
    assert (x[:, COPY_LENGTH + T - 1] == 9).all()
    assert (x[:, COPY_LENGTH:COPY_LENGTH + T - 1] == 0).all() and (x[:, -COPY_LENGTH:] == 0).all()
    assert torch.equal(y[:, -COPY_LENGTH:], symbols) and (y[:, :-COPY_LENGTH] == 0).all()
    assert math.isclose(copy_baseline(T), 10 * math.log(8) / (T + 20))
    b = load_dataset("copy", seq_len=T, train_size=8)
    assert b.task == "sequence" and b.input_shape == (T + 20, 10) and b.num_classes == 9


@pytest.mark.parametrize("name, length", [("seq-digits", 64), ("seq-mnist1d", 40)])
def test_sequential_and_permuted(name, length):
    flat = load_dataset(name.removeprefix("seq-"))
    seq, perm = load_dataset(name), load_dataset(name + "-perm")
    assert seq.input_shape == perm.input_shape == (length, 1)
    x = flat.train.tensors[0].reshape(len(flat.train), -1)
    assert torch.equal(seq.train.tensors[0][..., 0], x)  # pixel by pixel, in memory order
    order = fixed_permutation(length)
    assert torch.equal(order.sort().values, torch.arange(length))  # a bijection
    assert not torch.equal(order, torch.arange(length))
    assert torch.equal(perm.train.tensors[0][..., 0], x[:, order])
    assert torch.equal(perm.test.tensors[1], flat.test.tensors[1])
    with pytest.raises(ValueError, match="fixed length"):
        load_dataset(name, seq_len=length + 1)


def test_rows_definition_by_index():
    """Row by row: step h carries row h of every channel, x_rows[n, h, c * W + w] = x[n, c, h, w]."""
    from torch.utils.data import TensorDataset
    from geomopt.data import DatasetBundle
    n, C, H, W = 3, 2, 4, 5
    x = torch.randn(n, C, H, W, generator=torch.Generator().manual_seed(0))
    ds = TensorDataset(x, torch.tensor([0, 1, 2]))
    rows = row_bundle(DatasetBundle("img", ds, ds, (C, H, W), 3))
    assert rows.name == "rows-img" and rows.input_shape == (H, C * W)
    xr = rows.train.tensors[0]
    for i, c, h, w in ((i, c, h, w) for i in range(n) for c in range(C) for h in range(H) for w in range(W)):
        assert xr[i, h, c * W + w] == x[i, c, h, w]
    digits, rows_digits = load_dataset("digits"), load_dataset("rows-digits")
    assert rows_digits.input_shape == (8, 8) and torch.equal(rows_digits.train.tensors[0], digits.train.tensors[0][:, 0])
    with pytest.raises(ValueError, match="fixed length 8"):
        load_dataset("rows-digits", seq_len=64)
    with pytest.raises(ValueError, match=r"not a classification dataset of \(C, H, W\) images"):
        row_bundle(load_dataset("mnist1d"))


def test_fashion_mnist_sequences_from_idx_files(tmp_path):
    from tests.data.test_mnist import _fake_mnist
    arrays = _fake_mnist(tmp_path, gz=True)
    images = torch.from_numpy(arrays["train_images"]).float() / 255
    seq, perm = load_dataset("seq-fashion-mnist", data_dir=tmp_path), load_dataset("seq-fashion-mnist-perm", data_dir=tmp_path)
    rows = load_dataset("rows-fashion-mnist", data_dir=tmp_path, seq_len=28)
    assert seq.input_shape == perm.input_shape == (784, 1) and rows.input_shape == (28, 28)
    assert torch.equal(seq.train.tensors[0][..., 0], images.reshape(3, 784))
    assert torch.equal(perm.train.tensors[0][..., 0], images.reshape(3, 784)[:, fixed_permutation(784)])
    assert torch.equal(rows.train.tensors[0], images) and rows.train.tensors[1].tolist() == arrays["train_labels"].tolist()
    assert load_dataset("rows-mnist", data_dir=tmp_path).input_shape == (28, 28)


def test_chars(tmp_path):
    text = "hello world, this is a tiny corpus. " * 30
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    b = load_dataset("chars", data_dir=path, seq_len=16)
    vocab = sorted(set(text))
    assert b.task == "sequence" and b.input_shape == (16, len(vocab)) and b.num_classes == len(vocab)
    x, y = b.train.tensors
    decoded = "".join(vocab[i] for i in x[0].tolist())
    assert decoded == text[:16] and "".join(vocab[i] for i in y[0].tolist()) == text[1:17]
    assert torch.equal(x[1:, 0], y[:-1, -1])  # windows are contiguous, non-overlapping
    assert b.valid is not None and len(b.valid) >= 1 and len(b.test) >= 1
    assert len(b.train) == (int(0.9 * len(text)) - 1) // 16
    assert load_chars(tmp_path, 16).input_shape == b.input_shape  # a folder with one .txt file
    with pytest.raises(DataFormatError, match="too short"):
        load_dataset("chars", data_dir=path, seq_len=500)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataFormatError, match="not UTF-8"):
        load_chars(tmp_path / "bad.txt", 4)
    with pytest.raises(DataFormatError, match="2 .txt files"):
        load_chars(tmp_path, 4)
    with pytest.raises(DataFormatError, match="does not exist"):
        load_chars(tmp_path / "missing", 4)


def test_registry_errors(monkeypatch):
    with pytest.raises(ValueError, match="not a sequence dataset"):
        load_dataset("digits", seq_len=10)
    with pytest.raises(ValueError, match="label_noise"):
        load_dataset("adding", seq_len=10, train_size=10, label_noise=0.5)
    with pytest.raises(ValueError, match="seq_len must be"):
        load_dataset("adding", seq_len=0)
    monkeypatch.delenv("GEOMOPT_DATA", raising=False)
    with pytest.raises(ValueError, match="no data directory"):
        load_dataset("chars")


def test_sequence_dataset_names():
    from geomopt.data import SEQUENCE_DATASETS
    assert set(SEQUENCE_DATASETS) == {"adding", "copy", "chars"} | {
        f"seq-{b}{s}" for b in ("digits", "mnist1d", "mnist", "fashion-mnist") for s in ("", "-perm")} | {
        f"rows-{b}" for b in ("digits", "mnist", "fashion-mnist")}
