"""MNIST-1D: generated once per module with the package's make_dataset, cached, RNG-neutral."""

from __future__ import annotations

import random
from pathlib import Path

import mnist1d.data
import numpy as np
import pytest
import torch

from geomopt.data import DataFormatError, load_dataset


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    """Generate MNIST-1D into a fresh cache, recording the global RNG states around it."""
    cache = tmp_path_factory.mktemp("cache")
    np.random.seed(1234)
    random.seed(1234)
    np_before, py_before = np.random.get_state(), random.getstate()
    bundle = load_dataset("mnist1d", cache_dir=cache)
    np_after, py_after = np.random.get_state(), random.getstate()
    rng_unchanged = (
        all(np.array_equal(a, b) for a, b in zip(np_before, np_after)) and py_before == py_after
    )
    return bundle, cache, rng_unchanged


def test_shapes_and_labels(generated) -> None:
    bundle, _, _ = generated
    assert bundle.name == "mnist1d" and bundle.input_shape == (1, 40) and bundle.num_classes == 10
    x, y = bundle.train.tensors
    assert x.shape == (4000, 1, 40) and x.dtype == torch.float32
    assert y.shape == (4000,) and y.dtype == torch.int64
    assert bundle.test.tensors[0].shape == (1000, 1, 40)
    assert bundle.test.tensors[1].shape == (1000,)
    all_y = torch.cat([y, bundle.test.tensors[1]])
    # make_dataset draws 500 examples per class (package default: 5000 samples, 10 templates).
    assert torch.bincount(all_y).tolist() == [500] * 10
    # make_dataset standardizes the whole set to mean 0, std 1.
    all_x = torch.cat([x, bundle.test.tensors[0]]).double()
    assert abs(float(all_x.mean())) < 1e-4 and abs(float(all_x.std()) - 1) < 1e-3


def test_global_rng_state_restored(generated) -> None:
    assert generated[2]


def test_cache_written_and_reused(generated, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, cache, _ = generated
    files = list(Path(cache).iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind

    def boom(*args, **kwargs):
        raise AssertionError("make_dataset called although the cache exists")

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    again = load_dataset("mnist1d", cache_dir=cache)
    for a, b in zip(bundle.train.tensors + bundle.test.tensors, again.train.tensors + again.test.tensors):
        assert torch.equal(a, b)


def test_seed_does_not_change_the_examples(generated) -> None:
    _, cache, _ = generated
    other = load_dataset("mnist1d", cache_dir=cache, seed=5, train_size=10)
    assert len(other.train) == 10 and len(other.test) == 1000
    assert torch.equal(other.test.tensors[0], generated[0].test.tensors[0])


def test_env_cache_dir(generated, monkeypatch: pytest.MonkeyPatch) -> None:
    _, cache, _ = generated
    monkeypatch.setenv("GEOMOPT_CACHE", str(cache))
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a, **k: pytest.fail("regenerated"))
    assert len(load_dataset("mnist1d").train) == 4000


def test_corrupt_cache_is_reported(generated, tmp_path: Path) -> None:
    _, cache, _ = generated
    name = next(Path(cache).iterdir()).name
    (tmp_path / name).write_bytes(b"not an npz")
    with pytest.raises(DataFormatError, match=rf"{name}.*delete it"):
        load_dataset("mnist1d", cache_dir=tmp_path)
