"""The effect check's statistics: its verdict on an applied move (clearly worse, and
reverted; helped; or no effect told from the noise) and the median with its standard
error that it compares. The controller judges each applied move with them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from scu_tui.control.divergence import MAD_TO_SIGMA, MEDIAN_SE_FACTOR
from scu_tui.control.signals import json_safe

#: The effect check: a loss is "clearly worse" when its median rose by more than EFFECT_Z
#: standard errors and by more than one period's target improvement.
EFFECT_Z = 3.0
#: Losses after an action needed before its effect is judged (and at least half a period).
EFFECT_MIN_POINTS = 8
#: The effect check: a move "helped" when its metric fell by more than HELP_Z standard
#: errors (and at all).
HELP_Z = 2.0


@dataclass(frozen=True)
class Effect:
    """The effect check's verdict on one applied action."""

    worse: bool
    before: float
    after: float
    what: str  # "Loss" | "Validation loss"
    helped: bool = False

    @property
    def verdict(self) -> str:
        """worse (reverted), helped (the rule may act again), flat (backed off)."""
        return "worse" if self.worse else "helped" if self.helped else "flat"

    def to_dict(self, step: int, metric: str | None) -> dict[str, Any]:
        change = (self.after - self.before) / abs(self.before) if self.before else math.nan
        return dict(
            json_safe(
                {
                    "step": step,
                    "metric": metric,
                    "before": self.before,
                    "after": self.after,
                    "change": change,
                    "verdict": self.verdict,
                }
            )
        )


def segment_stats(values: Iterable[float]) -> tuple[float, float]:
    """(median, standard error of the median) of the finite values."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return math.nan, math.nan
    median = float(np.median(data))
    mad = float(np.median(np.abs(data - median)))
    return median, MEDIAN_SE_FACTOR * MAD_TO_SIGMA * mad / math.sqrt(data.size)
