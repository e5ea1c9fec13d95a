"""How families and datasets are named in MLflow (experiments, registered models).

MLflow forbids ``/`` and ``:`` in registered model names, so names that carry an import
path or a file path are made valid and stable here, without importing anything heavy:

>>> arch_name("mypkg.nets:tiny_cnn")
'mypkg.nets.tiny_cnn'
>>> dataset_name("npz:data/shapes.npz"), dataset_name("imagefolder:/srv/pets/")
('npz-shapes', 'imagefolder-pets')
>>> dataset_name("torchvision:CIFAR10"), dataset_name("mnist")
('torchvision-cifar10', 'mnist')
>>> is_dataset_name("npz-shapes"), is_dataset_name("shapes.npz")
(True, False)
"""

from __future__ import annotations

import re
from pathlib import PurePath

from mlscale.errors import MlscaleError

__all__ = ["SOURCE_KINDS", "arch_name", "dataset_name", "is_dataset_name", "split_source"]

SOURCE_KINDS = ("npz", "imagefolder", "torchvision")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def arch_name(arch: str) -> str:
    """``package.module:builder`` becomes ``package.module.builder``; zoo names stay."""
    return arch.replace(":", ".")


def split_source(spec: str) -> tuple[str, str] | None:
    """``(kind, argument)`` of a user dataset ``kind:argument``, or None for a built-in
    name; an unknown kind or an empty argument is a one-line error."""
    if ":" not in spec:
        return None
    kind, _, argument = spec.partition(":")
    if kind not in SOURCE_KINDS:
        raise MlscaleError(f"unknown dataset source {kind!r} in {spec!r}; use "
                           + ", ".join(f"{k}:..." for k in SOURCE_KINDS))
    if not argument.strip():
        what = "class" if kind == "torchvision" else "path"
        raise MlscaleError(f"dataset {spec!r} names no {what}")
    return kind, argument


def dataset_name(spec: str) -> str:
    """The dataset's name in the registry: a built-in name as it is, a user source as
    ``kind-stem`` (the file's or folder's name without suffix; torchvision's class name in
    lower case), with any character outside ``A-Za-z0-9._-`` replaced by ``-``."""
    source = split_source(spec)
    if source is None:
        return spec
    kind, argument = source
    stem = argument.lower() if kind == "torchvision" else PurePath(argument).stem
    return f"{kind}-{_UNSAFE.sub('-', stem).strip('-') or 'data'}"


def is_dataset_name(name: str) -> bool:
    """Whether ``name`` has the form ``dataset_name`` gives a user source (``npz-shapes``):
    what the registry knows a dataset by, with no file to read."""
    kind, dash, stem = name.partition("-")
    return bool(dash and stem) and kind in SOURCE_KINDS and not _UNSAFE.search(stem)
