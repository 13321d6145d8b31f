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
    VALIDATION_STREAM,
    DatasetBundle,
    carve_validation,
    corrupt_labels,
    derive_seed,
    resolve_data_dir,
    subsample,
)
from .digits import load_digits
from .mnist import load_fashion_mnist, load_mnist
from .mnist1d import load_mnist1d
from .sequences import load_adding, load_chars, load_copy, row_bundle, sequential_bundle

__all__ = ["DATASETS", "SEQUENCE_DATASETS", "load_dataset"]

# Each loader takes (data_dir, seed, cache_dir) and returns the full, clean bundle.
_Loader = Callable[[str | Path | None, int, str | Path | None], DatasetBundle]
_LOADERS: dict[str, _Loader] = {
    "digits": lambda data_dir, seed, cache_dir: load_digits(seed=seed),
    "mnist1d": lambda data_dir, seed, cache_dir: load_mnist1d(cache_dir=cache_dir),
    "mnist": lambda data_dir, seed, cache_dir: load_mnist(resolve_data_dir(data_dir, "mnist")),
    "cifar10": lambda data_dir, seed, cache_dir: load_cifar10(resolve_data_dir(data_dir, "cifar10")),
    "fashion-mnist": lambda data_dir, seed, cache_dir: load_fashion_mnist(data_dir),
}

# Sequence datasets (recurrent models): (data_dir, seed, cache_dir, seq_len, train_size) -> bundle.
# The synthetic tasks generate exactly ``train_size`` training sequences; the others have a fixed length.
_SeqLoader = Callable[[str | Path | None, int, str | Path | None, int | None, int | None], DatasetBundle]
_SEQUENCE_LOADERS: dict[str, _SeqLoader] = {
    "adding": lambda data_dir, seed, cache_dir, seq_len, n: load_adding(seq_len, seed, n),
    "copy": lambda data_dir, seed, cache_dir, seq_len, n: load_copy(seq_len, seed, n),
    "chars": lambda data_dir, seed, cache_dir, seq_len, n: load_chars(resolve_data_dir(data_dir, "chars"), seq_len),
}
_GENERATED = ("adding", "copy")
_VARIABLE_LENGTH = ("adding", "copy", "chars")
for _base in ("digits", "mnist1d", "mnist", "fashion-mnist"):
    for _perm in (False, True):
        _SEQUENCE_LOADERS[f"seq-{_base}{'-perm' if _perm else ''}"] = (
            lambda data_dir, seed, cache_dir, seq_len, n, _b=_base, _p=_perm:
            sequential_bundle(_LOADERS[_b](data_dir, seed, cache_dir), permuted=_p))
for _base in ("digits", "mnist", "fashion-mnist"):
    _SEQUENCE_LOADERS[f"rows-{_base}"] = (lambda data_dir, seed, cache_dir, seq_len, n, _b=_base:
                                          row_bundle(_LOADERS[_b](data_dir, seed, cache_dir)))

DATASETS: tuple[str, ...] = tuple(_LOADERS)
SEQUENCE_DATASETS: tuple[str, ...] = tuple(_SEQUENCE_LOADERS)


