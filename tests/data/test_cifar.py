"""CIFAR-10 batch reader, checked against fake batches pickled by hand."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from geomopt.data import DataFormatError, load_dataset
from geomopt.data.cifar import read_cifar_batch

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _batch(seed: int, n: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


def _write_all(folder: Path, protocol: int = 2) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate(NAMES):
        batches[name] = _batch(i)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=protocol))
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_decoding_layout_and_labels(tmp_path: Path, protocol: int) -> None:
    batches = _write_all(tmp_path, protocol)
    bundle = load_dataset("cifar10", data_dir=tmp_path)
    assert bundle.input_shape == (3, 32, 32) and bundle.num_classes == 10
    x, y = bundle.train.tensors
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == sum((batches[n][b"labels"] for n in NAMES[:5]), [])
    # Known pixel: image 1 of data_batch_2 is train index 5; channel c, row r, col k is
    # byte c*1024 + r*32 + k of its row (CIFAR-10 documentation).
    c, r, k = 2, 7, 30
    raw = batches["data_batch_2"][b"data"][1, c * 1024 + r * 32 + k]
    assert x[5, c, r, k].item() == pytest.approx(raw / 255)
    assert bundle.test.tensors[1].tolist() == batches["test_batch"][b"labels"]
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_subfolder_is_accepted(tmp_path: Path) -> None:
    _write_all(tmp_path / "cifar-10-batches-py")
    assert len(load_dataset("cifar10", data_dir=tmp_path).test) == 4


def test_missing_file(tmp_path: Path) -> None:
    _write_all(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataFormatError, match="missing data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)


def _bad(tmp_path: Path, mutate) -> Path:
    batch = _batch(0)
    mutate(batch)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop(b"data"), r"no b'data' entry"),
        (lambda b: b.pop(b"labels"), r"no b'labels' entry"),
        (lambda b: b.__setitem__(b"data", np.zeros((4, 3000), np.uint8)), r"shape \(n, 3072\).*\(4, 3000\)"),
        (lambda b: b.__setitem__(b"data", np.zeros((4, 3072), np.float32)), r"uint8.*float32"),
        (lambda b: b.__setitem__(b"labels", [0, 1, 2]), r"4 images.*3 entries"),
        (lambda b: b.__setitem__(b"labels", [0, 1, 10, 2]), r"label 10 out of range"),
        (lambda b: b.__setitem__(b"labels", [0, 1, -1, 2]), r"label -1 out of range"),
        (lambda b: b.__setitem__(b"labels", ["a", 1, 2, 3]), r"list of ints"),
    ],
)
def test_malformed_batch(tmp_path: Path, mutate, message: str) -> None:
    path = _bad(tmp_path, mutate)
    with pytest.raises(DataFormatError, match=rf"data_batch_1: .*{message}"):
        read_cifar_batch(path)


def test_not_a_dict_and_garbage(tmp_path: Path) -> None:
    (tmp_path / "test_batch").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataFormatError, match="test_batch: expected a pickled dict"):
        read_cifar_batch(tmp_path / "test_batch")
    (tmp_path / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataFormatError, match="test_batch: not a readable pickle"):
        read_cifar_batch(tmp_path / "test_batch")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_disallowed_global_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    batch = _batch(0)
    batch[b"extra"] = _Evil(marker)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataFormatError, match=r"data_batch_1: refusing to unpickle global (posix|nt|os)\.system"):
        read_cifar_batch(path)
    assert not marker.exists()
