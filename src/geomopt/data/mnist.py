"""MNIST (LeCun et al., 1998) read from local IDX files.

IDX layout (http://yann.lecun.com/exdb/mnist/): a big-endian 4-byte magic number
``0x00 0x00 <type> <ndim>`` (type ``0x08`` = unsigned byte), then ``ndim`` big-endian
uint32 dimensions, then exactly ``prod(dims)`` data bytes. Images are ``0x00000803``
(n, 28, 28), labels ``0x00000801`` (n,). Each file may be raw or gzip-compressed
(``.gz`` suffix) and is looked up in ``data_dir`` and ``data_dir/MNIST/raw``.
Pixels are scaled as ``x / 255``.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .core import DataFormatError, DatasetBundle

__all__ = ["load_mnist", "read_idx", "find_idx_file", "MNIST_FILES"]

IDX_UBYTE = 0x08
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SIZE = (28, 28)


def _search_dirs(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "MNIST" / "raw"]


def find_idx_file(data_dir: Path, name: str) -> Path:
    """Find ``name`` or ``name.gz`` in ``data_dir`` or ``data_dir/MNIST/raw``.

    Args:
        data_dir: Root data directory.
        name: Base file name, e.g. ``"train-images-idx3-ubyte"``.

    Returns:
        The first existing candidate (raw before ``.gz``, ``data_dir`` before its subfolder).

    Raises:
        DataFormatError: If none exists; the message lists the names and folders searched.
    """
    dirs = _search_dirs(data_dir)
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    where = ", ".join(str(d) for d in dirs)
    note = "" if data_dir.is_dir() else f" (the directory {data_dir} does not exist)"
    raise DataFormatError(
        f"MNIST file not found: looked for {name} or {name}.gz in {where}{note}; "
        f"pass --data-dir pointing to the folder holding the four MNIST IDX files"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataFormatError(f"{path}: not a valid gzip file ({e})") from e


def read_idx(path: str | Path, expected_ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (raw, or gzip if the name ends in ``.gz``).

    Args:
        path: The file.
        expected_ndim: Number of dimensions the file must have (3 images, 1 labels).

    Returns:
        uint8 array of shape ``dims`` as stored in the header.

    Raises:
        DataFormatError: On wrong magic, wrong type or ndim, truncated data or trailing
            bytes; the message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    expected_magic = (IDX_UBYTE << 8) | expected_ndim
    if len(data) < 4:
        raise DataFormatError(
            f"{path}: truncated IDX header: expected at least 4 bytes of magic number, got {len(data)}"
        )
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DataFormatError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {expected_ndim} dimension{'s' if expected_ndim > 1 else ''})"
        )
    header = 4 + 4 * expected_ndim
    if len(data) < header:
        raise DataFormatError(
            f"{path}: truncated IDX header: expected {header} bytes, got {len(data)}"
        )
    dims = struct.unpack(f">{expected_ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(data) - header
    if got < expected:
        raise DataFormatError(
            f"{path}: truncated IDX data: dims {dims} need {expected} bytes after the "
            f"{header}-byte header, got {got}"
        )
    if got > expected:
        raise DataFormatError(
            f"{path}: {got - expected} trailing bytes: dims {dims} need exactly {expected} "
            f"bytes after the {header}-byte header, got {got}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_split(data_dir: Path, images_name: str, labels_name: str) -> TensorDataset:
    images_path = find_idx_file(data_dir, images_name)
    labels_path = find_idx_file(data_dir, labels_name)
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != IMAGE_SIZE:
        raise DataFormatError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, MNIST images are 28x28"
        )
    if len(images) != len(labels):
        raise DataFormatError(
            f"image/label count mismatch: {images_path} has {len(images)} images but "
            f"{labels_path} has {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        raise DataFormatError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(x, y)


def load_mnist(data_dir: str | Path) -> DatasetBundle:
    """Load MNIST from the four IDX files in ``data_dir`` (or ``data_dir/MNIST/raw``).

    Args:
        data_dir: Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).

    Returns:
        A ``DatasetBundle`` with ``x`` of shape ``(n, 1, 28, 28)`` in ``[0, 1]`` and 10 classes.

    Raises:
        DataFormatError: If a file is missing or malformed (the message names it).
    """
    data_dir = Path(data_dir)
    return DatasetBundle(
        name="mnist",
        train=_load_split(data_dir, MNIST_FILES["train_images"], MNIST_FILES["train_labels"]),
        test=_load_split(data_dir, MNIST_FILES["test_images"], MNIST_FILES["test_labels"]),
        input_shape=(1, *IMAGE_SIZE),
        num_classes=10,
    )


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package


def load_fashion_mnist(data_dir: str | Path | None = None) -> DatasetBundle:
    """Load Fashion-MNIST (Xiao et al. 2017: 60,000 / 10,000 28x28 images of clothing, 10 classes) from
    its four IDX files, in MNIST's format.

    Args:
        data_dir: Folder holding the files; default: Debian's ``dataset-fashion-mnist`` package
            (``/usr/share/datasets/fashion-mnist``).

    Raises:
        DataFormatError: The folder or a file is missing (the message says how to install the package).
    """
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    if data_dir is None and not folder.is_dir():
        raise DataFormatError(f"fashion-mnist: {folder} not found; install it with "
                              "`apt-get install dataset-fashion-mnist` or pass --data-dir DIR")
    bundle = load_mnist(folder)
    return replace(bundle, name="fashion-mnist")
