"""Load a dataset by name, then subsample and corrupt its training labels if asked.

Supported names are in ``DATASETS``. Adding a dataset = one loader function and one entry
in ``_LOADERS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from torch.utils.data import TensorDataset

from .cifar import load_cifar10
from .core import (
    LABEL_NOISE_STREAM,
    SUBSAMPLE_STREAM,
    DatasetBundle,
    corrupt_labels,
    derive_seed,
    resolve_data_dir,
    subsample,
)
from .digits import load_digits
from .mnist import load_mnist
from .mnist1d import load_mnist1d

__all__ = ["DATASETS", "load_dataset"]

# Each loader takes (data_dir, seed, cache_dir) and returns the full, clean bundle.
_Loader = Callable[[str | Path | None, int, str | Path | None], DatasetBundle]
_LOADERS: dict[str, _Loader] = {
    "digits": lambda data_dir, seed, cache_dir: load_digits(seed=seed),
    "mnist1d": lambda data_dir, seed, cache_dir: load_mnist1d(cache_dir=cache_dir),
    "mnist": lambda data_dir, seed, cache_dir: load_mnist(resolve_data_dir(data_dir, "mnist")),
    "cifar10": lambda data_dir, seed, cache_dir: load_cifar10(resolve_data_dir(data_dir, "cifar10")),
}

DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    train_size: int | None = None,
    label_noise: float = 0.0,
    cache_dir: str | Path | None = None,
) -> DatasetBundle:
    """Load a classification dataset as in-memory train/test tensors.

    Args:
        name: One of ``DATASETS``: ``"digits"``, ``"mnist1d"``, ``"mnist"``, ``"cifar10"``.
        data_dir: Folder with the local files of ``"mnist"`` / ``"cifar10"``; default
            ``$GEOMOPT_DATA``. Unused by ``"digits"`` and ``"mnist1d"``.
        seed: Non-negative seed of the digits train/test split, the subsample and the
            label noise (each uses an independent stream derived from it). The MNIST-1D
            examples themselves are fixed (package seed 42) whatever this seed is.
        train_size: Keep a seeded uniformly random subset of this many training examples.
        label_noise: Fraction in ``[0, 1]`` of the (subsampled) training labels replaced by
            uniformly random labels (``corrupt_labels``); test labels are never changed.
        cache_dir: Cache folder for generated data (MNIST-1D); default ``$GEOMOPT_CACHE``
            or ``~/.cache/geomopt``.

    Returns:
        The ``DatasetBundle``.

    Raises:
        ValueError: Unknown name, bad ``seed`` / ``train_size`` / ``label_noise``, or no data
            directory for a dataset that needs one.
        DataFormatError: A data file is missing or malformed.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(label_noise, (int, float)) and math.isfinite(label_noise) and 0 <= label_noise <= 1):
        raise ValueError(f"label_noise must be a fraction in [0, 1], got {label_noise!r}")
    if train_size is not None and (
        isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1
    ):
        raise ValueError(f"train_size must be a positive integer or None, got {train_size!r}")

    bundle = _LOADERS[name](data_dir, seed, cache_dir)
    train = bundle.train
    if train_size is not None:
        train = subsample(train, train_size, derive_seed(seed, SUBSAMPLE_STREAM))
    if label_noise > 0:
        x, y = train.tensors
        y = corrupt_labels(y, float(label_noise), bundle.num_classes, derive_seed(seed, LABEL_NOISE_STREAM))
        train = TensorDataset(x, y)
    return replace(bundle, train=train) if train is not bundle.train else bundle
