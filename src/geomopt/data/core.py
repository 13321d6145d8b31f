"""Shared pieces of the data module: the dataset bundle, seeds, splits, label noise, loaders.

Everything here is deterministic given explicit seeds: randomness goes through a
``numpy.random.Generator`` or a ``torch.Generator`` built from the seed, never through
numpy's, Python's or torch's global random state.

Label noise follows Zhang et al. (2017), "Understanding deep learning requires rethinking
generalization": a fraction ``p`` of the training labels is replaced by labels drawn
uniformly from the ``K`` classes, so about ``p * (1 - 1/K)`` of the labels actually change
and ``p = 1`` gives labels independent of the inputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

__all__ = [
    "TASKS",
    "DataFormatError",
    "DatasetBundle",
    "EpochBatchSampler",
    "carve_validation",
    "corrupt_labels",
    "derive_seed",
    "make_loader",
    "resolve_cache_dir",
    "resolve_data_dir",
    "stratified_split",
    "subsample",
]

DATA_ENV_VAR = "GEOMOPT_DATA"
CACHE_ENV_VAR = "GEOMOPT_CACHE"

# Stream tags for derive_seed: one independent random stream per use of the user's seed.
SPLIT_STREAM = 0
SUBSAMPLE_STREAM = 1
LABEL_NOISE_STREAM = 2
VALIDATION_STREAM = 3


class DataFormatError(ValueError):
    """A data file is missing, malformed, or does not hold what its format promises."""


@dataclass
class DatasetBundle:
    """A classification dataset held in memory, split into train and test.

    Attributes:
        name: Dataset name as accepted by ``load_dataset`` (e.g. ``"digits"``).
        train: Training set; tensors ``(x, y)`` with ``x`` float32 of shape
            ``(n_train, *input_shape)`` and ``y`` int64 of shape ``(n_train,)``.
        test: Test set, same layout as ``train``.
        input_shape: Per-example shape, e.g. ``(1, 8, 8)`` for digits, ``(1, 40)`` for
            MNIST-1D, ``(1, 28, 28)`` for MNIST, ``(3, 32, 32)`` for CIFAR-10.
        num_classes: Number of classes; labels lie in ``0 .. num_classes - 1``. For a
            ``"regression"`` task: the number of regression outputs.
        task: What the targets are, and so which loss the engine uses (``TASKS``):
            ``"classification"`` (``y`` int64 ``(n,)``, cross-entropy, accuracy);
            ``"regression"`` (``y`` float32 ``(n, num_classes)``, mean squared error; e.g. the
            adding problem); ``"sequence"`` (one label per step, ``y`` int64 ``(n, T)``,
            cross-entropy averaged over steps, per-step accuracy; ``input_shape`` is ``(T, d)``
            and ``x`` is float32 ``(n, T, d)`` or int64 token indices ``(n, T)`` in ``[0, d)``,
            e.g. character-level language modelling, bits per character = loss / ln 2).
        valid: Optional validation split, same layout (e.g. the language-model text's middle part).

    Raises:
        ValueError: At construction, if a split's tensors do not have this layout.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int
    task: str = "classification"
    valid: TensorDataset | None = None

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(d) for d in self.input_shape)
        if self.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: unknown task {self.task!r}; choose one of {TASKS}")
        splits = (("train", self.train), ("test", self.test)) + ((("valid", self.valid),) if self.valid is not None else ())
        for split, ds in splits:
            if self.task == "classification":
                _check_split(self.name, split, ds, self.input_shape, self.num_classes)
            else:
                _check_task_split(self.name, split, ds, self.input_shape, self.num_classes, self.task)


TASKS = ("classification", "regression", "sequence")