def _check_arguments(name: str, seed: int, train_size: int | None, label_noise: float, seq_len: int | None) -> None:
    """Raise ValueError naming what is wrong with :func:`load_dataset`'s arguments (before anything is loaded)."""
    if name not in _LOADERS and name not in _SEQUENCE_LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)} "
                         f"(sequences: {', '.join(SEQUENCE_DATASETS)})")
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1):
        raise ValueError(f"seq_len must be a positive integer or None, got {seq_len!r}")
    if seq_len is not None and name not in _SEQUENCE_LOADERS:
        raise ValueError(f"dataset {name!r} is not a sequence dataset and takes no seq_len; sequence datasets: "
                         f"{', '.join(_SEQUENCE_LOADERS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(label_noise, (int, float)) and math.isfinite(label_noise) and 0 <= label_noise <= 1):
        raise ValueError(f"label_noise must be a fraction in [0, 1], got {label_noise!r}")
    if train_size is not None and (
        isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1
    ):
        raise ValueError(f"train_size must be a positive integer or None, got {train_size!r}")


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    train_size: int | None = None,
    label_noise: float = 0.0,
    cache_dir: str | Path | None = None,
    seq_len: int | None = None,
    val_fraction: float = 0.0,
) -> DatasetBundle:
    """Load a dataset as in-memory train/test tensors.

    Args:
        name: One of ``DATASETS`` (``"digits"``, ``"mnist1d"``, ``"mnist"``, ``"cifar10"``,
            ``"fashion-mnist"``) or ``SEQUENCE_DATASETS`` (see :mod:`geomopt.data.sequences`).
        data_dir: Folder with the local files of ``"mnist"`` / ``"fashion-mnist"`` / ``"cifar10"``;
            default ``$GEOMOPT_DATA``, for ``"fashion-mnist"`` the folder Debian's package
            ``dataset-fashion-mnist`` installs (``resolve_data_dir``). Unused by ``"digits"`` and ``"mnist1d"``.
        seed: Non-negative seed of the digits train/test split, the subsample and the
            label noise (each uses an independent stream derived from it). The MNIST-1D
            examples themselves are fixed (package seed 42) whatever this seed is.
        train_size: Keep a seeded uniformly random subset of this many training examples.
        label_noise: Fraction in ``[0, 1]`` of the (subsampled) training labels replaced by
            uniformly random labels (``corrupt_labels``); test labels are never changed.
        cache_dir: Cache folder for generated data (MNIST-1D); default ``$GEOMOPT_CACHE``
            or ``~/.cache/geomopt``.
        seq_len: Sequence length T of ``"adding"`` / ``"copy"`` (delay) / ``"chars"`` (window),
            default 100. The pixel-by-pixel tasks (``"seq-digits"``, ``"seq-mnist1d"``,
            ``"seq-mnist"``, ``"seq-fashion-mnist"`` and their ``-perm`` versions) and the row-by-row
            ones (``"rows-digits"``, ``"rows-mnist"``, ``"rows-fashion-mnist"``) have a fixed length
            (64, 40, 784, 784; 8, 28, 28): ``seq_len`` must then be None or that length. Other datasets reject it.
            See :mod:`geomopt.data.sequences`.
        val_fraction: Hold out this fraction of the (subsampled) training set as ``bundle.valid``
            (``carve_validation``: stratified for classification, seeded), before label noise, so
            validation labels are clean; the test set is untouched. 0: no validation split (a
            dataset with its own, ``chars``, keeps it; asking it for another is an error).

    Returns:
        The ``DatasetBundle``.

    Raises:
        ValueError: Unknown name, bad ``seed`` / ``train_size`` / ``label_noise``, or no data
            directory for a dataset that needs one.
        DataFormatError: A data file is missing or malformed.
    """
    _check_arguments(name, seed, train_size, label_noise, seq_len)
    if name in _SEQUENCE_LOADERS:
        bundle = _SEQUENCE_LOADERS[name](data_dir, seed, cache_dir, seq_len, train_size)
        if name not in _VARIABLE_LENGTH and seq_len is not None and seq_len != bundle.input_shape[0]:
            raise ValueError(f"dataset {name!r} has sequences of fixed length {bundle.input_shape[0]}, "
                             f"but seq_len={seq_len} was asked for; drop --seq-len")
        if label_noise > 0 and bundle.task != "classification":
            raise ValueError(f"label_noise applies to classification datasets; {name!r} is a {bundle.task} task")
    else:
        bundle = _LOADERS[name](data_dir, seed, cache_dir)
    if val_fraction and bundle.valid is not None:
        raise ValueError(f"dataset {name!r} has its own validation split; drop val_fraction={val_fraction}")
    train, valid = bundle.train, bundle.valid
    if train_size is not None and name not in _GENERATED:  # generated tasks made exactly train_size sequences
        train = subsample(train, train_size, derive_seed(seed, SUBSAMPLE_STREAM))
    if val_fraction:
        train, valid = carve_validation(train, val_fraction, derive_seed(seed, VALIDATION_STREAM),
                                        stratify=bundle.task == "classification")
    if label_noise > 0:
        x, y = train.tensors
        y = corrupt_labels(y, float(label_noise), bundle.num_classes, derive_seed(seed, LABEL_NOISE_STREAM))
        train = TensorDataset(x, y)
    return replace(bundle, train=train, valid=valid) if train is not bundle.train else bundle
