"""load_dataset: names, argument checks, subsampling."""

from __future__ import annotations

import pytest
import torch

from geomopt.data import DATASETS, DatasetBundle, load_dataset


def test_dataset_names() -> None:
    assert DATASETS == ("digits", "mnist1d", "mnist", "cifar10", "fashion-mnist")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*digits, mnist1d, mnist, cifar10, fashion-mnist"):
        load_dataset("imagenet")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_data_dir(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEOMOPT_DATA", raising=False)
    with pytest.raises(ValueError, match=rf"{name}.*pass --data-dir"):
        load_dataset(name)


def test_nonexistent_data_dir(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "nope")


def test_train_size_subsample_is_seeded_subset() -> None:
    full = load_dataset("digits", seed=0)
    a = load_dataset("digits", seed=0, train_size=100)
    b = load_dataset("digits", seed=0, train_size=100)
    assert len(a.train) == 100 and len(a.test) == len(full.test)
    assert all(torch.equal(s, t) for s, t in zip(a.train.tensors, b.train.tensors))
    full_rows = {tuple(r) for r in full.train.tensors[0].reshape(len(full.train), -1).tolist()}
    assert all(tuple(r) in full_rows for r in a.train.tensors[0].reshape(100, -1).tolist())
    c = load_dataset("digits", seed=1, train_size=100)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


@pytest.mark.parametrize("bad", [0, -3, 10**6, 2.5])
def test_bad_train_size(bad) -> None:
    with pytest.raises(ValueError, match="train_size"):
        load_dataset("digits", train_size=bad)


def test_bad_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        load_dataset("digits", seed=-1)


def test_bundle_validates_layout() -> None:
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    ds = torch.utils.data.TensorDataset(x, y)
    with pytest.raises(ValueError, match="x must be float32 of shape \\(n, 1, 40\\)"):
        DatasetBundle("t", ds, ds, (1, 40), 10)
    bad_y = torch.utils.data.TensorDataset(x, torch.full((4,), 10))
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        DatasetBundle("t", bad_y, ds, (1, 8, 8), 10)


def test_val_fraction_carves_validation_from_training_only() -> None:
    full = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3, val_fraction=0.25)
    xs = lambda ds: {tuple(r.tolist()) for r in ds.tensors[0].flatten(1)}  # noqa: E731
    train, valid, test = xs(b.train), xs(b.valid), xs(b.test)
    assert not (train & valid) and train | valid == xs(full.train)  # a partition of the training set
    assert torch.equal(b.test.tensors[0], full.test.tensors[0])  # the test set is untouched
    # stratified: each class keeps its share (round(0.25 * n_class) per class)
    counts = torch.bincount(full.train.tensors[1], minlength=10)
    assert torch.equal(torch.bincount(b.valid.tensors[1], minlength=10), torch.round(0.25 * counts.double()).long())
    again = load_dataset("digits", seed=3, val_fraction=0.25)
    assert torch.equal(again.valid.tensors[0], b.valid.tensors[0])
    assert len(test) > 0


def test_val_fraction_with_train_size_and_label_noise() -> None:
    b = load_dataset("digits", seed=1, train_size=200, val_fraction=0.2, label_noise=1.0)
    clean = load_dataset("digits", seed=1, train_size=200, val_fraction=0.2)
    assert len(b.train) + len(b.valid) == 200 and abs(len(b.valid) - 40) <= 5
    assert torch.equal(b.valid.tensors[1], clean.valid.tensors[1])  # validation labels stay clean
    assert not torch.equal(b.train.tensors[1], clean.train.tensors[1])
    adding = load_dataset("adding", seed=0, train_size=50, seq_len=10, val_fraction=0.2)  # not stratified
    assert (len(adding.train), len(adding.valid)) == (40, 10)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, True])
def test_bad_val_fraction(bad) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=bad)


def test_val_fraction_errors() -> None:
    with pytest.raises(ValueError, match="empty validation"):
        load_dataset("digits", train_size=3, val_fraction=0.01)
