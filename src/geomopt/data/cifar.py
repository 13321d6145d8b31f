"""CIFAR-10 (Krizhevsky, 2009) read from the local "python version" pickle batches.

The folder (``data_dir`` or ``data_dir/cifar-10-batches-py``) holds ``data_batch_1`` ..
``data_batch_5`` (train, 10000 images each) and ``test_batch``. Each is a pickled dict
with ``b'data'``, a uint8 array of shape ``(n, 3072)`` whose rows are the 1024 red, then
1024 green, then 1024 blue values of a 32x32 image in row-major order, and ``b'labels'``,
``n`` ints in ``0..9``. Row ``r`` therefore reshapes to ``(3, 32, 32)`` channel-major.
Pixels are scaled as ``x / 255``.

Pickles can run arbitrary code, so batches are read with a restricted unpickler that
resolves only the few globals needed to rebuild numpy arrays; anything else raises
``DataFormatError`` before it is called.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .core import DataFormatError, DatasetBundle

__all__ = ["load_cifar10", "read_cifar_batch", "CIFAR10_TRAIN_FILES", "CIFAR10_TEST_FILE"]

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
_SUBDIR = "cifar-10-batches-py"
_ROW = 3 * 32 * 32


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {modules} provides {name}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array (protocols 2-5, numpy 1 or 2) may refer to."""
    import _codecs

    multiarray = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")
    reconstruct = _numpy_attr(multiarray, "_reconstruct")
    scalar = _numpy_attr(multiarray, "scalar")
    frombuffer = _numpy_attr(numeric, "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(str, 'latin1').
        ("_codecs", "encode"): _codecs.encode,
    }
    for module in multiarray:
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in numeric:
        allowed[(module, "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals needed to rebuild numpy arrays."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataFormatError(
                f"{self._path}: refusing to unpickle global {module}.{name}; a CIFAR-10 batch "
                f"holds only a dict of numpy arrays and lists (is this the right file?)"
            ) from None


def _get(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataFormatError(
        f"{path}: CIFAR-10 batch has no {key.encode()!r} entry (keys: {sorted(map(repr, batch))})"
    )


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one CIFAR-10 batch file.

    Args:
        path: The pickle file, e.g. ``.../data_batch_1``.

    Returns:
        ``(images, labels)``: uint8 ``(n, 3, 32, 32)`` and int64 ``(n,)``.

    Raises:
        DataFormatError: If the file cannot be unpickled safely or its content is not a
            CIFAR-10 batch (missing key, wrong shape or dtype, length mismatch, label
            outside 0..9); the message names the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _RestrictedUnpickler(f, path).load()
    except DataFormatError:
        raise
    except OSError:
        raise
    except Exception as e:  # pickle can fail with many exception types on a corrupt file
        raise DataFormatError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = _get(batch, "data", path)
    labels = _get(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: b'data' must be a uint8 array of shape (n, {_ROW}), got {desc}")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels
    ):
        raise DataFormatError(f"{path}: b'labels' must be a list of ints")
    if len(labels) != len(data):
        raise DataFormatError(
            f"{path}: {len(data)} images in b'data' but {len(labels)} entries in b'labels'"
        )
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) and (y.min() < 0 or y.max() > 9):
        bad = int(y[(y < 0) | (y > 9)][0])
        raise DataFormatError(f"{path}: label {bad} out of range 0..9")
    return data.reshape(-1, 3, 32, 32), y


def _find_dir(data_dir: Path) -> Path:
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    dirs = [data_dir, data_dir / _SUBDIR]
    for d in dirs:
        if all((d / n).is_file() for n in names):
            return d
    best = max(dirs, key=lambda d: sum((d / n).is_file() for n in names))
    missing = [n for n in names if not (best / n).is_file()]
    note = "" if data_dir.is_dir() else f" (the directory {data_dir} does not exist)"
    raise DataFormatError(
        f"CIFAR-10 files not found: looked for {', '.join(names)} in "
        f"{' and '.join(map(str, dirs))}{note}; missing {', '.join(missing)}. Pass --data-dir "
        f"pointing to the extracted 'CIFAR-10 python version' folder"
    )


def _to_dataset(parts: list[tuple[np.ndarray, np.ndarray]]) -> TensorDataset:
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    return TensorDataset(x, torch.from_numpy(labels))


def load_cifar10(data_dir: str | Path) -> DatasetBundle:
    """Load CIFAR-10 from ``data_dir`` or ``data_dir/cifar-10-batches-py``.

    Args:
        data_dir: Folder holding ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``.

    Returns:
        A ``DatasetBundle`` with ``x`` of shape ``(n, 3, 32, 32)`` in ``[0, 1]`` and 10 classes.

    Raises:
        DataFormatError: If a file is missing or malformed (the message names it).
    """
    folder = _find_dir(Path(data_dir))
    train = [read_cifar_batch(folder / n) for n in CIFAR10_TRAIN_FILES]
    test = [read_cifar_batch(folder / CIFAR10_TEST_FILE)]
    return DatasetBundle(
        name="cifar10",
        train=_to_dataset(train),
        test=_to_dataset(test),
        input_shape=(3, 32, 32),
        num_classes=10,
    )
