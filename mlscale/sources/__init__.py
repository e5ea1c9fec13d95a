"""Datasets from user files, behind one seam: ``npz:PATH``, ``imagefolder:PATH`` and
``torchvision:NAME`` (files under the data root).

Each source ends in the same in-memory :class:`mlscale.data.Splits` as the built-in
datasets (uint8 images, int64 labels), with channels, image size and classes inferred
and the normalisation statistics computed on the train split. ``mlscale.data.load`` and
``mlscale.data.dataset_info`` route user sources here.

>>> splits = load_source("npz:shapes.npz")               # doctest: +SKIP
>>> splits.info.name, splits.info.input_shape            # doctest: +SKIP
('npz-shapes', (3, 16, 16))
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mlscale.errors import MlscaleError
from mlscale.names import dataset_name, split_source

if TYPE_CHECKING:
    from mlscale.data import Splits

__all__ = ["check_source", "load_source", "resolved_source", "source_sizes"]


def _root(root: str | os.PathLike[str] | None) -> Path:
    from mlscale.data import default_root

    return Path(root) if root is not None else default_root()


def _stamp(path: Path) -> tuple[int, int]:
    """What changes when a file is rewritten: its size and mtime (0, 0 when absent)."""
    try:
        stat = path.stat()
    except OSError:
        return 0, 0
    return stat.st_size, stat.st_mtime_ns


def load_source(spec: str, root: str | os.PathLike[str] | None = None, *,
                download: bool = False) -> Splits:
    """The splits of the user dataset ``spec``; loaded once per process while unchanged."""
    kind, argument = _parsed(resolved_source(spec))
    return _load(kind, argument, str(_root(root).resolve()), _stamp(Path(argument)), download)


def resolved_source(spec: str) -> str:
    """``spec`` with its path absolute (``npz:/home/me/shapes.npz``): where its files are,
    whatever the working directory; ``torchvision:NAME`` as it is."""
    kind, argument = _parsed(spec)
    if kind == "torchvision":
        return spec
    return f"{kind}:{Path(argument).expanduser().resolve()}"


@functools.lru_cache(maxsize=4)
def _load(kind: str, argument: str, root: str, _stamp: tuple[int, int],
          download: bool) -> Splits:
    name = dataset_name(f"{kind}:{argument}")
    if kind == "npz":
        from mlscale.sources._npz import load_npz

        return load_npz(name, Path(argument))
    if kind == "imagefolder":
        from mlscale.sources._imagefolder import load_imagefolder

        return load_imagefolder(name, Path(argument), Path(root))
    from mlscale.sources._torchvision import load_torchvision

    return load_torchvision(name, argument, Path(root), download)


def _parsed(spec: str) -> tuple[str, str]:
    source = split_source(spec)
    if source is None:
        raise MlscaleError(f"{spec!r} is not a user dataset (kind:argument)")
    return source


def check_source(spec: str) -> None:
    """Fail fast, without reading the data, on a source whose files are not there."""
    kind, argument = _parsed(spec)
    path = Path(argument).expanduser()
    if kind == "npz":
        from mlscale.sources._npz import check_npz_file

        check_npz_file(path)
    if kind == "imagefolder":
        from mlscale.sources._imagefolder import check_imagefolder

        check_imagefolder(path)


def source_sizes(spec: str, root: str | os.PathLike[str] | None = None) -> tuple[int, int]:
    """(train, test) sample counts, cheaply: array headers, file counts (torchvision's
    classes are opened, which reads their files)."""
    kind, argument = _parsed(spec)
    if kind == "npz":
        from mlscale.sources._npz import npz_sizes

        return npz_sizes(Path(argument).expanduser())
    if kind == "imagefolder":
        from mlscale.sources._imagefolder import imagefolder_sizes

        return imagefolder_sizes(Path(argument).expanduser())
    splits = load_source(spec, root)
    return len(splits.train_labels), len(splits.test_labels)
