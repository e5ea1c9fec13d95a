"""Checked in-memory splits from NumPy arrays: the one shape every user source ends in."""

from __future__ import annotations

import hashlib
import sys
from typing import TYPE_CHECKING

from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    import numpy as np

    from mlscale.data import Splits

__all__ = ["as_uint8_images", "shape_text", "splits_from_arrays"]

_STATS_CHUNK = 4096  # images per chunk when summing pixels (bounded float64 memory)
_ABSENT_SHOWN = 10  # absent classes a warning names


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as mlscale prints it: ``3x16x16``, ``16x8`` (height before width)."""
    return "x".join(map(str, shape))


def as_uint8_images(images: np.ndarray, key: str, origin: str) -> np.ndarray:
    """``images`` as uint8 N x H x W or N x C x H x W; floats must lie in [0, 1]."""
    import numpy as np

    if images.ndim not in (3, 4):
        raise MlscaleError(f"{origin}: {key} must be N x H x W or N x C x H x W images, "
                           f"got shape {images.shape}")
    if images.ndim == 4 and images.shape[3] in (1, 3, 4) and (
            images.shape[1] == images.shape[2] != images.shape[3]):  # N, H, W, C: square H x W
        raise MlscaleError(f"{origin}: {key} of shape {images.shape} looks channels-last "
                           f"(N, H, W, C); mlscale wants (N, C, H, W): x.transpose(0, 3, 1, 2)")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise MlscaleError(f"{origin}: {key} must hold uint8 or float images, got {images.dtype}")
    if nan := int(np.isnan(images).sum()):
        raise MlscaleError(f"{origin}: float images in {key} hold {nan:,} NaN pixels (pixels "
                           "must lie in [0, 1])")
    if images.size and not (images.min() >= 0 and images.max() <= 1):
        raise MlscaleError(f"{origin}: float images in {key} must lie in [0, 1], got values "
                           f"from {images.min():g} to {images.max():g}")
    # Held as uint8 like the built-in datasets: the trainer normalises batch by batch.
    return np.rint(images * 255).astype(np.uint8)


def _labels(labels: np.ndarray, key: str, origin: str) -> np.ndarray:
    import numpy as np

    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise MlscaleError(f"{origin}: {key} must be a 1-D array of integer labels, got "
                           f"{labels.dtype} of shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise MlscaleError(f"{origin}: {key} holds the negative label {int(labels.min())}")
    return labels.astype(np.int64)


def _pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of every pixel scaled to [0, 1] (over all channels)."""
    import numpy as np

    total, squares = 0.0, 0.0
    for start in range(0, len(images), _STATS_CHUNK):
        chunk = images[start:start + _STATS_CHUNK].astype(np.float64) / 255
        total += float(chunk.sum())
        squares += float(np.square(chunk).sum())
    count = images.size
    mean = total / count
    std = max(squares / count - mean * mean, 0.0) ** 0.5
    return mean, std if std > 0 else 1.0  # constant images: scale by one rather than divide by 0


def splits_from_arrays(name: str, origin: str, x_train: np.ndarray, y_train: np.ndarray,
                       x_test: np.ndarray, y_test: np.ndarray) -> Splits:
    """Validate four arrays and hold them as mlscale's Splits, statistics from train.

    Channels, image size and the number of classes (the largest train label + 1) are
    inferred; ``origin`` names the source in every error.
    """
    import torch

    from mlscale.data import DatasetInfo, Splits

    x_train, x_test = (as_uint8_images(x, k, origin) for x, k in
                       ((x_train, "x_train"), (x_test, "x_test")))
    y_train, y_test = (_labels(y, k, origin) for y, k in ((y_train, "y_train"),
                                                           (y_test, "y_test")))
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise MlscaleError(f"{origin}: x_{split} has {len(x)} images but y_{split} has "
                               f"{len(y)} labels")
        if not len(x):
            raise MlscaleError(f"{origin}: the {split} split is empty")
    shape = (1, *x_train.shape[1:]) if x_train.ndim == 3 else tuple(x_train.shape[1:])
    test_shape = (1, *x_test.shape[1:]) if x_test.ndim == 3 else tuple(x_test.shape[1:])
    if shape != test_shape:
        raise MlscaleError(f"{origin}: mixed image sizes: train images are "
                           f"{shape_text(shape)}, test images {shape_text(test_shape)}")
    if shape[1] != shape[2]:
        raise MlscaleError(f"{origin}: images must be square, got {shape_text(shape[1:])}")
    num_classes = int(y_train.max()) + 1
    if num_classes < 2:
        raise MlscaleError(f"{origin}: the train labels hold a single class")
    if int(y_test.max()) >= num_classes:
        raise MlscaleError(f"{origin}: y_test holds label {int(y_test.max())}, out of the "
                           f"range 0..{num_classes - 1} of y_train")
    _warn_absent_classes(y_train, num_classes, origin)
    mean, std = _pixel_stats(x_train)
    info = DatasetInfo(name=name, folder="", md5={}, mean=mean, std=std,
                       num_classes=num_classes, input_shape=(shape[0], shape[1], shape[2]),
                       train_samples=len(x_train),
                       fingerprint=_fingerprint(  # as (N, C, H, W) however they were saved
                           x_train.reshape(-1, *shape), y_train, x_test.reshape(-1, *shape),
                           y_test))
    return Splits(info, torch.from_numpy(x_train), torch.from_numpy(y_train),
                  torch.from_numpy(x_test), torch.from_numpy(y_test))


def _warn_absent_classes(y_train: np.ndarray, num_classes: int, origin: str) -> None:
    """One line on stderr naming the classes below the largest label that y_train lacks:
    they still count (classes are the largest label + 1), so a gap is likely a mistake."""
    import numpy as np

    absent = np.setdiff1d(np.arange(num_classes), y_train)
    if not absent.size:
        return
    shown = ", ".join(map(str, absent[:_ABSENT_SHOWN])) + (
        f" and {absent.size - _ABSENT_SHOWN} more" if absent.size > _ABSENT_SHOWN else "")
    print(f"Warning: {origin}: {num_classes} classes (the largest train label + 1), but the "
          f"train split has no sample of class {shown}", file=sys.stderr)


def _fingerprint(*arrays: np.ndarray) -> str:
    """A hash of the arrays' shapes and bytes: the data's identity wherever its files are.

    The content itself, not its path (a moved folder is the same data) nor the image
    folder's cache key (file sizes and mtimes: a copied folder would look like other data,
    and an npz has no cache): SHA-256 over the held uint8 images and int64 labels took
    31 ms for MNIST-sized splits (55 MB) here, once per process.
    """
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]
