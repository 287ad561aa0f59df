"""The LR range test: a starting learning rate from evidence instead of a guess.

A short run on a copy of the adapters in which the learning rate grows exponentially,
one step at a time, from ``LR_MIN`` to ``LR_MAX``; the loss, smoothed, first falls faster
and faster, then flattens and blows up. The suggestion is the rate
of a tenth of the rate where the smoothed loss is lowest: high enough to learn fast, a
decade below where the run starts to diverge. The adapters and optimizer state are restored
afterwards, so a caller may keep training from where it was.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from scu_tui.config import Settings
from scu_tui.protocol import Knob
from scu_tui.training.data import DataBundle
from scu_tui.training.trainer import Trainer

LR_MIN = 1e-6
LR_MAX = 1.0
STEPS = 100
SMOOTHING = 0.9  # exponential moving average of the loss, bias-corrected
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum
SKIP_START = 5  # the first smoothed values carry little information
SUGGEST_DIVISOR = 10.0


@dataclass(frozen=True)
class LrCurve:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    min_loss_lr: float | None
    stopped: str  # why the test ended

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggested_learning_rate": self.suggestion,
            "min_loss_learning_rate": self.min_loss_lr,
            "stopped": self.stopped,
            "curve": [
                {"lr": lr, "loss": loss, "smoothed": sm}
                for lr, loss, sm in zip(self.lrs, self.losses, self.smoothed, strict=True)
            ],
        }


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """``(suggested LR, LR at the smoothed loss's minimum)`` of a loss-vs-LR curve.

    The suggestion is a tenth of the minimum's rate (Leslie Smith's rule of thumb): the
    loss still falls fast there, and it is a decade below where it turns and blows up.
    The first points are skipped: the moving average has seen too few losses there.
    """
    if len(lrs) < SKIP_START + 3:
        return None, None
    y = np.array(smoothed[SKIP_START:], dtype=float)
    if not np.isfinite(y).any():
        return None, None
    low = SKIP_START + int(np.argmin(np.where(np.isfinite(y), y, np.inf)))
    min_lr = float(lrs[low])
    return min_lr / SUGGEST_DIVISOR, min_lr


def lr_range_test(
    model: nn.Module,
    data: DataBundle,
    settings: Settings,
    *,
    lr_min: float = LR_MIN,
    lr_max: float = LR_MAX,
    steps: int = STEPS,
) -> LrCurve:
    """Run the range test through the run's ``Trainer`` and restore the adapters after."""
    saved = tree_map(lambda a: mx.array(a), model.trainable_parameters())
    mx.eval(saved)
    probe = settings.replace(
        {
            "training.learning_rate": lr_min,
            "training.schedule": "constant",
            "training.warmup_steps": 0,
            "training.max_steps": max(steps, 1),
        },
        source="find-lr",
    )
    trainer = Trainer(model, data, probe)
    factor = (lr_max / lr_min) ** (1 / max(steps - 1, 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
    stopped = f"reached {lr_max:g}"
    try:
        for i in range(steps):
            trainer.set_knob(Knob.LR_MULTIPLIER, factor**i)
            result = trainer.train_step()
            lrs.append(result.lr)
            losses.append(result.loss)
            if not math.isfinite(result.loss):
                smoothed.append(math.nan)
                stopped = f"loss not finite at {result.lr:.2g}"
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * result.loss
            value = average / (1 - SMOOTHING ** (i + 1))
            smoothed.append(value)
            best = min(best, value)
            if i > SKIP_START and value > DIVERGED * best:
                stopped = f"loss diverged at {result.lr:.2g}"
                break
    finally:
        model.update(saved)
        mx.eval(model.trainable_parameters())
    suggestion, min_lr = suggest(lrs, smoothed)
    return LrCurve(lrs, losses, smoothed, suggestion, min_lr, stopped)


def plot(curve: LrCurve, width: int = 78, height: int = 16) -> str:
    """The smoothed loss against log10 of the LR, the suggestion marked by a vertical line."""
    import plotext as plt

    points = [
        (math.log10(lr), y)
        for lr, y in zip(curve.lrs, curve.smoothed, strict=True)
        if math.isfinite(y) and lr > 0
    ]
    if len(points) < 2:
        return ""
    xs, ys = (list(v) for v in zip(*points, strict=True))
    fig: Any = plt.figure
    fig.clear()
    fig.plot_size(width, height)
    fig.theme("colorless")
    fig.title("smoothed loss vs log10(learning rate)")
    line = fig.signal(xs, ys, marker=plt.marker("braille"))
    line.lines()
    fig.draw(line)
    if curve.suggestion is not None:
        x = math.log10(curve.suggestion)
        mark = fig.signal([x, x], [min(ys), max(ys)], marker=plt.marker("│"))
        mark.lines()
        fig.draw(mark)
    text = str(fig.build().string())
    fig.clear()
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
