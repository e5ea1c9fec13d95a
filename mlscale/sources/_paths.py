"""What a source's path must be: a file for ``npz:``, a folder for ``imagefolder:``."""

from __future__ import annotations

from pathlib import Path

from mlscale.errors import MlscaleError

__all__ = ["check_path"]


def check_path(kind: str, path: Path) -> None:
    """A one-line error when ``path`` is absent or is a folder where a file belongs (or the
    reverse), saying which form reads what is there."""
    wants_folder = kind == "imagefolder"
    if not path.exists():
        raise MlscaleError(f"{kind} dataset {path} does not exist")
    if path.is_dir() != wants_folder:
        found = ("a file, not a folder (an .npz archive is npz:PATH)" if wants_folder else
                 "a directory, not an .npz file (a folder of images is imagefolder:PATH)")
        raise MlscaleError(f"{kind} dataset {path} is {found}")
