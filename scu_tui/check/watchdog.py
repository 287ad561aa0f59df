"""The memory watchdog: pause a run with a checkpoint before the machine runs out.

Running out of memory hours into a fine-tune is the worst way to learn it did not fit: on
a Mac the system starts paging and steps slow to a crawl, on Linux the kernel kills the
process. The run asks :meth:`MemoryWatchdog.check` after each step with MLX's peak memory;
when it nears the budget the answer is the reason to pause, once per level, so a person
who resumes on purpose is not stopped again at the same level.
"""

from __future__ import annotations

from dataclasses import dataclass

WARN_SHARE = 0.92  # pause when the peak reaches this share of the budget
REARM_SHARE = 0.04  # after a pause, the next one needs the peak this much higher


@dataclass
class MemoryWatchdog:
    """``check(peak_bytes)`` returns why the run should pause, or None."""

    limit_bytes: int
    warn_share: float = WARN_SHARE
    rearm_share: float = REARM_SHARE

    def __post_init__(self) -> None:
        self.mark = self.warn_share * self.limit_bytes
        self.fired = 0

    def check(self, peak_bytes: float) -> str | None:
        """The reason to pause when ``peak_bytes`` crossed the current mark, else None."""
        if self.limit_bytes <= 0 or peak_bytes < self.mark:
            return None
        self.fired += 1
        self.mark = peak_bytes + self.rearm_share * self.limit_bytes
        share = peak_bytes / self.limit_bytes
        return (
            f"peak memory {peak_bytes / 1e9:.2f} GB is {share:.0%} of the "
            f"{self.limit_bytes / 1e9:.1f} GB this machine gives a run: paused with a "
            "checkpoint before it runs out (lower training.batch_size or "
            "data.max_seq_length, or turn on training.grad_checkpoint, then --resume; "
            "`scu-tui check` estimates each)"
        )