def _check_task_split(
    name: str, split: str, ds: TensorDataset, input_shape: tuple[int, ...], num_classes: int, task: str
) -> None:
    """Check the layout of a ``"regression"`` or ``"sequence"`` split (see ``DatasetBundle``)."""
    where = f"DatasetBundle {name!r} ({task}), {split} split"
    if not isinstance(ds, TensorDataset) or len(ds.tensors) != 2:
        raise ValueError(f"{where}: expected a TensorDataset of (x, y), got {type(ds).__name__}")
    x, y = ds.tensors
    tokens = task == "sequence" and x.dtype == torch.int64
    if tokens:
        if len(input_shape) != 2 or tuple(x.shape[1:]) != input_shape[:1]:
            raise ValueError(f"{where}: token input must be int64 of shape (n, T) with input_shape (T, vocab), "
                             f"got {tuple(x.shape)} for input_shape {input_shape}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= input_shape[1]):
            raise ValueError(f"{where}: token indices must lie in 0..{input_shape[1] - 1}")
    elif x.dtype != torch.float32 or tuple(x.shape[1:]) != input_shape:
        raise ValueError(f"{where}: x must be float32 of shape (n, {', '.join(map(str, input_shape))}), "
                         f"got {x.dtype} of shape {tuple(x.shape)}")
    if task == "regression":
        if y.dtype != torch.float32 or tuple(y.shape) != (len(x), num_classes):
            raise ValueError(f"{where}: y must be float32 of shape ({len(x)}, {num_classes}), "
                             f"got {y.dtype} of shape {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"{where}: y has NaN or infinite targets")
        return
    if y.dtype != torch.int64 or tuple(y.shape) != (len(x), input_shape[0]):
        raise ValueError(f"{where}: y must be int64 of shape ({len(x)}, {input_shape[0]}) (one label per step), "
                         f"got {y.dtype} of shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{where}: labels must lie in 0..{num_classes - 1}, got range {int(y.min())}..{int(y.max())}")


def _check_split(
    name: str, split: str, ds: TensorDataset, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Check that ``ds`` holds ``(x float32 (n, *input_shape), y int64 (n,))``."""
    where = f"DatasetBundle {name!r}, {split} split"
    if not isinstance(ds, TensorDataset) or len(ds.tensors) != 2:
        raise ValueError(f"{where}: expected a TensorDataset of (x, y), got {type(ds).__name__}")
    x, y = ds.tensors
    if x.dtype != torch.float32 or tuple(x.shape[1:]) != input_shape:
        raise ValueError(
            f"{where}: x must be float32 of shape (n, {', '.join(map(str, input_shape))}), "
            f"got {x.dtype} of shape {tuple(x.shape)}"
        )
    if y.dtype != torch.int64 or y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"{where}: y must be int64 of shape ({len(x)},), got {y.dtype} of shape {tuple(y.shape)}"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{where}: labels must lie in 0..{num_classes - 1}, "
            f"got range {int(y.min())}..{int(y.max())}"
        )


def derive_seed(seed: int, *stream: int) -> int:
    """Derive an independent 63-bit seed for one use (``stream``) of a user seed.

    Uses ``numpy.random.SeedSequence`` so that, e.g., the train/test split and the label
    noise drawn from the same user seed are statistically independent, and (seed, epoch)
    pairs never collide the way ``seed + epoch`` does.

    Args:
        seed: Non-negative user seed.
        *stream: Non-negative integers naming the use (e.g. a stream tag, an epoch).

    Returns:
        A seed in ``[0, 2**63)`` suitable for ``torch.Generator.manual_seed`` and
        ``numpy.random.default_rng``.

    Raises:
        ValueError: If ``seed`` or a stream entry is negative.
    """
    entropy = [int(seed), *(int(s) for s in stream)]
    if any(e < 0 for e in entropy):
        raise ValueError(f"seeds must be non-negative integers, got {entropy}")
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def _torch_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def resolve_data_dir(
    data_dir: str | Path | None, dataset: str, *, system_dir: Path | None = None, package: str | None = None
) -> Path:
    """Return the directory holding a dataset's local files.

    Order: ``data_dir`` if given; else, for a dataset that a system package installs (``system_dir``,
    e.g. Debian's ``dataset-fashion-mnist``), that folder; else ``$GEOMOPT_DATA``. A dataset with a
    ``system_dir`` never reads ``$GEOMOPT_DATA``: that variable names the folder of MNIST's files, which
    have the same names as Fashion-MNIST's.

    Args:
        data_dir: Explicit directory, or ``None``.
        dataset: Dataset name, used in the error message.
        system_dir: The folder a system package installs the files in, or ``None``.
        package: That package's name (named in the error message when ``system_dir`` is absent).

    Returns:
        The directory as a ``Path`` (its contents are checked by the reader).

    Raises:
        ValueError: If no directory is given and ``system_dir`` does not exist (the one-line
            message says how to install the package), or, without ``system_dir``, ``$GEOMOPT_DATA``
            is unset.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if system_dir is not None:
        if not system_dir.is_dir():
            raise ValueError(
                f"dataset {dataset!r} is read from local files and {system_dir} does not exist: install them "
                f"with `apt-get install {package}` (Debian/Ubuntu) or pass --data-dir DIR (data_dir=... in Python)"
            )
        return system_dir
    env = os.environ.get(DATA_ENV_VAR)
    if not env:
        raise ValueError(
            f"dataset {dataset!r} is read from local files and no data directory was "
            f"given: pass --data-dir DIR (data_dir=... in Python) or set ${DATA_ENV_VAR}"
        )
    return Path(env).expanduser()


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """Return the cache directory: ``cache_dir``, else ``$GEOMOPT_CACHE``, else ``~/.cache/geomopt``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "geomopt"
    return Path(cache_dir).expanduser()


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and test, keeping each class's proportion.

    Within each class the indices are permuted by a ``numpy.random.Generator`` seeded
    with ``seed`` and the first ``round(test_fraction * n_class)`` go to the test set.

    Args:
        y: Integer labels, shape ``(n,)``.
        test_fraction: Fraction of each class put in the test set, in ``(0, 1)``.
        seed: Non-negative seed.

    Returns:
        ``(train_idx, test_idx)``, sorted int64 index arrays partitioning ``range(n)``.

    Raises:
        ValueError: If ``test_fraction`` is not in ``(0, 1)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    test_parts = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test_parts.append(idx[: int(round(test_fraction * len(idx)))])
    test_idx = np.sort(np.concatenate(test_parts)).astype(np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask).astype(np.int64), test_idx


def carve_validation(dataset: TensorDataset, fraction: float, seed: int, *,
                     stratify: bool) -> tuple[TensorDataset, TensorDataset]:
    """Hold out a seeded ``fraction`` of a training set as a validation split (for choosing hyperparameters).

    With ``stratify`` (1-D class labels) each class gives ``round(fraction * n_class)`` examples
    (``stratified_split``); otherwise ``round(fraction * n)`` examples chosen uniformly at random.

    Args:
        dataset: The training set ``(x, y)``.
        fraction: Fraction held out, in ``(0, 1)``.
        seed: Non-negative seed.
        stratify: Keep each class's proportion.

    Returns:
        ``(train, valid)``, disjoint, together the whole ``dataset`` (order kept).

    Raises:
        ValueError: ``fraction`` outside ``(0, 1)``, or a split that would be empty.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be a fraction in (0, 1), got {fraction!r}")
    n = len(dataset)
    if stratify:
        train_idx, val_idx = (torch.from_numpy(i) for i in stratified_split(dataset.tensors[1].numpy(), fraction, seed))
    else:
        perm = torch.randperm(n, generator=_torch_generator(seed))
        k = int(round(fraction * n))
        val_idx, train_idx = perm[:k].sort().values, perm[k:].sort().values
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"val_fraction={fraction} of {n} training examples leaves an empty "
                         f"{'validation' if len(val_idx) == 0 else 'training'} split; change val_fraction or train_size")
    return (TensorDataset(*(t[train_idx] for t in dataset.tensors)),
            TensorDataset(*(t[val_idx] for t in dataset.tensors)))


def subsample(dataset: TensorDataset, size: int, seed: int) -> TensorDataset:
    """Keep a uniformly random subset of ``size`` examples (order of the original kept).

    Args:
        dataset: The dataset to subsample.
        size: Number of examples to keep, ``1 <= size <= len(dataset)``.
        seed: Non-negative seed for the ``torch.Generator`` choosing the subset.

    Returns:
        A new ``TensorDataset`` with ``size`` examples.

    Raises:
        ValueError: If ``size`` is out of range.
    """
    n = len(dataset)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= n:
        raise ValueError(f"train_size must be an integer in 1..{n} (the training set size), got {size!r}")
    idx = torch.randperm(n, generator=_torch_generator(seed))[:size].sort().values
    return TensorDataset(*(t[idx] for t in dataset.tensors))


def corrupt_labels(y: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """Replace a fraction of labels by uniformly random labels (Zhang et al., 2017).

    Exactly ``round(fraction * n)`` positions, chosen uniformly at random, receive a label
    drawn uniformly from ``0 .. num_classes - 1`` (which may equal the old one, so about
    ``fraction * (1 - 1/num_classes) * n`` labels change). For a fixed seed the corrupted
    positions and their new labels are nested in ``fraction``: a larger fraction corrupts
    a superset of positions with the same replacement labels.

    Args:
        y: Integer labels, shape ``(n,)``. Not modified.
        fraction: Fraction of labels to resample, in ``[0, 1]``.
        num_classes: Number of classes ``K >= 1``.
        seed: Non-negative seed for the ``torch.Generator``.

    Returns:
        New int64 tensor of shape ``(n,)``.

    Raises:
        ValueError: If ``fraction`` is outside ``[0, 1]``, ``y`` is not 1-D integer, or
            ``num_classes < 1``.
    """
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
        raise ValueError(f"label_noise fraction must be in [0, 1], got {fraction!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {y.dtype} of shape {tuple(y.shape)}")
    n = len(y)
    g = _torch_generator(seed)
    order = torch.randperm(n, generator=g)
    new_labels = torch.randint(num_classes, (n,), generator=g, dtype=torch.int64)
    out = y.to(torch.int64).clone()
    chosen = order[: int(round(fraction * n))]
    out[chosen] = new_labels[chosen]
    return out


class EpochBatchSampler(Sampler[list[int]]):
    """Yields whole batches of indices; the order of epoch ``e`` depends only on (seed, e).

    Meant for ``DataLoader(dataset, sampler=..., batch_size=None)`` over an in-memory
    ``TensorDataset``: each batch is one tensor indexing ``x[idx], y[idx]``, with no
    per-example fetch or collate. Like ``DistributedSampler``, call ``set_epoch(e)`` at the
    start of each epoch; the permutation is drawn from a ``torch.Generator`` seeded with
    ``derive_seed(seed, e)``, so a resumed run sees exactly the same batches.

    Args:
        num_examples: Dataset size ``n >= 1``.
        batch_size: Examples per batch, ``>= 1``.
        shuffle: Permute the indices each epoch; if ``False``, batches are ``0..n-1`` in order.
        seed: Non-negative seed.
        drop_last: Drop the final batch if it has fewer than ``batch_size`` examples.

    Raises:
        ValueError: On a non-positive size, a negative seed, or ``drop_last`` with
            ``batch_size > num_examples`` (which would give no batches at all).
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_examples < 1:
            raise ValueError(f"EpochBatchSampler: num_examples must be >= 1, got {num_examples}")
        if batch_size < 1:
            raise ValueError(f"EpochBatchSampler: batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"EpochBatchSampler: seed must be non-negative, got {seed}")
        if drop_last and batch_size > num_examples:
            raise ValueError(
                f"EpochBatchSampler: drop_last=True with batch_size={batch_size} > "
                f"num_examples={num_examples} gives no batches; lower batch_size or set drop_last=False"
            )
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration yields."""
        if epoch < 0:
            raise ValueError(f"EpochBatchSampler: epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def order(self) -> torch.Tensor:
        """The index order of the current epoch, shape ``(num_examples,)``."""
        if not self.shuffle:
            return torch.arange(self.num_examples)
        g = _torch_generator(derive_seed(self.seed, self.epoch))
        return torch.randperm(self.num_examples, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order().tolist()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)


def make_loader(
    dataset: TensorDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """Batched loader over an in-memory ``TensorDataset``.

    Each batch is fetched with one list index (``dataset[[i, j, ...]]``), so a batch costs
    one tensor gather instead of ``batch_size`` item fetches and a collate. Batches are
    lists ``[x, y]`` with ``x`` of shape ``(batch, *input_shape)`` and ``y`` of shape
    ``(batch,)``. Call ``loader.sampler.set_epoch(epoch)`` before each epoch to get a
    reproducible per-epoch order (see ``EpochBatchSampler``).

    Args:
        dataset: The dataset (e.g. ``bundle.train``).
        batch_size: Examples per batch.
        shuffle: Reshuffle every epoch (as selected by ``set_epoch``).
        seed: Non-negative seed of the shuffle.
        drop_last: Drop the last incomplete batch.

    Returns:
        A ``DataLoader`` whose ``sampler`` is an ``EpochBatchSampler``.

    Raises:
        TypeError: If ``dataset`` is not a ``TensorDataset``.
        ValueError: On bad sizes or seed (see ``EpochBatchSampler``).
    """
    if not isinstance(dataset, TensorDataset):
        raise TypeError(
            f"make_loader needs an in-memory torch.utils.data.TensorDataset (indexable by a list "
            f"of indices), got {type(dataset).__name__}; wrap tensors as TensorDataset(x, y)"
        )
    sampler = EpochBatchSampler(
        len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    return DataLoader(dataset, sampler=sampler, batch_size=None)
