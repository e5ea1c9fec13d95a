"""The files behind a dataset: MD5 checks, atomic writes, IDX encoding, and the
numpy-only unpickler that reads the offline MNIST pickle safely."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["idx_bytes", "md5", "restricted_unpickle", "write_atomically"]


def md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, payload: bytes) -> None:
    """Write via a temporary file and rename, so a killed run never leaves a partial file."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(payload)
    tmp.replace(path)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy needs to rebuild arrays; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _numpy_reconstructors()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a pickle")
        return allowed[(module, name)]


def _numpy_reconstructors() -> dict[tuple[str, str], Callable[..., Any]]:
    import numpy as np

    # numpy 2 moved numpy.core to numpy._core; pickles from either name the same function.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


def restricted_unpickle(payload: bytes) -> Any:
    """Unpickle ``payload`` allowing only numpy array reconstruction (Python 2 pickles too)."""
    return _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format of the MNIST files (big-endian header)."""
    magic = 0x0800 | array.ndim
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + array.astype("uint8").tobytes()
