"""Checked in-memory splits from NumPy arrays: the one shape every user source ends in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    import numpy as np

    from mlscale.data import Splits

__all__ = ["as_uint8_images", "splits_from_arrays"]

_STATS_CHUNK = 4096  # images per chunk when summing pixels (bounded float64 memory)


def as_uint8_images(images: np.ndarray, key: str, origin: str) -> np.ndarray:
    """``images`` as uint8 N x H x W or N x C x H x W; floats must lie in [0, 1]."""
    import numpy as np

    if images.ndim not in (3, 4):
        raise MlscaleError(f"{origin}: {key} must be N x H x W or N x C x H x W images, "
                           f"got shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise MlscaleError(f"{origin}: {key} must hold uint8 or float images, got {images.dtype}")
    if images.size and not (np.isfinite(images).all() and images.min() >= 0
                            and images.max() <= 1):
        raise MlscaleError(f"{origin}: float images in {key} must lie in [0, 1]")
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
                           f"{'x'.join(map(str, shape))}, test images "
                           f"{'x'.join(map(str, test_shape))}")
    if shape[1] != shape[2]:
        raise MlscaleError(f"{origin}: images must be square, got {shape[1]}x{shape[2]}")
    num_classes = int(y_train.max()) + 1
    if num_classes < 2:
        raise MlscaleError(f"{origin}: the train labels hold a single class")
    if int(y_test.max()) >= num_classes:
        raise MlscaleError(f"{origin}: y_test holds label {int(y_test.max())}, out of the "
                           f"range 0..{num_classes - 1} of y_train")
    mean, std = _pixel_stats(x_train)
    info = DatasetInfo(name=name, folder="", md5={}, mean=mean, std=std,
                       num_classes=num_classes, input_shape=(shape[0], shape[1], shape[2]),
                       train_samples=len(x_train))
    return Splits(info, torch.from_numpy(x_train), torch.from_numpy(y_train),
                  torch.from_numpy(x_test), torch.from_numpy(y_test))
