"""mlscale's compiled CPU kernels (``csrc/``), built once per machine by torch's loader.

``torch.utils.cpp_extension.load`` compiles the sources with the machine's C++ compiler
and ninja (about 20 s) into a folder of torch's extension cache (``$TORCH_EXTENSIONS_DIR``,
by default under ``~/.cache``) named by a hash of the sources, the flags, torch and Python,
so that a change to any of them builds anew. A built library is loaded directly (10 ms;
the loader's own up-to-date check costs about 1 s per process). ``make setup`` builds it.
Where no toolchain works, callers fall back to torch's own kernels.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

from mlscale.errors import first_line

EXTENSION = "mlscale_cpu_kernels"
SOURCES = [Path(__file__).with_name("csrc") / name
           for name in ("max_pool2x2.cpp", "batch_norm_nhwc.cpp")]
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)


@functools.cache
def native_kernels() -> bool:
    """Whether ``torch.ops.mlscale`` is loaded: built or loaded from the cache on first call."""
    import torch

    # The loader warns at import that this CPU build has no CUDA: true, and irrelevant here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import get_default_build_root, load

    digest = hashlib.sha256(" ".join([*CFLAGS, *LDFLAGS, torch.__version__, sys.version]).encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    directory = Path(root, f"{EXTENSION}-{digest.hexdigest()[:16]}")
    library = directory / f"{EXTENSION}.so"
    try:
        if not library.exists():
            print("mlscale: compiling its CPU kernels once for this machine (about 20 s)",
                  file=sys.stderr)
            directory.mkdir(parents=True, exist_ok=True)
            _put_ninja_on_path()
            load(name=EXTENSION, sources=[str(s) for s in SOURCES],  # lists: load() edits them
                 extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                 build_directory=str(directory), is_python_module=False)
        else:
            torch.ops.load_library(library)
    except Exception as error:  # no compiler or ninja, or a failed build: torch's kernels
        print(f"mlscale: CPU kernels unavailable, using torch's ({first_line(error)})",
              file=sys.stderr)
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
