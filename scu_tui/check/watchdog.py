"""The memory watchdog: pause a run with a checkpoint before the machine pages.

Running out of memory hours into a fine-tune is the worst way to learn it did not fit: on
a Mac the system starts paging and steps slow to a crawl, on Linux the kernel swaps, then
kills the process. The run asks :meth:`MemoryWatchdog.check` after each step with MLX's
peak memory and the operating system's reading (:mod:`scu_tui.memory_readings`).

What decides whether the machine pages is what the system holds for the process, not what
MLX counts: on Linux the resident memory's high-water mark (``VmHWM``), on a Mac the
physical footprint (which counts Metal's buffers); on a CUDA GPU, MLX's peak against the
GPU's memory. Each message names the figure it used. Pages of this run moving to swap
(``VmSwap`` growing) pause it too: it is already paging. Where the system cannot say how
much of one process is in swap (macOS), a growing machine swap is a warning.

Each alarm fires once per level, so a person who resumes on purpose is not stopped again
at the same level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scu_tui.memory_readings import GB, NO_READING, OsMemory

WARN_SHARE = 0.92  # pause when the figure reaches this share of the budget
REARM_SHARE = 0.04  # after a pause, the next one needs the figure this much higher
SWAP_STEP = 256 * 2**20  # bytes of new swap that count as paging (and re-arm the alarm)
HOW_TO_FIT = (
    "lower training.batch_size or data.max_seq_length, or turn on "
    "training.grad_checkpoint, then --resume; `scu-tui check` estimates each"
)


@dataclass(frozen=True)
class MemoryAlarm:
    """What the watchdog saw: the words for the user, and whether the run should pause."""

    text: str
    pause: bool


@dataclass
class MemoryWatchdog:
    """``check(peak_bytes, reading)`` returns an alarm, or None while all is well."""

    limit_bytes: int
    os_figure: bool = True  # the system's figure decides (CPU, Metal); False: MLX's (CUDA)
    warn_share: float = WARN_SHARE
    rearm_share: float = REARM_SHARE
    swap_step: int = SWAP_STEP
    #: the readings folded so far, for the summary
    first: OsMemory | None = field(default=None, init=False)
    last: OsMemory = field(default=NO_READING, init=False)
    resident_peak: int = field(default=0, init=False)
    swap_peak: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.mark = self.warn_share * self.limit_bytes
        self.fired = 0
        self.swap_mark: int | None = None
        self.system_swap_mark: int | None = None

    def figure(self, peak_bytes: float, reading: OsMemory) -> tuple[str, float]:
        """``(name, bytes)`` of the figure that decides whether the machine pages."""
        if self.os_figure and reading.resident is not None:
            if reading.resident_peak is not None and reading.resident_peak >= reading.resident:
                return "peak resident memory (VmHWM)", float(reading.resident_peak)
            if reading.resident_source == "phys_footprint":
                return "physical footprint (phys_footprint)", float(reading.resident)
            return f"resident memory ({reading.resident_source})", float(reading.resident)
        return "MLX's peak memory", float(peak_bytes)

    def check(self, peak_bytes: float, reading: OsMemory = NO_READING) -> MemoryAlarm | None:
        """The alarm for this step's figures, or None."""
        self._fold(reading)
        return self._swapping(reading) or self._near_budget(peak_bytes, reading)

    def _fold(self, reading: OsMemory) -> None:
        if self.first is None:
            self.first = reading
            if reading.swap is not None:
                self.swap_mark = reading.swap + self.swap_step
            if reading.system_swap is not None:
                self.system_swap_mark = reading.system_swap + self.swap_step
        self.last = reading
        self.resident_peak = max(
            self.resident_peak, reading.resident or 0, reading.resident_peak or 0
        )
        self.swap_peak = max(self.swap_peak, reading.swap or 0)

    def _near_budget(self, peak_bytes: float, reading: OsMemory) -> MemoryAlarm | None:
        name, value = self.figure(peak_bytes, reading)
        if self.limit_bytes <= 0 or value < self.mark:
            return None
        self.fired += 1
        self.mark = value + self.rearm_share * self.limit_bytes
        share = value / self.limit_bytes
        return MemoryAlarm(
            f"{name} {value / GB:.2f} GB is {share:.0%} of the {self.limit_bytes / GB:.1f} GB "
            f"this machine gives a run: paused with a checkpoint before it runs out "
            f"({HOW_TO_FIT})",
            pause=True,
        )

    def _swapping(self, reading: OsMemory) -> MemoryAlarm | None:
        if reading.swap is not None and self.swap_mark is not None:
            if reading.swap < self.swap_mark:
                return None
            self.fired += 1
            self.swap_mark = reading.swap + self.swap_step
            start = self.first.swap if self.first is not None and self.first.swap else 0
            return MemoryAlarm(
                f"this run is swapping: {reading.swap / GB:.2f} GB of it is in swap "
                f"(VmSwap; {start / GB:.2f} GB at its start), so every step waits on the "
                f"disk: paused with a checkpoint (close other programs, or {HOW_TO_FIT})",
                pause=True,
            )
        if reading.system_swap is None or self.system_swap_mark is None:
            return None
        if reading.system_swap < self.system_swap_mark:
            return None
        self.system_swap_mark = reading.system_swap + self.swap_step
        first_swap = self.first.system_swap if self.first is not None else None
        resident = (
            f"; this run's {reading.resident_source} is {reading.resident / GB:.2f} GB"
            if reading.resident is not None
            else ""
        )
        return MemoryAlarm(
            f"the machine is swapping: swap in use grew from {(first_swap or 0) / GB:.2f} to "
            f"{reading.system_swap / GB:.2f} GB since the run started "
            f"({reading.system_swap_source}{resident}); if steps slow down, close other "
            f"programs, or {HOW_TO_FIT}",
            pause=False,
        )

    def summary(self) -> dict[str, Any]:
        """The system's side of the run's memory, for ``scu_training_summary.json``."""
        last, first = self.last, self.first or NO_READING
        fields = {k: _finite_or_none(v) for k, v in last.event_fields().items()}
        return {
            **fields,
            "rss_peak_gb": self.resident_peak / GB if self.resident_peak else None,
            "swap_peak_gb": self.swap_peak / GB if last.swap is not None else None,
            "system_swap_start_gb": _gb_or_none(first.system_swap),
            "watchdog_figure": self.figure(0.0, last)[0],
            "budget_gb": self.limit_bytes / GB,
        }


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _gb_or_none(value: int | None) -> float | None:
    return None if value is None else value / GB
