"""MNIST and Fashion-MNIST IDX readers, checked against IDX files written by hand with struct/gzip."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from geomopt.data import DataFormatError, load_dataset
from geomopt.data import mnist as mnist_module
from geomopt.data.mnist import FASHION_MNIST_DIR, MNIST_FILES, load_mnist, read_idx


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding written independently from the reader: magic, dims, raw bytes."""
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def _fake_mnist(folder: Path, gz: bool, n_train: int = 3, n_test: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        _write(folder / MNIST_FILES[key], _idx_bytes(arr), gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_matches_written_pixels_and_labels(tmp_path: Path, gz: bool) -> None:
    arrays = _fake_mnist(tmp_path, gz)
    bundle = load_dataset("mnist", data_dir=tmp_path)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    x, y = bundle.train.tensors
    assert x.dtype == torch.float32 and x.shape == (3, 1, 28, 28)
    assert y.dtype == torch.int64
    expected = torch.from_numpy(arrays["train_images"].astype(np.float32)) / 255
    torch.testing.assert_close(x[:, 0], expected, rtol=0, atol=1e-7)
    assert y.tolist() == arrays["train_labels"].tolist()
    x_test, y_test = bundle.test.tensors
    assert x_test.shape == (2, 1, 28, 28)
    assert y_test.tolist() == arrays["test_labels"].tolist()
    # A known pixel, by hand.
    assert x[1, 0, 5, 7].item() == pytest.approx(arrays["train_images"][1, 5, 7] / 255)


def test_torchvision_layout_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _fake_mnist(tmp_path / "MNIST" / "raw", gz=True)
    monkeypatch.setenv("GEOMOPT_DATA", str(tmp_path))
    bundle = load_dataset("mnist")
    assert bundle.train.tensors[1].tolist() == arrays["train_labels"].tolist()


def test_missing_file_names_file_and_folders(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, gz=False)
    (tmp_path / MNIST_FILES["test_labels"]).unlink()
    with pytest.raises(DataFormatError, match=r"t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte\.gz") as e:
        load_mnist(tmp_path)
    assert str(tmp_path) in str(e.value) and "MNIST/raw" in str(e.value)


def test_missing_data_dir_tells_to_pass_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEOMOPT_DATA", raising=False)
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("mnist")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(tmp_path: Path, gz: bool) -> None:
    payload = _idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5]
    path = _write(tmp_path / "imgs", payload, gz)
    with pytest.raises(DataFormatError, match=rf"{path.name}.*truncated.*need {3 * 784} bytes.*got {3 * 784 - 5}"):
        read_idx(path, 3)


def test_truncated_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "imgs", struct.pack(">II", 0x803, 3), gz=False)
    with pytest.raises(DataFormatError, match="imgs: truncated IDX header"):
        read_idx(path, 3)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels", _idx_bytes(np.arange(3, dtype=np.uint8)) + b"\x00\x01", gz=False)
    with pytest.raises(DataFormatError, match="labels: 2 trailing bytes"):
        read_idx(path, 1)


@pytest.mark.parametrize("magic", [0x00000801, 0x00000D03, 0x08030000, 0x12345678])
def test_wrong_magic(tmp_path: Path, magic: int) -> None:
    path = _write(tmp_path / "imgs", _idx_bytes(np.zeros((1, 28, 28), np.uint8), magic=magic), gz=False)
    with pytest.raises(DataFormatError, match=rf"imgs: wrong IDX magic number 0x{magic:08x}, expected 0x00000803"):
        read_idx(path, 3)


def test_corrupt_gzip(tmp_path: Path) -> None:
    (tmp_path / "imgs.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(DataFormatError, match=r"imgs\.gz: not a valid gzip"):
        read_idx(tmp_path / "imgs.gz", 3)


def test_count_mismatch_names_both_files(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, gz=False)
    _write(tmp_path / MNIST_FILES["train_labels"], _idx_bytes(np.zeros(4, np.uint8)), gz=False)
    with pytest.raises(DataFormatError, match=r"count mismatch.*train-images-idx3-ubyte has 3 images.*train-labels-idx1-ubyte has 4 labels"):
        load_mnist(tmp_path)


def test_wrong_image_size_and_label_range(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, gz=False)
    _write(tmp_path / MNIST_FILES["test_images"], _idx_bytes(np.zeros((2, 32, 32), np.uint8)), gz=False)
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte: images are 32x32"):
        load_mnist(tmp_path)
    _fake_mnist(tmp_path, gz=False)
    _write(tmp_path / MNIST_FILES["train_labels"], _idx_bytes(np.array([1, 10, 2], np.uint8)), gz=False)
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte: label 10 out of range"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_data_dir_and_torchvision_layout(tmp_path: Path, gz: bool) -> None:
    arrays = _fake_mnist(tmp_path / "flat", gz)
    bundle = load_dataset("fashion-mnist", data_dir=tmp_path / "flat")
    assert bundle.name == "fashion-mnist" and bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    x, y = bundle.train.tensors
    torch.testing.assert_close(x[:, 0], torch.from_numpy(arrays["train_images"].astype(np.float64) / 255).float(),
                               rtol=0, atol=0)  # x / 255 rounded once to float32
    assert y.tolist() == arrays["train_labels"].tolist()
    assert bundle.test.tensors[1].tolist() == arrays["test_labels"].tolist()
    tv = _fake_mnist(tmp_path / "root" / "FashionMNIST" / "raw", gz, seed=1)
    assert load_dataset("fashion-mnist", data_dir=tmp_path / "root").train.tensors[1].tolist() == tv["train_labels"].tolist()


def test_fashion_mnist_finds_the_package_folder_not_geomopt_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fashion = _fake_mnist(tmp_path / "system", gz=True, seed=1)
    _fake_mnist(tmp_path / "mnist", gz=True, seed=2)  # $GEOMOPT_DATA holds MNIST's files, of the same names
    monkeypatch.setattr(mnist_module, "FASHION_MNIST_DIR", tmp_path / "system")
    monkeypatch.setenv("GEOMOPT_DATA", str(tmp_path / "mnist"))
    bundle = load_dataset("fashion-mnist")
    assert bundle.train.tensors[1].tolist() == fashion["train_labels"].tolist()


def test_fashion_mnist_absent_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from geomopt.cli import main
    monkeypatch.setattr(mnist_module, "FASHION_MNIST_DIR", tmp_path / "none")
    monkeypatch.setenv("GEOMOPT_DATA", str(tmp_path))
    with pytest.raises(ValueError, match=r"apt-get install dataset-fashion-mnist.*--data-dir"):
        load_dataset("seq-fashion-mnist")
    assert main(["train", "--data", "fashion-mnist", "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in err and str(tmp_path / "none") in err
    with pytest.raises(DataFormatError, match=r"Fashion-MNIST file not found.*FashionMNIST/raw"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"{FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_package() -> None:
    bundle = load_dataset("fashion-mnist")
    (x, y), (x_test, y_test) = bundle.train.tensors, bundle.test.tensors
    assert x.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))  # balanced classes 0..9
    assert torch.equal(torch.bincount(y_test), torch.full((10,), 1000))
