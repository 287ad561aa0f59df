"""Real steps on this machine: the memory calibration and the timing.

Every step runs through the run's own ``Trainer`` (its compiled step, optimizer and
guard), on the model the run would load, so what is measured is what the run will do:

- memory: the peak of one step at batch size 1 and a few sequence lengths, and one at
  the run's batch size and the widest length, fitted by ``fixed + B*(a*W + b*W^2)`` (the
  memory model's form), for the configured gradient checkpointing and the other choice;
- time: steady-state seconds of a micro-batch of the run's batch size at the smallest,
  a middle and the largest width its data produces (each width compiles once first), then
  the mean over the run's real width distribution; plus a timed evaluation batch.

The model's adapters are trained by the probe: a check throws the model away afterwards.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from scu_tui.check.data_report import DataReport
from scu_tui.check.memory import Coefficients, estimate, fitted, from_config
from scu_tui.check.model_facts import ModelFacts
from scu_tui.config import Settings
from scu_tui.training.data import PAD_TO, BatchStream, DataBundle, Split, length_sorted_batches
from scu_tui.training.trainer import Trainer, use_grad_checkpoint

SAFE_SHARE = 0.85  # a probe step runs only when its estimate is below this share of the budget
MIN_TIMED_SECONDS = 1.0  # time at least this long per width (and at least three steps)
MAX_TIMED_STEPS = 8


@dataclass
class Timing:
    """Seconds per optimizer step, measured at a few widths and averaged over the data."""

    seconds_per_step: float
    per_width: dict[int, float]  # micro-batch seconds by padded width (steady state)
    compile_seconds: float  # mean extra time of a width's first step
    eval_batch_seconds: float
    skipped: list[int] = field(default_factory=list)  # widths not timed: would not fit


def _disable_grad_checkpoint(model: nn.Module) -> None:
    """Undo ``use_grad_checkpoint``: the blocks go back to their own class."""
    for layer in getattr(model, "layers", []):
        cls = type(layer)
        if getattr(cls, "_scu_checkpointed", False):
            layer.__class__ = cls.__mro__[1]


def _token_pool(data: DataBundle, size: int) -> list[int]:
    """Real tokens from the training rows, repeated to ``size``."""
    pool: list[int] = []
    for tokens, _ in data.train.sequences:
        pool.extend(tokens)
        if len(pool) >= size:
            break
    while len(pool) < size:
        pool.extend(pool or [0])
    return pool[:size]


def _uniform_split(data: DataBundle, rows: int, width: int, max_seq_length: int) -> Split:
    """``rows`` rows that all pad to ``width`` (loss on every position)."""
    length = width if width >= max_seq_length else width - 1
    pool = _token_pool(data, length)
    return Split("probe", "probe", [(list(pool), 0) for _ in range(rows)])


def calibration_widths(max_seq_length: int) -> list[int]:
    """Widths the run's batching can produce, up to 257 tokens: 33, 65, 129, 257 and
    ``max_seq_length`` (a batch is padded to one plus a multiple of 32, or the cap)."""
    top = min(max_seq_length, 8 * PAD_TO + 1)
    return [w for w in (PAD_TO + 1, 2 * PAD_TO + 1, 4 * PAD_TO + 1) if w < top] + [top]


class Probe:
    """Runs the measurements on one loaded model with its adapters."""

    def __init__(
        self,
        model: nn.Module,
        data: DataBundle,
        settings: Settings,
        facts: ModelFacts,
        limit: float,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.model = model
        self.data = data
        self.settings = settings
        self.facts = facts
        self.limit = limit
        self.log = log
        self.trainer: Trainer | None = None

    # --- trainers ---------------------------------------------------------------------

    def _trainer(self, grad_checkpoint: bool) -> Trainer:
        """A fresh ``Trainer`` (accumulation 1) with checkpointing on or off."""
        self.trainer = None
        gc.collect()
        if not grad_checkpoint:
            _disable_grad_checkpoint(self.model)
        settings = self.settings.replace(
            {
                "training.grad_checkpoint": grad_checkpoint,
                "training.gradient_accumulation_steps": 1,
                "training.warmup_steps": 0,
            },
            source="check",
        )
        if grad_checkpoint:
            use_grad_checkpoint(self.model)
        self.trainer = Trainer(self.model, self.data, settings)
        return self.trainer

    def _feed(self, trainer: Trainer, split: Split, batch: int) -> None:
        trainer.stream = BatchStream(split, batch, self.settings.data.max_seq_length, 0)

    # --- memory ---------------------------------------------------------------------------

    def calibration_widths(self) -> list[int]:
        return calibration_widths(self.settings.data.max_seq_length)

    def _peak(self, trainer: Trainer, rows: int, width: int) -> float:
        """The peak bytes of one step on ``rows`` rows padded to ``width`` (after a first
        step that compiles for the shape)."""
        split = _uniform_split(self.data, rows, width, self.settings.data.max_seq_length)
        self._feed(trainer, split, rows)
        trainer.train_step()
        mx.reset_peak_memory()
        trainer.train_step()
        return float(mx.get_peak_memory())

    def calibrate(self, grad_checkpoint: bool) -> Coefficients:
        """Fit ``peak(B, W) = fixed + B*(a*W + b*W^2)`` from measured steps.

        Steps at batch size 1 and a few widths give the shape in ``W``; one more step at
        the run's batch size (or 2, or none when neither fits) and the widest width pins
        the per-row cost, so ``fixed`` is measured by the contrast of two batch sizes
        instead of extrapolated to ``W = 0`` from a curve (a few % of noise in each peak
        moved that extrapolation by more than the safety margin). With fewer than three
        widths (a short ``max_seq_length``), the config-derived terms fill in what cannot
        be fitted.
        """
        trainer = self._trainer(grad_checkpoint)
        prior = from_config(self.facts, grad_checkpoint)
        widths = self.calibration_widths()
        points = [(1, width, self._peak(trainer, 1, width)) for width in widths]
        fixed, per_token, per_sq = self._fit(points, prior)
        top = widths[-1]
        first = fitted(self.facts, grad_checkpoint, fixed, per_token, per_sq)
        rows = self._contrast_rows(first, grad_checkpoint, top)
        if rows > 1:
            points.append((rows, top, self._peak(trainer, rows, top)))
            fixed, per_token, per_sq = self._fit(points, prior)
        self.log(
            f"memory probe ({'with' if grad_checkpoint else 'without'} checkpointing): "
            + ", ".join(f"{b} x {w} tok {p / 1e6:.1f} MB" for b, w, p in points)
        )
        return fitted(self.facts, grad_checkpoint, fixed, per_token, per_sq)

    def _contrast_rows(self, coeffs: Coefficients, grad_checkpoint: bool, top: int) -> int:
        """The batch size of the contrast step at width ``top``: the run's, else 2, else 1
        (none)."""
        for rows in (self.settings.training.batch_size, 2):
            need = estimate(self.facts, coeffs, rows, top, grad_checkpoint=grad_checkpoint).total
            if rows > 1 and need <= SAFE_SHARE * self.limit:
                return rows
        return 1

    @staticmethod
    def _fit(
        points: list[tuple[int, int, float]], prior: Coefficients
    ) -> tuple[float, float, float]:
        """``(fixed, per_token, per_token_sq)`` from ``(rows, width, peak)`` points; never
        under a measured peak, never a negative slope."""
        b = np.array([p[0] for p in points], dtype=float)
        w = np.array([p[1] for p in points], dtype=float)
        y = np.array([p[2] for p in points], dtype=float)
        per_token = prior.per_token_layers + prior.per_token_vocab
        per_sq = prior.per_token_sq
        distinct = len(set(w))  # widths
        if distinct >= 3:
            design = np.stack([np.ones_like(w), b * w, b * w * w], axis=1)
            fixed, per_token, per_sq = (float(v) for v in np.linalg.lstsq(design, y, rcond=None)[0])
        if distinct < 3 or per_sq < 0:
            per_sq = prior.per_token_sq if distinct < 3 else 0.0
            rest = y - per_sq * b * w * w
            if len(set(zip(b, w, strict=True))) >= 2:
                design = np.stack([np.ones_like(w), b * w], axis=1)
                fixed, per_token = (float(v) for v in np.linalg.lstsq(design, rest, rcond=None)[0])
        per_token = max(per_token, 0.0)
        fixed = float(np.max(y - b * (per_token * w + per_sq * w * w)))
        return fixed, per_token, per_sq

    # --- time -----------------------------------------------------------------------------

    def _timed_steps(self, trainer: Trainer) -> tuple[float, float]:
        """``(first step, steady step)`` seconds."""
        tic = time.perf_counter()
        trainer.train_step()
        first = time.perf_counter() - tic
        times: list[float] = []
        while len(times) < 3 or (sum(times) < MIN_TIMED_SECONDS and len(times) < MAX_TIMED_STEPS):
            tic = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - tic)
        return first, statistics.median(times)

    def time_steps(self, report: DataReport, coeffs: Coefficients) -> Timing | None:
        """Seconds per optimizer step over the run's width distribution (None: none fits)."""
        s = self.settings
        batch = s.training.batch_size
        gc_on = s.training.grad_checkpoint
        trainer = self._trainer(gc_on)
        widths = sorted(report.batch_widths)
        if not widths:
            return None
        chosen = sorted({widths[0], widths[len(widths) // 2], widths[-1]})
        rows_by_width = self._rows_by_width(batch)
        per_width: dict[int, float] = {}
        compile_extra: list[float] = []
        skipped: list[int] = []
        for width in chosen:
            need = estimate(self.facts, coeffs, batch, width, grad_checkpoint=gc_on).total
            if need > SAFE_SHARE * self.limit:
                skipped.append(width)
                continue
            rows = (
                rows_by_width.get(width)
                or _uniform_split(self.data, batch, width, s.data.max_seq_length).sequences
            )
            self._feed(trainer, Split("probe", "probe", rows), batch)
            first, steady = self._timed_steps(trainer)
            per_width[width] = steady
            compile_extra.append(max(0.0, first - steady))
            self.log(f"timed {batch} x {width} tokens: {steady * 1e3:.0f} ms per micro-batch")
        if not per_width:
            return None
        known = sorted(per_width)
        counts = report.batch_widths
        total = sum(counts.values())
        mean_micro = (
            sum(
                n * float(np.interp(w, known, [per_width[k] for k in known]))
                for w, n in counts.items()
            )
            / total
        )
        if skipped:  # widths above the timed ones: scale by tokens, a lower bound
            mean_micro = max(mean_micro, per_width[known[-1]] * max(skipped) / known[-1])
        eval_seconds = self._eval_batch_seconds(trainer)
        return Timing(
            seconds_per_step=mean_micro * s.training.gradient_accumulation_steps,
            per_width=per_width,
            compile_seconds=statistics.fmean(compile_extra) if compile_extra else 0.0,
            eval_batch_seconds=eval_seconds,
            skipped=skipped,
        )

    def _rows_by_width(self, batch: int) -> dict[int, list[tuple[list[int], int]]]:
        """One real batch's rows for each padded width of the training batches."""
        out: dict[int, list[tuple[list[int], int]]] = {}
        train = self.data.train
        max_len = self.settings.data.max_seq_length
        from scu_tui.check.data_report import batch_width

        for indices in length_sorted_batches(train, batch):
            rows = [train.sequences[i] for i in indices]
            out.setdefault(batch_width([len(t) for t, _ in rows], max_len), rows)
        return out

    def _eval_batch_seconds(self, trainer: Trainer) -> float:
        """Seconds of one validation batch (forward only, as the run evaluates)."""
        trainer.evaluate(limit=1)  # the first call builds the graph for its shape
        times = []
        for _ in range(3):
            tic = time.perf_counter()
            trainer.evaluate(limit=1)
            times.append(time.perf_counter() - tic)
        seconds = statistics.median(times)
        return seconds if math.isfinite(seconds) else 0.0

    def release(self) -> Any:
        """Drop the probe's trainer (its optimizer state) before the next user of memory."""
        self.trainer = None
        gc.collect()
        return None
