r"""Sequence tasks with long-term dependencies, for recurrent networks.

- **Adding problem** (Hochreiter & Schmidhuber 1997; protocol of Le, Jaitly & Hinton 2015 and
  Neyshabur et al. 2016): each step carries a pair (value ~ U[0, 1], marker in {0, 1}); exactly two
  markers are 1, one at a uniformly random step of the first half ``[0, T//2)`` and one in the second
  half ``[T//2, T)``; the target is the sum of the two marked values. Predicting the mean 1 gives
  MSE = Var(U + U') = 1/6 ~ 0.167, the trivial baseline.
- **Copy memory** (Hochreiter & Schmidhuber 1997; Arjovsky, Shah & Bengio 2016): tokens 0 = blank,
  1..8 = symbols, 9 = delimiter. Input: 10 random symbols, T - 1 blanks, the delimiter, 10 blanks
  (length T + 20); target: T + 10 blanks, then the 10 symbols. Memoryless baseline cross-entropy
  ``10 ln 8 / (T + 20)`` per step.
- **Sequential images** (Le et al. 2015): an image read pixel by pixel, ``(n, H*W*C, 1)``, classified
  from the last state; "permuted": the pixels in one fixed random order (the same for every seed and
  split: ``PERMUTATION_SEED``). Row by row (``rows-*``): one image row per step, ``(n, H, W*C)``,
  T = 28 for (Fashion-)MNIST.
- **Character-level language modelling** from any local UTF-8 text file: the text is split in
  order into train / valid / test (90 / 5 / 5 % by default), the vocabulary is every character of the
  file, and each split is cut into non-overlapping windows of ``T + 1`` characters: input the first T
  (token indices), targets the next character at every step. Bits per character = cross-entropy
  (nats) / ln 2.

Generators take explicit seeds (``torch.Generator``), never global RNG state. Synthetic training
sets are generated on the fly from the seed at load time (nothing is stored on disk); their test
sets come from a fixed seed (``TEST_SEED``), so every run is scored on the same examples.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .core import DataFormatError, DatasetBundle, derive_seed

__all__ = ["adding_problem", "copy_memory", "sequential_bundle", "row_bundle", "load_adding", "load_copy", "load_chars",
           "ADDING_BASELINE_MSE", "PERMUTATION_SEED", "TEST_SEED"]

ADDING_BASELINE_MSE = 1.0 / 6.0
PERMUTATION_SEED = 20151105  # fixed pixel order of the permuted tasks
TEST_SEED = 999_999  # fixed test sets of the synthetic tasks
ADDING_STREAM, COPY_STREAM = 10, 11
COPY_SYMBOLS, COPY_LENGTH = 8, 10
DEFAULT_TRAIN, DEFAULT_TEST = 10_000, 1_000


def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def adding_problem(num: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` adding-problem sequences of length ``T``.

    Returns:
        ``x`` float32 ``(num, T, 2)`` (value, marker) and ``y`` float32 ``(num, 1)``, the sum of
        the two marked values.

    Raises:
        ValueError: ``T < 2`` (two markers need two steps) or a bad ``num`` / ``seed``.
    """
    _positive("adding problem: number of sequences", num)
    _positive("adding problem: sequence length T", T, 2)
    g = _gen(derive_seed(seed, ADDING_STREAM, T))
    values = torch.rand(num, T, generator=g)
    half = T // 2
    first = torch.randint(0, half, (num,), generator=g)
    second = torch.randint(half, T, (num,), generator=g)
    markers = torch.zeros(num, T)
    rows = torch.arange(num)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return torch.stack([values, markers], dim=-1), y


