"""``torchvision:NAME``: a torchvision dataset class whose files are already under the root."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError, first_line

if TYPE_CHECKING:
    import numpy as np

    from mlscale.data import Splits

__all__ = ["load_torchvision"]


def _dataset_class(name: str) -> Any:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, torchvision.datasets.VisionDataset)):
        raise MlscaleError(f"torchvision has no dataset class {name!r} (see "
                           "torchvision.datasets, e.g. CIFAR10, FashionMNIST, SVHN)")
    return cls


def _open_split(cls: Any, name: str, root: Path, split: str, download: bool) -> Any:
    parameters = inspect.signature(cls).parameters
    selector: dict[str, Any]
    if "train" in parameters:
        selector = {"train": split == "train"}
    elif "split" in parameters:
        selector = {"split": split}
    else:
        raise MlscaleError(f"torchvision's {name} has neither a train= nor a split= argument; "
                           "export it to an npz: dataset instead")
    try:
        return cls(str(root), download=download, **selector)
    except (RuntimeError, OSError, ValueError) as error:
        hint = "" if download else (f"; fetch them with `mlscale data prepare --dataset "
                                    f"torchvision:{name} --root {root} --download`")
        raise MlscaleError(f"torchvision's {name} found no usable files under {root} "
                           f"({first_line(error)}){hint}") from None


def _arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x H x W or N x C x H x W) and labels of a torchvision dataset."""
    import numpy as np

    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if data is None or targets is None:  # no in-memory arrays: decode sample by sample
        pairs = [(np.asarray(image), label) for image, label in dataset]
        data = np.stack([p[0] for p in pairs])
        targets = [p[1] for p in pairs]
    images = np.asarray(data)
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # N x H x W x C (CIFAR's layout) to N x C x H x W
    return np.ascontiguousarray(images), np.asarray(targets, dtype=np.int64)


def load_torchvision(name: str, class_name: str, root: Path, download: bool = False) -> Splits:
    """Read both splits of torchvision's ``class_name`` from ``root`` (download only if asked)."""
    from mlscale.sources._arrays import splits_from_arrays

    cls = _dataset_class(class_name)
    train, test = (_arrays(_open_split(cls, class_name, root, split, download))
                   for split in ("train", "test"))
    return splits_from_arrays(name, f"torchvision:{class_name} under {root}", *train, *test)
