"""mlscale's compiled CPU kernels (``csrc/``), built once per machine by torch's loader.

``torch.utils.cpp_extension.load`` compiles the sources with the machine's C++ compiler
and ninja into torch's extension cache (``$TORCH_EXTENSIONS_DIR``, by default under
``~/.cache``), about 20 s the first time, and later loads the cached library in
milliseconds; it rebuilds when a source changes. ``make setup`` builds them. Where no
toolchain works, callers fall back to torch's own kernels.

    python -m mlscale.models._native   # build now, print where the library is
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from pathlib import Path

EXTENSION = "mlscale_cpu_kernels"
SOURCES = [Path(__file__).with_name("csrc") / "max_pool2x2.cpp"]


@functools.cache
def native_kernels() -> bool:
    """Whether ``torch.ops.mlscale`` is loaded: built or loaded from the cache on first call."""
    # The loader warns at import that this CPU build has no CUDA: true, and irrelevant here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import get_default_build_root, load

    _put_ninja_on_path()
    if not any(Path(get_default_build_root()).glob(f"*/{EXTENSION}/{EXTENSION}*.so")):
        print("mlscale: compiling its CPU kernels once for this machine (about 20 s)",
              file=sys.stderr)
    try:
        load(name=EXTENSION, sources=[str(s) for s in SOURCES],
             extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
             is_python_module=False)
    except Exception as error:  # no compiler or ninja, or a failed build: torch's kernels
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"mlscale: CPU kernels unavailable, using torch's ({first_line})", file=sys.stderr)
        return False
    return True


def _put_ninja_on_path() -> None:
    """The loader runs ``ninja`` from PATH; pip's copy lives in the environment's bin/."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"


if __name__ == "__main__":
    sys.exit(0 if native_kernels() else 1)
