"""Small user datasets written by tests: 3 x 16 x 16 colour images of 4 learnable classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("circle", "cross", "square", "stripe")


def shapes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 images (N, 3, 16, 16) and labels 0..3: each class lights its own
    quadrant and colour channel, under noise, so a small net learns it in an epoch."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(CLASSES)
    rng.shuffle(labels)
    images = rng.integers(0, 90, size=(count, 3, 16, 16))
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[index, label % 3, row * 8:row * 8 + 8, col * 8:col * 8 + 8] += 160
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_npz(path: Path, train: int = 480, test: int = 160, **overrides: np.ndarray) -> Path:
    """An npz dataset at ``path``; ``overrides`` replace (or, given None, drop) arrays."""
    x_train, y_train = shapes(train, 0)
    x_test, y_test = shapes(test, 1)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    arrays |= overrides
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def write_imagefolder(folder: Path, train: int = 240, test: int = 80) -> Path:
    """The same kind of images as PNG files in ImageFolder's layout under ``folder``."""
    from PIL import Image

    for split, count, seed in (("train", train, 2), ("test", test, 3)):
        images, labels = shapes(count, seed)
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            target = folder / split / CLASSES[label] / f"{index:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.transpose(1, 2, 0)).save(target)
    return folder
