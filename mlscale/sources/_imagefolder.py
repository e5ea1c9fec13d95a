"""``imagefolder:PATH``: torchvision's ImageFolder layout, ``PATH/{train,test}/CLASS/*``.

Images are decoded once (Pillow, through torchvision's folder helpers) into uint8
arrays and cached as an ``.npz`` keyed by the folder's contents (every file's relative
path, size and modification time), so a second run reads the cache instead of decoding.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mlscale.errors import MlscaleError
from mlscale.sources._arrays import shape_text
from mlscale.sources._paths import check_path

if TYPE_CHECKING:
    import numpy as np

    from mlscale.data import Splits

__all__ = ["CACHE_FORMAT", "cache_path", "check_imagefolder", "imagefolder_sizes",
           "load_imagefolder"]

CACHE_FORMAT = 1
SPLITS = ("train", "test")


def check_imagefolder(folder: Path) -> None:
    """A one-line error unless ``folder`` holds a train/ and a test/ folder."""
    check_path("imagefolder", folder)
    for split in SPLITS:
        if not (folder / split).is_dir():
            raise MlscaleError(f"imagefolder {folder} has no {split}/ folder (expected "
                               f"{folder}/{split}/CLASS/IMAGE)")


def _samples(folder: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(file, class index)]) of one split, by torchvision's rules."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    directory = folder / split
    try:
        classes, class_to_idx = find_classes(str(directory))
        samples = make_dataset(str(directory), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as error:  # torchvision's words name the empty class folders
        raise MlscaleError(f"{directory}: {str(error).split(chr(10))[0]}") from None
    return classes, samples


def _contents_key(folder: Path) -> str:
    """A hash of every file's relative path, size and mtime under train/ and test/."""
    entries = []
    for split in SPLITS:
        for dirpath, _, filenames in os.walk(folder / split):
            for filename in filenames:
                path = Path(dirpath) / filename
                stat = path.stat()
                entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    entries.sort()
    payload = json.dumps([CACHE_FORMAT, entries]).encode()
    return hashlib.sha256(payload).hexdigest()[:20]


def cache_path(folder: Path, data_root: Path) -> Path:
    """Where the decoded arrays of ``folder`` are cached: ``$MLSCALE_CACHE_DIR/datasets/``,
    else ``DATA_ROOT/.cache/``."""
    base = (Path(os.environ["MLSCALE_CACHE_DIR"]) / "datasets"
            if os.environ.get("MLSCALE_CACHE_DIR") else data_root / ".cache")
    return base / f"imagefolder-{folder.name}-{_contents_key(folder)}.npz"


def _decode(path: str) -> np.ndarray:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            gray = image.mode in ("1", "L", "I", "I;16", "F")
            pixels = np.asarray(image.convert("L" if gray else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise MlscaleError(f"cannot decode image {path}: {error}") from None
    return pixels[None] if gray else pixels.transpose(2, 0, 1)


def _decode_split(samples: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every image as C x H x W uint8 (one size for all), and the labels."""
    import numpy as np

    images, first = [], None
    for path, _ in samples:
        pixels = _decode(path)
        if first is None:
            first = (path, pixels.shape[1:])
        elif pixels.shape[1:] != first[1]:
            raise MlscaleError(f"mixed image sizes: {path} is {shape_text(pixels.shape[1:])}, "
                               f"{first[0]} {shape_text(first[1])}")
        images.append(pixels)
    channels = max(image.shape[0] for image in images)
    stacked = np.stack([np.repeat(image, channels // image.shape[0], axis=0)
                        for image in images])  # a grey image among colour ones: grey RGB
    return stacked, np.array([label for _, label in samples], dtype=np.int64)


def _decode_folder(folder: Path) -> dict[str, np.ndarray]:
    import numpy as np

    classes, train = _samples(folder, "train")
    test_classes, test = _samples(folder, "test")
    if test_classes != classes:
        raise MlscaleError(f"imagefolder {folder}: test/ has the classes {test_classes}, "
                           f"train/ {classes}; they must be the same")
    x_train, y_train = _decode_split(train)
    x_test, y_test = _decode_split(test)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise MlscaleError(f"mixed image sizes: {folder}/train holds "
                           f"{shape_text(x_train.shape[1:])} images, test/ "
                           f"{shape_text(x_test.shape[1:])}")
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "classes": np.array(classes)}


def load_imagefolder(name: str, folder: Path, data_root: Path) -> Splits:
    """Decode ``folder`` (or read its cache) into checked in-memory splits."""
    import numpy as np

    from mlscale.sources._arrays import splits_from_arrays
    from mlscale.sources._npz import KEYS

    check_imagefolder(folder)
    cached = cache_path(folder, data_root)
    arrays: dict[str, np.ndarray] | None = None
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in KEYS}
        except (OSError, ValueError, KeyError):
            arrays = None  # a damaged cache is decoded again
    if arrays is None:
        arrays = _decode_folder(folder)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            scratch = cached.with_name(f"{cached.stem}.{os.getpid()}.partial.npz")
            np.savez(scratch, **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle
            scratch.replace(cached)
        except OSError:
            pass  # an unwritable cache only makes the next run decode again
    return splits_from_arrays(name, str(folder), *(arrays[key] for key in KEYS))


def imagefolder_sizes(folder: Path) -> tuple[int, int]:
    """(train, test) image counts, without decoding anything."""
    check_imagefolder(folder)
    sizes = tuple(len(_samples(folder, split)[1]) for split in SPLITS)
    return sizes[0], sizes[1]
