"""The scikit-learn handwritten digits (UCI optical recognition of handwritten digits).

1797 grey-scale 8x8 images with values 0..16, ten classes. The data ship inside
scikit-learn (``sklearn.datasets.load_digits``), so nothing is read from disk or network.
Pixels are scaled as ``x / 16`` to ``[0, 1]``; the train/test split is stratified, 20% test,
and a pure function of the seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .core import SPLIT_STREAM, DatasetBundle, derive_seed, stratified_split

__all__ = ["load_digits"]

TEST_FRACTION = 0.2


def load_digits(*, seed: int = 0) -> DatasetBundle:
    """Load the digits with a seeded stratified 80/20 train/test split.

    Args:
        seed: Non-negative seed of the split.

    Returns:
        A ``DatasetBundle`` with ``x`` of shape ``(n, 1, 8, 8)`` in ``[0, 1]`` and 10 classes;
        train and test sizes add up to 1797.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    raw = _sk_load_digits()
    x = (np.asarray(raw.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(raw.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(y, TEST_FRACTION, derive_seed(seed, SPLIT_STREAM))
    return DatasetBundle(
        name="digits",
        train=TensorDataset(torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])),
        test=TensorDataset(torch.from_numpy(x[test_idx]), torch.from_numpy(y[test_idx])),
        input_shape=(1, 8, 8),
        num_classes=10,
    )
