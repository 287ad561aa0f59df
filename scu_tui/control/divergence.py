"""The one divergence detector, judged every step: non-finite values, or damage.

The S-SCU's other rules wait for a control period; damage cannot. A run keeps recent
good states (its LoRA weights and optimizer state, :mod:`scu_tui.training.snapshots`) on
a cadence of their own; this module decides which to keep, when the run is damaged, and
which state to go back to. Plain numbers only: no MLX here.

Damage is judged against the run's own noise, with no threshold on any absolute
statistic: the loss is now clearly worse than at a state the run can return to. The
run's noise is the robust spread of its loss from one step to the next (the MAD of the
differences of the newest :data:`NOISE_WINDOW` losses, which a trend barely moves).
Each kept state has a *level*: the median of the losses in the window around it
(:data:`LEVEL_HALF` steps either side), with the standard error of that median for the
noise at the time. The *recent* level is the median of the newest
:data:`RECENT` losses. The run is damaged when, on :data:`CONFIRM` steps in a row, the
recent level sits above the best kept level by more than both :data:`DAMAGE_Z` standard
errors of the difference and :data:`DAMAGE_MARGIN` of the level. Medians, not single
losses: batches of different content differ several-fold in loss on their own.

It goes back to the newest kept state whose level cannot be told from the best kept
level (within one standard error of the difference): the last state before the damage,
neither step 0 nor a state the damage had already reached. The states kept are the
newest ones, the newest validation pass's (below) and the best one up to
:data:`BEST_SPAN` steps old: damage that came early and stayed (a run whose loss rose in
its first steps and held there) would otherwise push every state from before it out of
the window, leaving nothing better to be judged against or to go back to. Not older:
over a long run the level drifts with the stretch of data the batches come from, and the
lowest of hundreds of levels is a lucky stretch, not a state the run can return to (the
shipped demo over 3,000 steps went back 900 steps, and then twice more to one state
whose level no LR reached again).

A validation pass is judged too, against the pass before it, whose state is kept for
that comparison: damage when its loss rose by more than DAMAGE_MARGIN and by more than
DAMAGE_Z times the run's own wander from pass to pass (:func:`pass_noise`, once
MIN_NOISE_POINTS ratios of passes are known; the margin alone before: a healthy run's
first passes fall), and the run goes back to that pass's state (once per state). The
passes run on the same batches each time, so they carry none of the batch noise of the
training losses, only the weights' own wander (the shipped demo at its tuned LR, 20
steps apart: -5 % to +6 %); they see what the training losses cannot, such as a LR a few
times too high whose losses look no worse than before (the completions task at 3x its
tuned LR: the validation loss 1.35 at step 25, 1.71 at step 50, the training losses flat
and noisy).

A run can also be damaged without its loss rising: a LR far too high in the first steps
can throw the adapters somewhere flat, where the gradients all but vanish and the loss
stays near where it started (the tuning task json at 20x its tuned LR, seed 0: the
median gradient norm fell from 1.55 over the first 5 steps to 0.05-0.1 within 20 steps,
and the loss from 4.58 to 4.3, where it stayed; from 10x the same run fell to 0.9). No
kept state is clearly better to go back to, so the run keeps its *start* (the first
state it took) for its first :data:`START_SPAN` steps, and the gradients have
*collapsed* when, on :data:`CONFIRM` steps in a row, the median norm of the newest
:data:`RECENT` steps has fallen to under :data:`COLLAPSE` of the first steps' by more
than the loss has (norm ratio under COLLAPSE x loss ratio): the run goes back to its
start, with the LR x0.1 (``policy.COLLAPSE_LR_FACTOR``). A healthy run's gradients fall
no faster than its loss in that span (LoRA's grow as its B leaves zero): on the tuning
tasks without the S-SCU, from 0.1x to 3x their tuned LR, the norm ratio over the loss
ratio stayed at 1.06 or more over steps 15-50 in every run; from 10x up it fell to
0.01-0.46 in every run, each of them stuck at 39-96 % of its initial validation loss at
step 60 (:data:`COLLAPSE`).

The constants were chosen on the tuning tasks only (the demo at its tuned LR, where the
detector must stay silent for the whole run, and demo-hot, the demo at 10x its LR, where
it must fire) and checked on synthetic curves (tests/test_control_divergence.py).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Steps either side of a kept state whose losses make its level.
LEVEL_HALF = 5
#: The newest losses whose median is the run's recent level.
RECENT = 10
#: Standard errors of the difference by which the recent level must exceed the best kept
#: level. Chosen with CONFIRM on the demo (silent over 800 steps at its tuned LR, batch
#: noise 10-15 % of the loss), demo-hot (fires at step ~19, back to step 5, before the
#: rise) and synthetic curves: 3.0 missed fewer rises but rolled back 5 of 20 clean
#: 1,000-step runs with 15 % noise once; 3.5 misses 2 of 20 rises of +15 % at 3 % noise
#: and rolls back 3 of 20 of those clean runs once.
DAMAGE_Z = 3.5
#: ... and the smallest relative rise that counts, whatever the noise: a near-noiseless
#: run must not roll back for a rise nobody would call damage.
DAMAGE_MARGIN = 0.05
#: Consecutive steps on which the test must hold before the run goes back (damage stays;
#: a chance run of high losses passes).
CONFIRM = 5
#: A state whose level is within this many standard errors of the best kept level is as
#: good as the best: the newest such state is where a rollback goes.
TIE_Z = 1.0
#: Standard error of a median, in standard deviations times 1/sqrt(n), for normal data.
MEDIAN_SE_FACTOR = 1.2533
#: 1.4826 x MAD estimates a normal standard deviation.
MAD_TO_SIGMA = 1.4826
#: The batch noise is measured on the differences of the newest this many losses ...
NOISE_WINDOW = 50
#: ... and needs at least this many.
MIN_NOISE_POINTS = 4
#: The best kept state stays past the newest ones while it is at most this many steps
#: old: the span the run's noise is measured over, within which levels are compared on
#: like batches.
BEST_SPAN = NOISE_WINDOW
#: The run's first kept state stays for this many steps after it, as the state to go
#: back to when the gradients collapse.
START_SPAN = BEST_SPAN
#: The gradients have collapsed when the newest RECENT steps' median norm is under this
#: fraction of the first LEVEL_HALF steps' times the ratio of their median losses: the
#: gradient fell twice as far as the loss did. Read off the tuning tasks' runs without the
#: S-SCU (60 steps, seeds 0-3, LR x0.1 to x30; the bench's ``collapse_ratio``): at x3 and
#: below the lowest ratio over steps 15-50 was 1.06 and more in all 64 runs (LoRA's
#: gradients grow as B leaves zero); at x10 and above 0.01-0.46 in all 48, runs whose
#: validation loss at step 60 was still 39-96 % of the initial (x1: 8-44 %). 0.5 sits
#: under the one and over the other. (0.1, read off one collapsed run, missed most.)
COLLAPSE = 0.5
#: Losses remembered: enough for every kept state's window and the recent level.
HISTORY = 512
#: Validation passes remembered (the newest one with a kept state is compared against).
VAL_HISTORY = 8


@dataclass(frozen=True)
class Level:
    """A robust loss level: the median of a window and the standard error of that median."""

    median: float
    se: float
    points: int

    def to_list(self) -> list[float]:
        return [self.median, self.se, float(self.points)]


def noise_of(losses: Sequence[float]) -> float:
    """The run's batch-to-batch noise: a robust standard deviation of the loss from one
    step to the next (MAD of the differences / sqrt 2), which a trend barely moves (nan
    with fewer than MIN_NOISE_POINTS finite losses)."""
    data = np.asarray([x for x in losses if math.isfinite(x)], dtype=np.float64)
    if data.size < MIN_NOISE_POINTS:
        return math.nan
    diffs = np.diff(data)
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return MAD_TO_SIGMA * mad / math.sqrt(2.0)


def pass_noise(passes: Sequence[float]) -> float:
    """The run's own noise from one validation pass to the next: a robust standard
    deviation of the log-ratios of consecutive passes (MAD about their median, so a steady
    fall shifts them without widening them); nan with fewer than MIN_NOISE_POINTS ratios.
    Each pass runs on the same batches, so this is the weights' own wander between passes
    (the shipped demo at its tuned LR, 20 steps apart: -5 % to +6 %), not batch noise."""
    logs = [math.log(x) for x in passes if math.isfinite(x) and x > 0]
    if len(logs) < MIN_NOISE_POINTS + 1:
        return math.nan
    return math.sqrt(2.0) * noise_of(logs)  # a ratio of two passes: sqrt 2 of one's noise


def collapse_ratio(
    first: Sequence[tuple[float, float]], recent: Sequence[tuple[float, float]]
) -> float:
    """How far the gradients fell against the loss: the recent median gradient norm over
    the first steps', divided by the same ratio of their median losses (``(loss, norm)``
    pairs); nan when the first steps' medians are not positive and finite. Collapsed
    under :data:`COLLAPSE`; a healthy run's gradients fall no faster than its loss (1 and
    more)."""
    if not first or not recent:
        return math.nan
    loss0, norm0 = (float(np.median(v)) for v in zip(*first, strict=True))
    loss, norm = (float(np.median(v)) for v in zip(*recent, strict=True))
    if not (loss0 > 0 and norm0 > 0 and math.isfinite(loss0 * norm0)) or loss <= 0:
        return math.nan
    return (norm / norm0) / (loss / loss0)


def level_of(losses: Sequence[float], noise: float) -> Level | None:
    """Median of the losses and its standard error for batch noise ``noise`` (None when
    empty); a window with a non-finite loss has an infinite level (never gone back to)."""
    data = np.asarray(losses, dtype=np.float64)
    if data.size == 0 or not math.isfinite(noise):
        return None
    if not np.all(np.isfinite(data)):
        return Level(math.inf, math.inf, int(data.size))
    se = MEDIAN_SE_FACTOR * noise / math.sqrt(data.size)
    return Level(float(np.median(data)), se, int(data.size))


def clearly_worse(level: Level, reference: Level) -> bool:
    """``level`` above ``reference`` by more than DAMAGE_Z standard errors of the
    difference and by more than DAMAGE_MARGIN of the reference."""
    rise = level.median - reference.median
    noise = DAMAGE_Z * math.hypot(level.se, reference.se)
    return rise > noise and rise > DAMAGE_MARGIN * abs(reference.median)


def as_good(level: Level, best: Level) -> bool:
    """``level`` cannot be told from the best level (within TIE_Z standard errors)."""
    if not math.isfinite(level.median):
        return False
    return level.median - best.median <= TIE_Z * math.hypot(level.se, best.se)


@dataclass(frozen=True)
class Divergence:
    """What the detector saw on one step, and the kept state to go back to."""

    nonfinite: bool  # a non-finite loss or gradient norm (the update was skipped)
    to_step: int | None  # the kept state to return to (None: none is kept)
    recent: Level | None = None  # the recent level (damage only)
    best: Level | None = None  # the best kept level (damage only)
    best_step: int | None = None
    grad_variability: float = math.nan  # robust variability of the recent gradient norms
    validation: bool = False  # judged on two validation passes, not on training losses
    collapse: bool = False  # the gradients collapsed (recent and best: gradient norms)
    loss_ratio: float = math.nan  # collapse only: the recent loss over the first steps'

    @property
    def what(self) -> str:
        if self.nonfinite or self.recent is None or self.best is None:
            return "Non-finite loss or gradients"
        rise = self.recent.median / self.best.median - 1 if self.best.median else math.nan
        if self.collapse:
            return (
                f"Gradients collapsed: median norm {self.recent.median:.2g} over the last "
                f"{self.recent.points} steps, {rise + 1:.0%} of the first steps' "
                f"{self.best.median:.2g}, while the loss is at {self.loss_ratio:.0%} of theirs: "
                f"the run went somewhere flat, not down"
            )
        if self.validation:
            return (
                f"Validation loss damaged: {self.recent.median:.4g}, {rise:+.0%} above "
                f"{self.best.median:.4g} at step {self.best_step}"
            )
        return (
            f"Loss damaged: median {self.recent.median:.4g} over the last {self.recent.points} "
            f"steps, {rise:+.0%} above {self.best.median:.4g} at step {self.best_step} "
            f"(noise {math.hypot(self.recent.se, self.best.se):.2g})"
        )

    def evidence(self) -> dict[str, Any]:
        evidence: dict[str, Any] = {"nonfinite": self.nonfinite, "to_step": self.to_step}
        if self.recent is not None and self.best is not None:
            evidence |= {
                "recent_loss": self.recent.median,
                "recent_se": self.recent.se,
                "best_loss": self.best.median,
                "best_se": self.best.se,
                "best_step": self.best_step,
                "grad_variability": self.grad_variability,
            }
        if self.validation:
            evidence["validation"] = True
        if self.collapse:
            evidence |= {"collapse": True, "loss_ratio": self.loss_ratio}
        return evidence


def robust_variability(values: Sequence[float]) -> float:
    """1.4826 MAD / median of the finite values (nan when there are none)."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return math.nan
    median = float(np.median(data))
    if median <= 0:
        return math.nan
    return MAD_TO_SIGMA * float(np.median(np.abs(data - median))) / median


