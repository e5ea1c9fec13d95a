"""``npz:PATH``: a NumPy archive with ``x_train``, ``y_train``, ``x_test``, ``y_test``."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from mlscale.errors import MlscaleError, first_line
from mlscale.sources._arrays import splits_from_arrays
from mlscale.sources._paths import check_path

if TYPE_CHECKING:
    from mlscale.data import Splits

__all__ = ["KEYS", "check_npz_file", "load_npz", "npz_sizes"]

KEYS = ("x_train", "y_train", "x_test", "y_test")


def check_npz_file(path: Path) -> None:
    """A one-line error unless ``path`` is a zip archive (what ``np.savez`` writes)."""
    check_path("npz", path)
    if not zipfile.is_zipfile(path):
        raise MlscaleError(f"{path} is not a NumPy .npz archive (not a zip file)")


def load_npz(name: str, path: Path) -> Splits:
    """Read the four arrays without pickle (``allow_pickle=False``) and check them."""
    import numpy as np

    check_npz_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in KEYS if key not in archive.files]
            if missing:
                raise MlscaleError(f"{path} lacks {', '.join(missing)} (it has: "
                                   f"{', '.join(archive.files) or 'nothing'})")
            arrays = [archive[key] for key in KEYS]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise MlscaleError(f"cannot read {path}: {first_line(error)}") from None
    return splits_from_arrays(name, str(path), *arrays)


def npz_sizes(path: Path) -> tuple[int, int]:
    """(train, test) sample counts from the label arrays' headers, without loading them."""
    import numpy as np

    check_npz_file(path)
    sizes = []
    with zipfile.ZipFile(path) as archive:
        for key in ("y_train", "y_test"):
            try:
                with archive.open(f"{key}.npy") as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(handle)
            except (KeyError, ValueError) as error:
                raise MlscaleError(f"{path}: cannot read {key}: {error}") from None
            sizes.append(int(shape[0]) if shape else 0)
    return sizes[0], sizes[1]