def copy_memory(num: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` copy-memory sequences with delay ``T`` (length ``T + 20``).

    Returns:
        ``x`` int64 tokens ``(num, T + 20)`` in 0..9 and ``y`` int64 ``(num, T + 20)`` in 0..8.
    """
    _positive("copy memory: number of sequences", num)
    _positive("copy memory: delay T", T)
    g = _gen(derive_seed(seed, COPY_STREAM, T))
    L = T + 2 * COPY_LENGTH
    symbols = torch.randint(1, COPY_SYMBOLS + 1, (num, COPY_LENGTH), generator=g)
    x = torch.zeros(num, L, dtype=torch.int64)
    x[:, :COPY_LENGTH] = symbols
    x[:, COPY_LENGTH + T - 1] = COPY_SYMBOLS + 1
    y = torch.zeros(num, L, dtype=torch.int64)
    y[:, -COPY_LENGTH:] = symbols
    return x, y


def copy_baseline(T: int) -> float:
    """Cross-entropy per step (nats) of the best memoryless predictor of the copy task."""
    return COPY_LENGTH * math.log(COPY_SYMBOLS) / (T + 2 * COPY_LENGTH)


def load_adding(seq_len: int | None, seed: int, train_size: int | None) -> DatasetBundle:
    """The adding problem as a regression bundle: ``train_size`` (default 10,000) sequences from
    ``seed``, 1,000 test sequences from ``TEST_SEED``; ``seq_len`` T defaults to 100."""
    T = 100 if seq_len is None else seq_len
    n = DEFAULT_TRAIN if train_size is None else train_size
    train = TensorDataset(*adding_problem(n, T, seed))
    test = TensorDataset(*adding_problem(DEFAULT_TEST, T, TEST_SEED))
    return DatasetBundle("adding", train, test, (T, 2), 1, task="regression")


def load_copy(seq_len: int | None, seed: int, train_size: int | None) -> DatasetBundle:
    """The copy-memory task (delay ``seq_len``, default 100) as a per-step classification bundle."""
    T = 100 if seq_len is None else seq_len
    n = DEFAULT_TRAIN if train_size is None else train_size
    train = TensorDataset(*copy_memory(n, T, seed))
    test = TensorDataset(*copy_memory(DEFAULT_TEST, T, TEST_SEED))
    return DatasetBundle("copy", train, test, (T + 2 * COPY_LENGTH, COPY_SYMBOLS + 2), COPY_SYMBOLS + 1,
                         task="sequence")


def fixed_permutation(length: int) -> torch.Tensor:
    """The fixed random pixel order of the permuted sequential tasks."""
    return torch.randperm(length, generator=_gen(PERMUTATION_SEED))


def sequential_bundle(bundle: DatasetBundle, *, permuted: bool, name: str | None = None) -> DatasetBundle:
    """Read every image of a classification bundle pixel by pixel: ``x`` ``(n, prod(shape), 1)``.

    Channels are interleaved per pixel position in memory order (a 1-channel image is read row by
    row). ``permuted`` applies :func:`fixed_permutation` to the pixel order.
    """
    if bundle.task != "classification":
        raise ValueError(f"sequential_bundle: {bundle.name!r} is a {bundle.task} dataset, not images to read pixel by pixel")
    length = math.prod(bundle.input_shape)
    order = fixed_permutation(length) if permuted else None

    def convert(ds: TensorDataset) -> TensorDataset:
        x, y = ds.tensors
        x = x.reshape(len(x), length)
        if order is not None:
            x = x[:, order]
        return TensorDataset(x.unsqueeze(-1).contiguous(), y)

    return DatasetBundle(name or f"seq-{bundle.name}{'-perm' if permuted else ''}", convert(bundle.train),
                         convert(bundle.test), (length, 1), bundle.num_classes)


def row_bundle(bundle: DatasetBundle, *, name: str | None = None) -> DatasetBundle:
    """Read every image of a classification bundle row by row: ``x[n, c, h, w]`` -> ``x[n, h, c * W + w]``.

    Step ``h`` of the sequence of length ``T = H`` carries the ``h``-th row of every channel
    (channel-major), so ``input_shape`` is ``(H, C * W)``: ``(28, 28)`` for (Fashion-)MNIST.

    Raises:
        ValueError: Not a classification bundle of images ``(C, H, W)``.
    """
    if bundle.task != "classification" or len(bundle.input_shape) != 3:
        raise ValueError(f"row_bundle: {bundle.name!r} is not a classification dataset of (C, H, W) images "
                         f"(task {bundle.task}, input shape {bundle.input_shape})")
    c, h, w = bundle.input_shape

    def convert(ds: TensorDataset) -> TensorDataset:
        x, y = ds.tensors
        return TensorDataset(x.transpose(1, 2).reshape(len(x), h, c * w).contiguous(), y)

    return DatasetBundle(name or f"rows-{bundle.name}", convert(bundle.train), convert(bundle.test), (h, c * w),
                         bundle.num_classes)


def _find_text(data_dir: Path) -> Path:
    if data_dir.is_file():
        return data_dir
    if not data_dir.is_dir():
        raise DataFormatError(f"chars: {data_dir} does not exist; pass --data-dir pointing to a UTF-8 text file "
                              "(or to a folder holding exactly one .txt file)")
    texts = sorted(data_dir.glob("*.txt"))
    if len(texts) != 1:
        raise DataFormatError(f"chars: {data_dir} holds {len(texts)} .txt files ({[t.name for t in texts][:5]}); "
                              "pass --data-dir pointing to the text file itself")
    return texts[0]


def load_chars(data_dir: Path, seq_len: int | None, splits: tuple[float, float] = (0.9, 0.05)) -> DatasetBundle:
    """Character-level language modelling on a local UTF-8 text file.

    Args:
        data_dir: the text file, or a folder with exactly one ``.txt`` file.
        seq_len: T, characters per training window (default 100).
        splits: fractions of the text (in order) for train and valid; the rest is test.

    Returns:
        A ``"sequence"`` bundle with token input ``(n, T)``, ``input_shape = (T, vocab)``,
        ``num_classes = vocab`` and a ``valid`` split.

    Raises:
        DataFormatError: missing, unreadable or non-UTF-8 file, or a text too short for one window per split.
    """
    T = 100 if seq_len is None else seq_len
    path = _find_text(Path(data_dir).expanduser())
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"chars: {path} is not UTF-8 text ({exc})") from exc
    vocab = sorted(set(text))
    if len(vocab) < 2:
        raise DataFormatError(f"chars: {path} has {len(vocab)} distinct characters; a language model needs at least 2")
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = torch.tensor([index[ch] for ch in text], dtype=torch.int64)
    n = len(ids)
    a, b = int(n * splits[0]), int(n * (splits[0] + splits[1]))
    parts = {"train": ids[:a], "valid": ids[a:b], "test": ids[b:]}

    def windows(split: str, part: torch.Tensor) -> TensorDataset:
        count = (len(part) - 1) // T
        if count < 1:
            raise DataFormatError(f"chars: {path} has {n} characters; its {split} part ({len(part)} characters) is "
                                  f"too short for one window of T + 1 = {T + 1}; lower --seq-len or use a longer text")
        x = part[:count * T].view(count, T)
        y = part[1:count * T + 1].view(count, T)
        return TensorDataset(x.contiguous(), y.contiguous())

    return DatasetBundle("chars", windows("train", parts["train"]), windows("test", parts["test"]), (T, len(vocab)),
                         len(vocab), task="sequence", valid=windows("valid", parts["valid"]))