class DivergenceDetector:
    """Feeds on every step; keeps the list of good states, says when the run diverged and
    where to go back to.

    ``keep`` is how many states the run holds (at most); ``every`` their cadence in steps.
    """

    def __init__(self, keep: int = 4, every: int = 5) -> None:
        self.keep = max(1, keep)
        self.every = max(1, every)
        self._losses: deque[tuple[int, float, float]] = deque(maxlen=HISTORY)
        #: kept state step -> its level once the window around it is complete
        self._states: dict[int, Level | None] = {}
        self._since = -1  # losses at or before this step do not count as recent
        self._streak = 0
        #: (step, validation loss) of the newest passes
        self._vals: deque[tuple[int, float]] = deque(maxlen=VAL_HISTORY)
        #: kept states a validation rollback went back to (each at most once)
        self._val_returns: set[int] = set()
        self._pending: Divergence | None = None  # found by a pass, reported on the next step
        self._start: int | None = None  # the first state the run took

    # --- the kept states ------------------------------------------------------------

    def due(self, step: int) -> bool:
        """Whether the run should take a state now (on the cadence, or at a validation
        pass, once per step)."""
        return (step % self.every == 0 or step == self._validated()) and step not in self._states

    def _validated(self) -> int | None:
        """The step of the newest validation pass (None: none yet)."""
        return self._vals[-1][0] if self._vals else None

    def state_taken(self, step: int) -> list[int]:
        """A state was taken at ``step``: returns the steps of the states to keep, ``keep``
        at most: the best one, when it is older than the newest and at most
        :data:`BEST_SPAN` steps old, the newest validation pass's, and the newest others;
        the run drops the rest."""
        self._states[step] = None
        if self._start is None:
            self._start = step
        self._finalize()
        steps = sorted(self._states)
        extras: list[int] = []
        best = self.best()
        if best is not None and step - best[0] <= BEST_SPAN:
            # the best state stays (up to BEST_SPAN steps): damage that came early and
            # stayed still has a state from before it to be judged against and to go back to
            extras.append(best[0])
        validated = self._validated()
        if validated in self._states:  # the state the next pass is compared with
            extras.append(validated)
        kept = set(extras[: self.keep - 1])
        for newest in reversed(steps):
            if len(kept) >= self.keep:
                break
            kept.add(newest)
        if self._start_held(step):  # beside the others, for START_SPAN steps
            kept.add(self._start)
        for old in steps:
            if old not in kept:
                del self._states[old]
        return sorted(self._states)

    def _start_held(self, step: int) -> bool:
        """Whether the run's first state is still kept at ``step``."""
        start = self._start
        return start is not None and start in self._states and step - start <= START_SPAN

    def start(self, step: int) -> int | None:
        """The run's first state while it is still kept at ``step`` (None: gone, or none)."""
        return self._start if self._start_held(step) else None

    def kept(self) -> list[int]:
        return sorted(self._states)

    def levels(self) -> dict[int, Level | None]:
        return dict(self._states)

    def _finalize(self) -> None:
        """Fix the level of each state whose window is complete."""
        if not self._losses:
            return
        newest = self._losses[-1][0]
        for step, level in self._states.items():
            if level is not None or newest < step + LEVEL_HALF:
                continue
            window = [x for s, x, _ in self._losses if step - LEVEL_HALF < s <= step + LEVEL_HALF]
            self._states[step] = level_of(window, self._noise())

    def best(self) -> tuple[int, Level] | None:
        """The kept state with the lowest level, among those with a level."""
        judged = [(s, lv) for s, lv in self._states.items() if lv is not None]
        if not judged:
            return None
        return min(judged, key=lambda item: (item[1].median, -item[0]))

    def target(self) -> int | None:
        """The state to return to: the newest whose level is as good as the best kept one;
        without any judged state, the oldest kept (None: nothing kept)."""
        best = self.best()
        if best is None or not math.isfinite(best[1].median):
            return min(self._states) if self._states else None
        return max(s for s, lv in self._states.items() if lv is not None and as_good(lv, best[1]))

    # --- validation passes -------------------------------------------------------------

    def validated(self, step: int, val_loss: float) -> None:
        """A validation pass at ``step``, judged against the pass before it when that pass's
        state is kept (and was not gone back to already): damage when the loss rose by more
        than :func:`pass_noise` allows. Reported on the next :meth:`observe` at or after
        ``step``, with that state to go back to."""
        while self._vals and self._vals[-1][0] >= step:  # a resume or a replay going back
            self._vals.pop()
        passes = [v for _, v in self._vals]
        previous = self._vals[-1] if self._vals else None
        self._vals.append((step, float(val_loss)))
        if previous is None or previous[0] not in self._states or previous[0] in self._val_returns:
            return
        before, now = previous[1], float(val_loss)
        if not (math.isfinite(before) and before > 0):
            return
        noise = pass_noise(passes)
        allowed = max(math.log1p(DAMAGE_MARGIN), DAMAGE_Z * noise if math.isfinite(noise) else 0)
        if math.isfinite(now) and now > 0 and not math.log(now / before) > allowed:
            return
        self._val_returns.add(previous[0])
        self._pending = Divergence(
            False,
            previous[0],
            Level(now, noise * before if math.isfinite(noise) else 0.0, 1),
            Level(before, 0.0, 1),
            previous[0],
            validation=True,
        )

    # --- every step -------------------------------------------------------------------

    def observe(
        self, step: int, loss: float, grad_norm: float, skipped: bool = False
    ) -> Divergence | None:
        while self._losses and self._losses[-1][0] >= step:  # a resume or a replay going back
            self._losses.pop()
        pending, self._pending = self._pending, None
        if skipped or not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self._losses.append((step, math.inf, math.inf))
            self._finalize()
            self._streak = 0
            return Divergence(True, self.target())
        self._losses.append((step, float(loss), float(grad_norm)))
        self._finalize()
        if pending is not None and pending.to_step in self._states:
            self._streak, self._since = 0, step
            return pending
        found = self._damage() or self._collapse(step)
        if found is None:
            self._streak = 0
            return None
        self._streak += 1
        if self._streak < CONFIRM:
            return None
        # reported once: judged again on losses after this step (a paused observe run)
        self._streak, self._since = 0, step
        return found

    def _damage(self) -> Divergence | None:
        """The damage test on the newest losses (None: not damaged, or too little data)."""
        recent = [(x, g) for s, x, g in self._losses if s > self._since and math.isfinite(x)]
        recent = recent[-RECENT:]
        best = self.best()
        if len(recent) < RECENT or best is None:
            return None
        level = level_of([x for x, _ in recent], self._noise())
        if level is None or not clearly_worse(level, best[1]):
            return None
        return Divergence(
            False,
            self.target(),
            level,
            best[1],
            best[0],
            robust_variability([g for _, g in recent]),
        )

    def _collapse(self, step: int) -> Divergence | None:
        """The collapse test (None: not collapsed, too little data, or the start is gone)."""
        start = self._start
        if start is None or not self._start_held(step):
            return None
        first = [(x, g) for s, x, g in self._losses if start < s <= start + LEVEL_HALF]
        recent = [
            (x, g)
            for s, x, g in self._losses
            if s > max(self._since, start + LEVEL_HALF) and math.isfinite(x)
        ][-RECENT:]
        if len(first) < LEVEL_HALF or len(recent) < RECENT:
            return None
        loss0, norm0 = (float(np.median(v)) for v in zip(*first, strict=True))
        loss, norm = (float(np.median(v)) for v in zip(*recent, strict=True))
        if not collapse_ratio(first, recent) < COLLAPSE:
            return None
        loss_ratio = loss / loss0
        return Divergence(
            False,
            start,
            Level(norm, 0.0, len(recent)),
            Level(norm0, 0.0, len(first)),
            start,
            robust_variability([g for _, g in recent]),
            collapse=True,
            loss_ratio=loss_ratio,
        )

    def _noise(self) -> float:
        return noise_of([x for _, x, _ in self._losses][-NOISE_WINDOW:])

    def rolled_back(self, step: int) -> None:
        """Training went back to ``step``: the abandoned steps and states go, and the
        recent level starts again from the losses after it."""
        self._losses = deque((e for e in self._losses if e[0] <= step), maxlen=HISTORY)
        self._states = {s: lv for s, lv in self._states.items() if s <= step}
        self._vals = deque((v for v in self._vals if v[0] <= step), maxlen=VAL_HISTORY)
        self._pending = None
        self._since = step
        self._streak = 0

    # --- checkpoint state ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "losses": [list(e) for e in self._losses],
            "states": [
                [s, lv.to_list() if lv is not None else None] for s, lv in self._states.items()
            ],
            "since": self._since,
            "streak": self._streak,
            "vals": [list(v) for v in self._vals],
            "val_returns": sorted(self._val_returns),
            "pending": _divergence_state(self._pending),
            "start": self._start,
        }

    def load_state(self, data: Mapping[str, Any] | Sequence[Any]) -> None:
        if not isinstance(data, Mapping):  # an older detector's plain loss list
            raise ValueError("divergence detector state from another version")
        self._losses = deque(
            ((int(e[0]), float(e[1]), float(e[2])) for e in data["losses"]), maxlen=HISTORY
        )
        self._states = {
            int(s): Level(float(lv[0]), float(lv[1]), int(lv[2])) if lv is not None else None
            for s, lv in data["states"]
        }
        self._since = int(data["since"])
        self._streak = int(data["streak"])
        # saved before validation passes were judged: none remembered
        self._vals = deque(
            ((int(v[0]), float(v[1])) for v in data.get("vals", [])), maxlen=VAL_HISTORY
        )
        self._val_returns = {int(s) for s in data.get("val_returns", [])}
        self._pending = _divergence_from(data.get("pending"))
        start = data.get("start")  # saved before the start was kept: none held
        self._start = int(start) if start is not None else None


def _divergence_state(found: Divergence | None) -> list[float] | None:
    """A pending validation finding as JSON data: [to_step, loss now, its noise, loss
    before]."""
    if found is None or found.recent is None or found.best is None or found.to_step is None:
        return None
    return [found.to_step, found.recent.median, found.recent.se, found.best.median]


def _divergence_from(data: Sequence[float] | None) -> Divergence | None:
    if data is None:
        return None
    to_step = int(data[0])
    now, before = Level(float(data[1]), float(data[2]), 1), Level(float(data[3]), 0.0, 1)
    return Divergence(False, to_step, now, before, to_step, validation=True)
