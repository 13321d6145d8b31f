"""MNIST-1D (Greydanus, 2020), generated locally and cached.

"Scaling down deep learning": ten 1-D digit templates of length 12 are padded, scaled,
translated, given correlated and i.i.d. noise and sheared, then resampled to length 40.
We call the ``mnist1d`` package's own ``make_dataset`` with its default arguments
(``get_dataset_args()``, seed 42), so every user gets the same 4000/1000 train/test
examples; the ``seed`` of ``load_dataset`` only drives subsampling and label noise.
``get_dataset`` is never called (it downloads). ``make_dataset`` reseeds numpy's and
Python's global random generators; their states are saved and restored around it.

The arrays are cached as ``mnist1d-<hash of the arguments and package version>.npz`` in the cache directory,
written to a temporary file and moved into place with ``os.replace``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .core import DataFormatError, DatasetBundle, resolve_cache_dir

__all__ = ["load_mnist1d", "generate_mnist1d"]

_CACHE_FORMAT = 1
_KEYS = ("x", "y", "x_test", "y_test")


def _dataset_args() -> Any:
    """The package's default arguments (seed 42, 5000 samples, 80% train)."""
    import mnist1d.data

    return mnist1d.data.get_dataset_args()


def _args_key(args: Any) -> str:
    """Hash of the generation arguments and the ``mnist1d`` version, naming the cache file."""
    try:
        version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    items = {k: v for k, v in sorted(vars(args).items()) if k != "url"}
    blob = json.dumps(
        {"format": _CACHE_FORMAT, "mnist1d": version, "args": items}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def generate_mnist1d() -> dict[str, np.ndarray]:
    """Generate MNIST-1D with the package defaults, leaving global RNG states unchanged.

    Returns:
        Dict with ``x`` float32 ``(4000, 1, 40)``, ``y`` int64 ``(4000,)``, ``x_test``
        float32 ``(1000, 1, 40)``, ``y_test`` int64 ``(1000,)``.
    """
    import mnist1d.data

    args = _dataset_args()
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        raw = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": np.asarray(raw["x"], dtype=np.float32)[:, None, :],
        "y": np.asarray(raw["y"], dtype=np.int64),
        "x_test": np.asarray(raw["x_test"], dtype=np.float32)[:, None, :],
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
    }


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    hint = "delete it to regenerate"
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _KEYS if k not in f.files]
            if missing:
                raise DataFormatError(f"MNIST-1D cache {path}: missing arrays {missing}; {hint}")
            arrays = {k: f[k] for k in _KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"MNIST-1D cache {path} is unreadable ({e}); {hint}") from e
    for split in ("", "_test"):
        x, y = arrays["x" + split], arrays["y" + split]
        if (
            x.dtype != np.float32
            or x.ndim != 3
            or x.shape[1:] != (1, 40)
            or y.dtype != np.int64
            or y.shape != (len(x),)
        ):
            raise DataFormatError(
                f"MNIST-1D cache {path}: x{split} {x.dtype} {x.shape} / y{split} {y.dtype} "
                f"{y.shape}, expected float32 (n, 1, 40) / int64 (n,); {hint}"
            )
    return arrays


def load_mnist1d(*, cache_dir: str | Path | None = None) -> DatasetBundle:
    """Load MNIST-1D from the cache, generating and caching it on first use.

    Args:
        cache_dir: Cache directory; default ``$GEOMOPT_CACHE`` or ``~/.cache/geomopt``.

    Returns:
        A ``DatasetBundle`` with ``x`` of shape ``(n, 1, 40)``, 4000 train and 1000 test
        examples (the package's own split), 10 classes.

    Raises:
        DataFormatError: If an existing cache file is unreadable or has the wrong layout.
    """
    path = resolve_cache_dir(cache_dir) / f"mnist1d-{_args_key(_dataset_args())}.npz"
    if path.exists():
        arrays = _read_cache(path)
    else:
        arrays = generate_mnist1d()
        _write_atomic(path, arrays)
    return DatasetBundle(
        name="mnist1d",
        train=TensorDataset(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])),
        test=TensorDataset(torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])),
        input_shape=(1, 40),
        num_classes=10,
    )
