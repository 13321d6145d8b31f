"""MNIST (LeCun et al., 1998) and Fashion-MNIST (Xiao et al., 2017) read from local IDX files.

Fashion-MNIST (Zalando's 28x28 grey images of 10 kinds of clothing) uses MNIST's four file names
and format; Debian's package ``dataset-fashion-mnist`` installs them gzipped in
``FASHION_MNIST_DIR``, where ``load_dataset("fashion-mnist")`` finds them by itself.

IDX layout (http://yann.lecun.com/exdb/mnist/): a big-endian 4-byte magic number
``0x00 0x00 <type> <ndim>`` (type ``0x08`` = unsigned byte), then ``ndim`` big-endian
uint32 dimensions, then exactly ``prod(dims)`` data bytes. Images are ``0x00000803``
(n, 28, 28), labels ``0x00000801`` (n,). Each file may be raw or gzip-compressed
(``.gz`` suffix) and is looked up in ``data_dir`` and in torchvision's layout
``data_dir/MNIST/raw`` (``data_dir/FashionMNIST/raw``). Pixels are scaled as ``x / 255``.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .core import DataFormatError, DatasetBundle, resolve_data_dir

__all__ = ["load_mnist", "load_fashion_mnist", "read_idx", "find_idx_file", "MNIST_FILES", "FASHION_MNIST_DIR",
           "FASHION_MNIST_PACKAGE"]

IDX_UBYTE = 0x08
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SIZE = (28, 28)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where dataset-fashion-mnist installs the files
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
# dataset name -> (name in messages, torchvision's subfolder)
_LAYOUT = {"mnist": ("MNIST", "MNIST"), "fashion-mnist": ("Fashion-MNIST", "FashionMNIST")}


def _search_dirs(data_dir: Path, dataset: str) -> list[Path]:
    return [data_dir, data_dir / _LAYOUT[dataset][1] / "raw"]


def find_idx_file(data_dir: Path, name: str, dataset: str = "mnist") -> Path:
    """Find ``name`` or ``name.gz`` in ``data_dir`` or torchvision's ``data_dir/MNIST/raw``.

    Args:
        data_dir: Root data directory.
        name: Base file name, e.g. ``"train-images-idx3-ubyte"``.
        dataset: ``"mnist"`` or ``"fashion-mnist"`` (its subfolder is ``FashionMNIST/raw``).

    Returns:
        The first existing candidate (raw before ``.gz``, ``data_dir`` before its subfolder).

    Raises:
        DataFormatError: If none exists; the message lists the names and folders searched.
    """
    dirs = _search_dirs(data_dir, dataset)
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    where = ", ".join(str(d) for d in dirs)
    note = "" if data_dir.is_dir() else f" (the directory {data_dir} does not exist)"
    label = _LAYOUT[dataset][0]
    raise DataFormatError(
        f"{label} file not found: looked for {name} or {name}.gz in {where}{note}; "
        f"pass --data-dir pointing to the folder holding the four {label} IDX files"
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


def _load_split(data_dir: Path, images_name: str, labels_name: str, dataset: str) -> TensorDataset:
    images_path = find_idx_file(data_dir, images_name, dataset)
    labels_path = find_idx_file(data_dir, labels_name, dataset)
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != IMAGE_SIZE:
        raise DataFormatError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, {_LAYOUT[dataset][0]} images are 28x28"
        )
    if len(images) != len(labels):
        raise DataFormatError(
            f"image/label count mismatch: {images_path} has {len(images)} images but "
            f"{labels_path} has {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        raise DataFormatError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    # x / 255 in float32, as torch ops on one writable copy of the bytes (twice as fast as numpy's astype and divide)
    x = torch.from_numpy(images.copy()).to(torch.float32).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(x, y)


def _load_idx_dataset(data_dir: str | Path, dataset: str) -> DatasetBundle:
    data_dir = Path(data_dir)
    return DatasetBundle(
        name=dataset,
        train=_load_split(data_dir, MNIST_FILES["train_images"], MNIST_FILES["train_labels"], dataset),
        test=_load_split(data_dir, MNIST_FILES["test_images"], MNIST_FILES["test_labels"], dataset),
        input_shape=(1, *IMAGE_SIZE),
        num_classes=10,
    )


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
    return _load_idx_dataset(data_dir, "mnist")


def load_fashion_mnist(data_dir: str | Path | None = None) -> DatasetBundle:
    """Load Fashion-MNIST (60,000 / 10,000 images) from its four IDX files in ``data_dir``.

    Same file names, format and checks as :func:`load_mnist`; the torchvision subfolder is
    ``data_dir/FashionMNIST/raw``. Without ``data_dir``: ``FASHION_MNIST_DIR``, the folder of Debian's
    ``dataset-fashion-mnist`` (never ``$GEOMOPT_DATA``, MNIST's folder: see ``resolve_data_dir``).

    Returns:
        A ``DatasetBundle`` named ``"fashion-mnist"``, ``x`` of shape ``(n, 1, 28, 28)`` in ``[0, 1]``,
        10 classes (0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt, 7 sneaker,
        8 bag, 9 ankle boot).

    Raises:
        ValueError: No ``data_dir`` and no package folder (the one-line message says how to install it).
        DataFormatError: If a file is missing or malformed (the message names it).
    """
    folder = resolve_data_dir(data_dir, "fashion-mnist", system_dir=FASHION_MNIST_DIR, package=FASHION_MNIST_PACKAGE)
    return _load_idx_dataset(folder, "fashion-mnist")
