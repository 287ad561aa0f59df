"""Memory as the operating system sees it: the run's resident memory, its swap, the
machine's swap and what is still available.

MLX's own figures (active, cache, peak) count what MLX allocated; whether the machine
pages depends on what the system holds for the process. On Linux that is the resident set
(``VmRSS``, its high-water mark ``VmHWM``) and the process's pages in swap (``VmSwap``), from
``/proc/self/status``; the machine's swap and available memory come from ``/proc/meminfo``.
On macOS it is the physical footprint (``proc_pid_rusage``), which counts Metal's buffers
and the compressed and swapped pages too, and the machine's swap (``sysctl vm.swapusage``);
macOS does not say how much of one process is in swap.

No MLX here. Every reading goes through a source that a test can replace with its own text
or bytes, so the paths this machine cannot take (macOS, a machine that swaps) are tested
with injected readings.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9

#: ``proc_pid_rusage`` flavor 0 (``struct rusage_info_v0``): a 16-byte UUID, then unsigned
#: 64-bit counters; the resident size is the 7th, the physical footprint the 8th.
RUSAGE_INFO_V0 = 0
RUSAGE_RESIDENT_OFFSET = 16 + 6 * 8
RUSAGE_FOOTPRINT_OFFSET = 16 + 7 * 8
RUSAGE_BUFFER = 512  # larger than any rusage_info version
#: ``struct xsw_usage`` (``vm.swapusage``): total, available, used as unsigned 64-bit,
#: then the page size and whether swap is encrypted.
XSW_USAGE = struct.Struct("=QQQIi")


@dataclass(frozen=True)
class OsMemory:
    """One reading, in bytes; None where this system does not say."""

    resident: int | None  # the process now: VmRSS (Linux), physical footprint (macOS)
    resident_peak: int | None  # its high-water mark: VmHWM (Linux); None on macOS
    resident_source: str  # which figure ``resident`` is: "VmRSS" or "phys_footprint"
    swap: int | None  # the process's own pages in swap: VmSwap (Linux only)
    system_swap: int | None  # swap in use on the machine
    system_swap_source: str  # "/proc/meminfo" or "vm.swapusage"
    available: int | None  # memory the machine can still give without swapping (Linux)

    def event_fields(self) -> dict[str, Any]:
        """The reading as a step event's fields (NaN where unknown)."""
        return {
            "rss_gb": _gb(self.resident),
            "rss_peak_gb": _gb(self.resident_peak),
            "rss_source": self.resident_source,
            "swap_gb": _gb(self.swap),
            "system_swap_gb": _gb(self.system_swap),
            "available_gb": _gb(self.available),
        }


NO_READING = OsMemory(None, None, "", None, None, "", None)


def _gb(value: int | None) -> float:
    return math.nan if value is None else value / GB


# --- Linux -----------------------------------------------------------------------------


def parse_kb_fields(text: str) -> dict[str, int]:
    """``Key:  123 kB`` lines (``/proc/self/status``, ``/proc/meminfo``) in bytes."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def linux_reading(status_text: str, meminfo_text: str) -> OsMemory:
    """A reading from the text of ``/proc/self/status`` and ``/proc/meminfo``."""
    status, meminfo = parse_kb_fields(status_text), parse_kb_fields(meminfo_text)
    system_swap = None
    if "SwapTotal" in meminfo and "SwapFree" in meminfo:
        system_swap = max(0, meminfo["SwapTotal"] - meminfo["SwapFree"])
    return OsMemory(
        resident=status.get("VmRSS"),
        resident_peak=status.get("VmHWM"),
        resident_source="VmRSS" if "VmRSS" in status else "",
        swap=status.get("VmSwap"),
        system_swap=system_swap,
        system_swap_source="/proc/meminfo" if system_swap is not None else "",
        available=meminfo.get("MemAvailable"),
    )


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class LinuxSource:
    """Where a Linux reading comes from (a test passes its own text)."""

    status: Callable[[], str] = lambda: _read_text("/proc/self/status")
    meminfo: Callable[[], str] = lambda: _read_text("/proc/meminfo")

    def read(self) -> OsMemory:
        return linux_reading(self.status(), self.meminfo())


# --- macOS -----------------------------------------------------------------------------


def footprint_from_rusage(raw: bytes) -> tuple[int, int] | None:
    """``(resident size, physical footprint)`` from a ``rusage_info_v0`` buffer."""
    if len(raw) < RUSAGE_FOOTPRINT_OFFSET + 8:
        return None
    (resident,) = struct.unpack_from("=Q", raw, RUSAGE_RESIDENT_OFFSET)
    (footprint,) = struct.unpack_from("=Q", raw, RUSAGE_FOOTPRINT_OFFSET)
    return int(resident), int(footprint)


def swap_used_from_xsw(raw: bytes) -> int | None:
    """Swap in use from a ``struct xsw_usage`` (``sysctl vm.swapusage``)."""
    if len(raw) < XSW_USAGE.size:
        return None
    _total, _available, used, _page, _encrypted = XSW_USAGE.unpack_from(raw)
    return int(used)


def mac_reading(rusage: bytes | None, swapusage: bytes | None) -> OsMemory:
    """A reading from the raw ``proc_pid_rusage`` and ``vm.swapusage`` buffers."""
    sizes = footprint_from_rusage(rusage) if rusage is not None else None
    system_swap = swap_used_from_xsw(swapusage) if swapusage is not None else None
    return OsMemory(
        resident=sizes[1] if sizes is not None else None,
        resident_peak=None,
        resident_source="phys_footprint" if sizes is not None else "",
        swap=None,
        system_swap=system_swap,
        system_swap_source="vm.swapusage" if system_swap is not None else "",
        available=None,
    )


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c") or ctypes.util.find_library("System")
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def _mac_rusage() -> bytes | None:
    libc = _libc()
    if libc is None or not hasattr(libc, "proc_pid_rusage"):
        return None
    buffer = ctypes.create_string_buffer(RUSAGE_BUFFER)
    if libc.proc_pid_rusage(os.getpid(), RUSAGE_INFO_V0, buffer) != 0:
        return None
    return buffer.raw


def _mac_swapusage() -> bytes | None:
    libc = _libc()
    if libc is None or not hasattr(libc, "sysctlbyname"):
        return None
    buffer = ctypes.create_string_buffer(XSW_USAGE.size)
    size = ctypes.c_size_t(XSW_USAGE.size)
    if libc.sysctlbyname(b"vm.swapusage", buffer, ctypes.byref(size), None, 0) != 0:
        return None
    return buffer.raw[: size.value]


@dataclass(frozen=True)
class MacSource:
    """Where a macOS reading comes from (a test passes its own bytes)."""

    rusage: Callable[[], bytes | None] = _mac_rusage
    swapusage: Callable[[], bytes | None] = _mac_swapusage

    def read(self) -> OsMemory:
        return mac_reading(self.rusage(), self.swapusage())


def default_source() -> LinuxSource | MacSource | None:
    """The source for this system (None where it has neither ``/proc`` nor macOS's calls)."""
    if sys.platform == "darwin":
        return MacSource()
    if Path("/proc/self/status").exists():
        return LinuxSource()
    return None


def read_os_memory(source: LinuxSource | MacSource | None = None) -> OsMemory:
    """The reading now; :data:`NO_READING` where the system says nothing. Never raises:
    a reading is a report, not a reason for a run to fail."""
    source = source if source is not None else default_source()
    if source is None:
        return NO_READING
    with contextlib.suppress(OSError, ValueError, AttributeError, struct.error):
        return source.read()
    return NO_READING
