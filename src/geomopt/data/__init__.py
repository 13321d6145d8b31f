"""Datasets as in-memory tensors, and fast reproducible loaders over them.

``load_dataset(name, ...)`` returns a ``DatasetBundle`` (train/test ``TensorDataset`` of
``x`` float32 ``(n, *input_shape)`` and ``y`` int64 ``(n,)``) for:

- ``"digits"``: scikit-learn's 8x8 digits, seeded stratified 80/20 split, ``(1, 8, 8)``;
- ``"mnist1d"``: MNIST-1D (Greydanus, 2020) generated locally and cached, ``(1, 40)``;
- ``"mnist"``: MNIST from local IDX files (raw or ``.gz``), ``(1, 28, 28)``;
- ``"fashion-mnist"``: Fashion-MNIST, same format, found in the folder of Debian's package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) unless a folder is given;
- ``"cifar10"``: CIFAR-10 from the local python pickle batches, ``(3, 32, 32)``;
- sequence tasks for recurrent nets (``geomopt.data.sequences``; ``seq_len=`` where the length
  is free): ``"adding"`` (regression), ``"copy"`` and ``"chars"`` (one label per step),
  ``"seq-digits"``, ``"seq-mnist1d"``, ``"seq-mnist"``, ``"seq-fashion-mnist"`` and their ``-perm``
  versions (pixel by pixel), ``"rows-digits"``, ``"rows-mnist"``, ``"rows-fashion-mnist"`` (row by row).
  ``DatasetBundle.task`` tells the engine which loss to use.

Nothing is downloaded. Optional seeded subsampling (``train_size``) and label noise
(``label_noise``, Zhang et al. 2017: a fraction ``p`` of training labels redrawn uniformly,
so ``p * (1 - 1/K)`` of them change in expectation) apply to the training split only.

``make_loader(dataset, batch_size, shuffle=..., seed=...)`` gathers a whole batch with one
list index; call ``loader.sampler.set_epoch(epoch)`` each epoch so that the order is a pure
function of ``(seed, epoch)`` and a resumed run sees the same batches.
"""

from .core import TASKS, DataFormatError, DatasetBundle, EpochBatchSampler, corrupt_labels, make_loader
from .registry import DATASETS, SEQUENCE_DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "SEQUENCE_DATASETS",
    "TASKS",
    "DataFormatError",
    "DatasetBundle",
    "EpochBatchSampler",
    "corrupt_labels",
    "load_dataset",
    "make_loader",
]
