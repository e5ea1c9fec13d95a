from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from mlscale import data
from mlscale.data import Splits, prepare, restricted_unpickle, split_validation, stratified_subset
from mlscale.errors import MlscaleError

# The official MD5s of the uncompressed MNIST files, written out independently of the code.
OFFICIAL_MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def test_prepared_mnist_matches_the_official_checksums(data_root: Path) -> None:
    raw = data_root / "MNIST" / "raw"
    assert {name: _md5(raw / name) for name in OFFICIAL_MNIST_MD5} == OFFICIAL_MNIST_MD5


def test_prepare_again_reuses_the_verified_files(data_root: Path) -> None:
    result = prepare("mnist", data_root)
    assert result.source == "existing"
    assert result.md5 == OFFICIAL_MNIST_MD5


def test_torchvision_reads_the_prepared_layout(data_root: Path) -> None:
    train = torchvision.datasets.MNIST(str(data_root), train=True)
    test = torchvision.datasets.MNIST(str(data_root), train=False)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.targets[:5].tolist() == [5, 0, 4, 1, 9]


def test_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    result = prepare("fashion-mnist", tmp_path)
    assert result.source == "debian"
    assert result.md5 == dict(data.DATASETS["fashion-mnist"].md5)
    train = torchvision.datasets.FashionMNIST(str(tmp_path), train=True)
    assert len(train) == 60_000


def test_load_keeps_each_split_as_uint8(mnist: Splits) -> None:
    assert mnist.train_images.shape == (60_000, 28, 28)
    assert mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10_000, 28, 28)
    assert mnist.train_labels.dtype == torch.int64
    pixels = mnist.train_images.float() / 255
    assert pixels.mean().item() == pytest.approx(mnist.info.mean, abs=1e-3)
    assert pixels.std().item() == pytest.approx(mnist.info.std, abs=1e-3)


def _copy_mnist(data_root: Path, dest: Path) -> Path:
    shutil.copytree(data_root / "MNIST", dest / "MNIST")
    return dest / "MNIST" / "raw"


def test_a_truncated_file_is_a_one_line_error_naming_it(data_root: Path, tmp_path: Path) -> None:
    raw = _copy_mnist(data_root, tmp_path)
    victim = raw / "t10k-labels-idx1-ubyte"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(MlscaleError, match="t10k-labels-idx1-ubyte") as error:
        prepare("mnist", tmp_path)
    assert "\n" not in str(error.value)
    assert "delete it" in str(error.value)


def test_an_unwritable_root_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(MlscaleError, match="cannot write to data root"):
        prepare("mnist", blocker / "root")


def test_an_unknown_dataset_is_rejected() -> None:
    with pytest.raises(MlscaleError, match="unknown dataset 'cifar'"):
        prepare("cifar")


def test_a_missing_source_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(data, "_from_torchvision_download", lambda info, root: False)
    with pytest.raises(MlscaleError, match="apt-get install dataset-fashion-mnist"):
        prepare("fashion-mnist", tmp_path / "root")


class _CallsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_the_restricted_unpickler_refuses_anything_but_numpy(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CallsSystem(marker), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        restricted_unpickle(payload)
    assert not marker.exists()
    # and the same payload does run under the default unpickler: the test can fail
    pickle.loads(payload)
    assert marker.exists()


def test_the_restricted_unpickler_rebuilds_numpy_arrays() -> None:
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    restored = restricted_unpickle(pickle.dumps(arrays, protocol=4))
    for original, copy in zip(arrays, restored, strict=True):
        np.testing.assert_array_equal(original, copy)


def _assert_stratified(labels: torch.Tensor, subset: torch.Tensor) -> None:
    """Every class within one sample of its share of the full set."""
    share = torch.bincount(labels, minlength=10).double() / len(labels)
    counts = torch.bincount(labels[subset], minlength=10).double()
    assert torch.all((counts - share * len(subset)).abs() <= 1.0), counts


def test_validation_split_is_stratified_disjoint_and_seeded(mnist: Splits) -> None:
    labels = mnist.train_labels
    train_idx, val_idx = split_validation(labels, 5000, seed=3)
    assert len(val_idx) == 5000 and len(train_idx) == 55_000
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 60_000
    _assert_stratified(labels, val_idx)
    again_train, again_val = split_validation(labels, 5000, seed=3)
    assert torch.equal(val_idx, again_val) and torch.equal(train_idx, again_train)
    assert not torch.equal(val_idx, split_validation(labels, 5000, seed=4)[1])


@pytest.mark.parametrize("size", [100, 1_000, 12_345, 60_000])
def test_subsets_are_stratified_seeded_and_nested(mnist: Splits, size: int) -> None:
    labels = mnist.train_labels
    subset = stratified_subset(labels, size, seed=7)
    assert len(subset) == len(set(subset.tolist())) == size
    _assert_stratified(labels, subset)
    assert torch.equal(subset, stratified_subset(labels, size, seed=7))
    smaller = stratified_subset(labels, size // 2, seed=7)
    assert set(smaller.tolist()) <= set(subset.tolist())
    if size < len(labels):
        assert not torch.equal(subset, stratified_subset(labels, size, seed=8))


@pytest.mark.parametrize("size", [0, -5, 60_001])
def test_subset_sizes_outside_the_split_are_rejected(mnist: Splits, size: int) -> None:
    with pytest.raises(MlscaleError, match="train size must be in"):
        stratified_subset(mnist.train_labels, size)
