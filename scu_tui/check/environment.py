"""The machine a run would use: backend, BLAS, versions and memory.

``memory_limit_bytes()`` is the budget both the check and the run's memory watchdog hold a
run to: on a Mac the GPU's recommended working set (beyond it macOS starts paging and
training slows to a crawl), on CUDA the GPU's memory, elsewhere the RAM (or the cgroup's
limit in a container) less a tenth for the system.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from scu_tui.memory_readings import parse_kb_fields

#: The one command that installs the system OpenBLAS on Debian/Ubuntu.
OPENBLAS_INSTALL = "sudo apt-get install libopenblas0-pthread"
#: Training tokens/s with the system OpenBLAS over MLX's bundled reference BLAS, measured
#: on the demo and a 25M-parameter Qwen3 (x86_64, 2 cores; docs/benchmarks.md).
OPENBLAS_SPEEDUP = "2.5-13x (more for larger models)"
LINUX_RESERVE = 0.10  # share of the RAM left to the system and other programs
CUDA_RESERVE = 0.05
MAC_FALLBACK_SHARE = 0.75  # of unified memory, when Metal reports no working-set size


@dataclass(frozen=True)
class Environment:
    """What ``scu-tui check`` reports about the machine."""

    backend: str  # "Metal", "CUDA" or "CPU"
    device: str
    blas: str
    blas_missing: bool  # Linux CPU with the bundled reference BLAS: OpenBLAS would help
    versions: dict[str, str]
    platform: str
    memory_kind: str  # "unified memory", "GPU memory" or "RAM"
    memory_total: int  # bytes
    memory_available: int | None  # bytes free now (RAM only), when known
    memory_limit: int  # the budget a run gets, bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": self.device,
            "blas": self.blas,
            "versions": self.versions,
            "platform": self.platform,
            "memory_kind": self.memory_kind,
            "memory_total_gb": self.memory_total / 1e9,
            "memory_available_gb": (
                None if self.memory_available is None else self.memory_available / 1e9
            ),
            "memory_limit_gb": self.memory_limit / 1e9,
        }


def _versions() -> dict[str, str]:
    from scu_tui import __version__

    found = {"python": platform.python_version(), "scu-tui": __version__}
    for dist in ("mlx", "mlx-lm"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found


def backend() -> str:
    """``Metal``, ``CUDA`` or ``CPU``: where MLX's default device computes."""
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        return "CPU"
    if mx.metal.is_available():
        return "Metal"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "CUDA"
    return "GPU"


def _device_info() -> dict[str, Any]:
    import mlx.core as mx

    try:
        return dict(mx.device_info())
    except (AttributeError, RuntimeError):
        return {}


def _meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return {}
    return parse_kb_fields(text)


def _cgroup_limit() -> int | None:
    """The container's memory limit (cgroup v2, then v1), when one is set."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 reports "no limit" as a huge number
            return int(raw)
    return None


def _ram_total() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return _meminfo().get("MemTotal", 0)


def _memory() -> tuple[str, int, int | None, int]:
    """``(kind, total, available now, budget)`` in bytes for the current backend."""
    kind = backend()
    info = _device_info()
    if kind == "Metal":
        total = int(info.get("memory_size", 0)) or _ram_total()
        working_set = int(info.get("max_recommended_working_set_size", 0))
        return "unified memory", total, None, working_set or int(total * MAC_FALLBACK_SHARE)
    if kind in ("CUDA", "GPU"):
        total = int(info.get("total_memory", 0) or info.get("memory_size", 0))
        if total:
            return "GPU memory", total, None, int(total * (1 - CUDA_RESERVE))
    total = _ram_total()
    cgroup = _cgroup_limit()
    if cgroup is not None:
        total = min(total, cgroup)
    available = _meminfo().get("MemAvailable")
    return "RAM", total, available, int(total * (1 - LINUX_RESERVE))


def memory_limit_bytes() -> int:
    """The memory a run may use on this machine before it should stop and say so."""
    return _memory()[3]


def _blas(kind: str) -> tuple[str, bool]:
    from scu_tui import blas

    if kind == "Metal":
        return "Accelerate (Metal for the model)", False
    if kind == "CUDA":
        return "cuBLAS", False
    if sys.platform == "darwin":
        return "Accelerate", False
    if blas.active:
        return f"system OpenBLAS ({blas.active})", False
    missing = blas.reason.startswith("no system OpenBLAS")
    return f"MLX's bundled BLAS ({blas.reason})", missing


def detect() -> Environment:
    """Everything ``scu-tui check`` says about the machine (imports MLX)."""
    kind = backend()
    info = _device_info()
    memory_kind, total, available, limit = _memory()
    blas_line, missing = _blas(kind)
    device = str(info.get("device_name", "") or platform.processor() or platform.machine())
    return Environment(
        backend=kind,
        device=device,
        blas=blas_line,
        blas_missing=missing,
        versions=_versions(),
        platform=f"{platform.system()} {platform.machine()}, {os.cpu_count() or '?'} CPU cores",
        memory_kind=memory_kind,
        memory_total=total,
        memory_available=available,
        memory_limit=limit,
    )
