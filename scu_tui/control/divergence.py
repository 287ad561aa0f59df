"""The one divergence detector: non-finite values or a loss blow-up, judged every step.

The S-SCU's other rules wait for a control period; a blow-up cannot. Medians, not single
losses: batches of different content differ several-fold in loss on their own, so a
blow-up is the median of the newest :data:`RECENT` losses above :data:`FACTOR` times the
median of the :data:`HISTORY` before them.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FACTOR = 4.0
RECENT = 5
HISTORY = 50
#: Losses before the newest RECENT needed before a blow-up can be judged.
MIN_HISTORY = HISTORY // 2


@dataclass(frozen=True)
class Divergence:
    """What the detector saw on one step."""

    nonfinite: bool  # a non-finite loss or gradient norm (the update was skipped)
    ratio: float  # median of the newest losses / median of those before (nan: non-finite)

    @property
    def what(self) -> str:
        if self.nonfinite:
            return "Non-finite loss or gradients"
        return f"Loss blow-up ({self.ratio:.1f}x the median of the steps before)"

    def evidence(self) -> dict[str, Any]:
        return {"nonfinite": self.nonfinite, "loss_ratio": self.ratio}


def blow_up_ratio(losses: Sequence[float]) -> float | None:
    """Median of the newest :data:`RECENT` finite losses over the median of up to
    :data:`HISTORY` before them; None with too little history to judge."""
    finite = [x for x in losses if math.isfinite(x)]
    recent, before = finite[-RECENT:], finite[-RECENT - HISTORY : -RECENT]
    if len(recent) < RECENT or len(before) < MIN_HISTORY:
        return None
    base = statistics.median(before)
    if base <= 0:
        return None
    return statistics.median(recent) / base


class DivergenceDetector:
    """Feeds on every step; says when training diverged. Forgets after each detection and
    after a rollback, so one blow-up is reported once and the abandoned steps are no
    baseline."""

    def __init__(self) -> None:
        self._losses: deque[float] = deque(maxlen=RECENT + HISTORY)

    def observe(self, loss: float, grad_norm: float, skipped: bool = False) -> Divergence | None:
        if skipped or not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.forget()
            return Divergence(True, math.nan)
        self._losses.append(float(loss))
        ratio = blow_up_ratio(self._losses)
        if ratio is not None and ratio > FACTOR:
            self.forget()
            return Divergence(False, ratio)
        return None

    def forget(self) -> None:
        self._losses.clear()

    def state(self) -> list[float]:
        return list(self._losses)

    def load_state(self, losses: Sequence[float] | Mapping[str, Any]) -> None:
        self._losses = deque((float(x) for x in losses), maxlen=RECENT + HISTORY)
