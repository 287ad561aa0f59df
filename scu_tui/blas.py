"""Use a system OpenBLAS under MLX's CPU backend on Linux.

The ``mlx[cpu]`` wheel for Linux links the reference BLAS it bundles; its fp32 matmul is
about 30x slower than OpenBLAS on a 2-core x86 machine. Loading a system OpenBLAS with
``RTLD_GLOBAL`` before ``mlx.core`` is imported makes the dynamic linker resolve MLX's
BLAS calls to it. Set ``SCU_TUI_OPENBLAS=0`` to keep the bundled BLAS, or
``SCU_TUI_OPENBLAS=/path/to/libopenblas.so.0`` to choose the library.

The choice must be made before ``mlx.core`` loads: once MLX has bound its BLAS calls to
the bundled library, loading OpenBLAS changes nothing. A process that imported
``mlx.core`` before ``scu_tui`` therefore trains on the slow bundled BLAS, and on other
floating-point results than the command line would give; :data:`LATE_IMPORT` says so
loudly (a warning at import, and a warning line in every run, see :func:`late_import`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings
from importlib import metadata
from pathlib import Path

ENV = "SCU_TUI_OPENBLAS"
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

#: The OpenBLAS library in use, or None; and why not, for ``--version`` and the benches.
active: str | None = None
reason: str = "not tried"

#: The reason recorded when ``mlx.core`` was imported before ``scu_tui`` would have chosen.
LATE_IMPORT = (
    "mlx.core was imported before scu_tui, so MLX is bound to its bundled reference BLAS "
    "(slower, other floating-point results); import scu_tui before mlx"
)


def late_import() -> bool:
    """Whether this process missed the system OpenBLAS only because of import order."""
    return reason == LATE_IMPORT


def _bundles_reference_blas() -> bool:
    """Whether the installed ``mlx-cpu`` wheel carries its own reference ``libblas``.

    Asks the installed distribution rather than the import path, which a stray ``mlx``
    folder in the working directory could shadow.
    """
    try:
        files = metadata.distribution("mlx-cpu").files or []
    except metadata.PackageNotFoundError:
        return False
    return any(f.parts[0] == "mlx_cpu.libs" and f.name.startswith("libblas") for f in files)


def _find_openblas() -> str | None:
    for path in CANDIDATES:
        if Path(path).is_file():
            return path
    return ctypes.util.find_library("openblas")


def use_system_openblas() -> str | None:
    """Load a system OpenBLAS for MLX if that helps and is allowed; returns its path."""
    global active, reason
    choice = os.environ.get(ENV, "").strip()
    if choice == "0":
        reason = f"disabled by {ENV}=0"
        return None
    if not sys.platform.startswith("linux"):
        reason = "not Linux"
        return None
    if not choice and not _bundles_reference_blas():
        reason = "mlx does not bundle the reference BLAS"
        return None
    library = choice or _find_openblas()
    if not library:
        reason = "no system OpenBLAS found (apt-get install libopenblas0-pthread)"
        return None
    if "mlx.core" in sys.modules:
        reason = LATE_IMPORT
        warnings.warn(f"scu-tui: {LATE_IMPORT}", RuntimeWarning, stacklevel=2)
        return None
    try:
        ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        reason = f"cannot load {library}: {exc}"
        return None
    active, reason = library, "loaded"
    return library
