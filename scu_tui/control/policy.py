"""The S-SCU policy: from signals and the current knobs to a diagnosis and a bounded move.

Pure functions, no memory: the controller adds hysteresis, cooldowns and back-off.

==================== ======================================== ============== =============
rule                 when (diagnosis + condition)             knob           move
==================== ======================================== ============== =============
rollback             every step, not only at control steps    rollback       lr x0.25
                                                                             (non-finite:
                                                                             x0.5;
                                                                             collapsed:
                                                                             x0.1)
                     (control.divergence): a non-finite step,
                     or damage: the median of the newest 10
                     losses clearly above the best level at a
                     kept state (judged against the run's own
                     noise); back to the newest kept state as
                     good as the best; or gradients collapsed
                     in the first 50 steps (the median norm
                     fell 10x further than the loss): back to
                     the run's start; at a control step also
                     any non-finite value in the period
search_lr            at the warm-up's last step (control.     rollback       lr x0.1
                     search): its last 5 steps' mean
                     alignment under -0.05, or a gradient
                     spike in them, their median loss 5 %
                     above the 5 steps' before, alignment
                     under 0.3; back to the run's start,
                     where the search begins again
                     then every step until it stops: a 5-step lr_multiplier  x2
                     window's mean alignment above 0.3;
                     first window under it, never moved: the  lr_multiplier  x1.5
                     20 steps after the warm-up above 0.15
                     once raised, a 10-step window's mean     lr_multiplier  x1.5
                     above 0.05; under -0.05 takes the last                  (undo)
                     raise back and ends it; two in range in
                     a row end it
                     never raised: under -0.05, or the 20-   (rollback)     x0.5
                     step look under 0 (a rollback when a
                     kept state is older); the first window
                     (or the 20-step look) in range ends it
settle_lr_after_      after a damage rollback, each 5-step     (rollback)     x0.5 (at
rollback             window (of the warm-up only its last)                   most 3)
                     whose mean alignment is under -0.05:
                     the steps still overshoot; back to the
                     newest kept state as good as the best
                     when a newer one's level is worse (in
                     place when none); two in range in a row
                     end it
trial_lr             once, at the warm-up's end unless its    lr_multiplier  x0.5
                     check cut the LR (control.trial): the
                     next 20 steps trained twice from one
                     state on the same batches, at the LR and
                     at half; half clearly lower (mean log
                     loss ratio under -0.05, t under -2): on
                     from its branch
cut_lr_degrading     degrading: significant loss rise         lr_multiplier  x0.5
cut_lr_unstable      unstable: >= 2 spikes in the period, or  lr_multiplier  x0.7
                     high variability without improvement;
                     not while the alignment says the steps
                     are too short (small batches' noise)
raise_weight_decay   overfitting, weight decay below its max  weight_decay   x2 (from 0.1)
raise_dropout        overfitting, weight decay at its max     dropout        +0.05
raise_lr_aligned     too_low_lr: the gradient keeps pointing  lr_multiplier  x1.5 (x2
                     along the momentum (update alignment                    over 0.3)
                     mean > 0.15 over the window and over the
                     newest period, t > 3), stable gradients,
                     no spike: the steps are too short
raise_accumulation   noisy: high variability, still improving accumulation   x2
raise_lr_slow        slow: significant but slow fall, stable  lr_multiplier  x1.5
                     gradients, no spike in the period (not
                     when the alignment says the LR is high)
settle_lr_overshoot  stationary: not improving at the target  lr_multiplier  x0.7
                     and the alignment significantly negative
                     (mean < -0.03, t < -3): the steps
                     overshoot, a smaller LR settles lower
explore_too_stable   too_stable: plateau, stable gradients    lr_multiplier  x1.2
                     and low entropy or near-constant norms
                     (not with a negative alignment)
reduce_lr_plateau    plateau: no trend, noisy (not too        lr_multiplier  x0.8
                     stable) - reduce-on-plateau
(none)               improving, or slow with unsteady grads
==================== ======================================== ============== =============

Without an alignment (an older trainer, a recorded stream without it) the two alignment
rules never fire and the others behave as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from scu_tui.config import ScuSettings, TrainingSettings
from scu_tui.control.search import WARMUP_CUT
from scu_tui.control.signals import VAL_RISE_FRACTION, Signals, json_safe
from scu_tui.protocol import Knob, Rollback, Target, target


class Diagnosis(StrEnum):
    IMPROVING = "improving"
    SLOW = "slow"
    PLATEAU = "plateau"
    DEGRADING = "degrading"
    UNSTABLE = "unstable"
    DIVERGING = "diverging"
    TOO_STABLE = "too_stable"
    OVERFITTING = "overfitting"
    NOISY = "noisy"  # improving, but with gradients too noisy to trust a bigger step
    TOO_LOW_LR = "too_low_lr"  # the steps keep pointing the same way: too short
    STATIONARY = "stationary"  # not improving, and the steps overshoot one another


LR = Knob.LR_MULTIPLIER
WEIGHT_DECAY = Knob.WEIGHT_DECAY
DROPOUT = Knob.DROPOUT
ACCUMULATION = Knob.ACCUMULATION
#: The target of a rollback proposal, and the rule of the guard's (and of a non-finite
#: period's). Gradient statistics alone never roll back: their scale differs from task
#: to task; damage is judged on the loss against the run's own noise.
ROLLBACK = Rollback.ROLLBACK
KNOBS = tuple(Knob)

# --- diagnosis thresholds ------------------------------------------------------------------

#: Gradients are stable below this robust coefficient of variation (1.4826 MAD / median).
STABLE_VARIABILITY = 0.3
#: ... noisy above this one (typical LoRA runs sit around 0.1-0.3).
HIGH_VARIABILITY = 0.5
#: ... and "too stable" below this one: the optimizer barely feels its minibatches.
TOO_STABLE_VARIABILITY = 0.05
#: Total wavelet entropy below this: the loss moves on one time scale only (white noise
#: gives ~0.8 with 4 levels, a smooth drift ~0.1).
LOW_ENTROPY = 0.5
#: ... above this one the reasons speak of "high entropy complexity".
HIGH_ENTROPY = 0.75
#: Spikes within one control period that make the gradients unstable.
UNSTABLE_SPIKES = 2
#: Update alignment (cos of the gradient and the momentum) above this, over the window
#: and over the newest period, says the LR is too low (measured on the benchmark tasks at
#: constant LR: 0.2-0.8 at 0.1x, 0.1-0.5 early at 0.3x, within +-0.05 at the tuned LR
#: after its first period, below 0 at 3x).
ALIGN_TOO_LOW = 0.15
#: ... below this one, with a flat loss, that the steps overshoot (stationary phase).
ALIGN_OVERSHOOT = -0.03
#: How many standard errors from zero the mean alignment must be to count.
ALIGN_MIN_T = 3.0
#: Alignment points needed (a control period's worth at the default frequency).
ALIGN_MIN_POINTS = 16
#: A slow run's LR is raised only while validation falls at least this fraction as fast
#: as the training loss: once it stops following, a faster descent only fits noise.
VAL_FOLLOW_FRACTION = 0.5

# --- what each rule asks for (before the safety limits) ----------------------------------

LR_RAISE_SLOW = 1.5
LR_RAISE_EXPLORE = 1.2
LR_CUT_DEGRADING = 0.5
LR_CUT_UNSTABLE = 0.7
LR_CUT_PLATEAU = 0.8
LR_RAISE_ALIGNED = 1.5
#: ... and, when the newest period's alignment is this strong (0.2-0.8 measured at 0.1x
#: the tuned LR, under 0.15 from 0.3x on once past the first period), the largest move
#: one action may make: from 0.1x the tuned LR in four periods instead of six. An
#: overshoot has its safe return: the damage rollback to a kept state, with a cut.
ALIGN_FAR_TOO_LOW = 0.3
LR_RAISE_FAR_TOO_LOW = 2.0
LR_CUT_OVERSHOOT = 0.7
ROLLBACK_LR_FACTOR = 0.5
#: A rollback for damage goes back with a deeper cut: the LR that damaged the run once
#: does again at half (demo-hot: back to step 5 at x0.5, the loss rose again from step 15
#: and the run ended at validation loss 1.43; at x0.25 it ends near the tuned demo's).
DAMAGE_LR_FACTOR = 0.25
#: A rollback for collapsed gradients goes back to the start with a deeper cut still: on
#: the tuning tasks the gradients collapsed only from 10x the tuned LR up (never at 3x or
#: below), so the LR that did it was 10x too high or more. Chosen on the tuning tasks at
#: 20x and 30x, the S-SCU arm, seeds 0-3 (the rule fired in 18 of 32 runs): x0.1 ended
#: lower than x0.25 in 16 of the 18, mean final validation loss 1.019 against 1.475.
COLLAPSE_LR_FACTOR = 0.1
#: The deepest LR cut one rollback may make (the guard's and the warm-up cut's deepest; a
#: person's or a scripted one is held to it too).
MAX_ROLLBACK_CUT = min(COLLAPSE_LR_FACTOR, DAMAGE_LR_FACTOR, ROLLBACK_LR_FACTOR, WARMUP_CUT)
WEIGHT_DECAY_FACTOR = 2.0
#: First weight decay when it is 0, then doubled. AdamW's decay shrinks the adapters by
#: lr x weight_decay per step: at 1e-3 x 0.01 that is 0.6 % over 600 steps, which did
#: nothing measurable (demo, weight decay from step 0 for 600 steps, final / best
#: validation loss: 0 -> 0.3001 / 0.2955, 0.01 -> 0.2997 / 0.2953, 0.1 -> 0.2969 /
#: 0.2936, 1.0 -> 0.2841 / 0.2828); so the lever starts at 0.1 and may go up to 1.0.
WEIGHT_DECAY_START = 0.1
DROPOUT_STEP = 0.05
ACCUMULATION_FACTOR = 2.0

# --- safety: the most one action may change a knob --------------------------------------

MAX_LR_UP, MAX_LR_DOWN = 2.0, 0.5
MAX_WEIGHT_DECAY_UP, MAX_WEIGHT_DECAY_DOWN = 2.0, 0.5
MAX_DROPOUT_STEP = 0.1
MAX_ACCUMULATION_UP, MAX_ACCUMULATION_DOWN = 2.0, 0.5
#: Relative change below which a clamped move counts as no move.
NO_OP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Proposal:
    """One proposed change; ``to_dict()`` has exactly the fields of ``ProposalEvent``."""

    id: str
    step: int
    rule: str
    diagnosis: str
    knob: Target  # a Knob, or a rollback
    before: float
    after: float  # for rollback: the lr multiplier to resume with
    reason: str
    action: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # restored from a checkpoint, the knob is a plain name: ValueError when unknown
        object.__setattr__(self, "knob", target(self.knob))

    def to_dict(self) -> dict[str, Any]:
        return dict(json_safe(asdict(self)))

    def moved_since(self, knobs: Mapping[str, float]) -> float | None:
        """The knob's value now when it is no longer the ``before`` this proposal was
        worked out from (a rollback's: the LR multiplier), else None: then its ``after``
        would not be the change it says."""
        now = knobs.get(str(LR if self.knob == ROLLBACK else self.knob))
        if now is None or math.isclose(now, self.before, rel_tol=1e-6, abs_tol=1e-12):
            return None
        return float(now)


@dataclass(frozen=True)
class Knobs:
    """The run's current knob values; ``lr`` is the effective lr (base schedule x multiplier)."""

    lr: float
    lr_multiplier: float = 1.0
    weight_decay: float = 0.0
    dropout: float = 0.0
    accumulation: float = 1.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, float], training: TrainingSettings) -> Knobs:
        multiplier = float(values.get(LR, 1.0))
        return cls(
            lr=float(values.get("lr", training.learning_rate * multiplier)),
            lr_multiplier=multiplier,
            weight_decay=float(values.get(WEIGHT_DECAY, training.weight_decay)),
            dropout=float(values.get(DROPOUT, 0.0)),
            accumulation=float(values.get(ACCUMULATION, training.gradient_accumulation_steps)),
        )

    @property
    def base_lr(self) -> float:
        """The base schedule's lr at this step: lr / multiplier (0 when unknown)."""
        return self.lr / self.lr_multiplier if self.lr_multiplier > 0 else 0.0

    def value(self, knob: Target) -> float:
        return float(getattr(self, LR if knob == ROLLBACK else knob.value))


@dataclass(frozen=True)
class Move:
    """What a rule asks for, before bounds: ``direction`` is +1 (raise) or -1 (cut)."""

    rule: str
    knob: Target
    target: float
    direction: int
    reason: str
    evidence: dict[str, Any]
    effect_metric: str | None  # "loss" | "val_loss" | None (safety moves are never reverted)


# --- diagnosis ------------------------------------------------------------------------------


def is_blowing_up(s: Signals) -> bool:
    """Non-finite values in the period. Loss damage is caught on its own step by the one
    detector in :mod:`scu_tui.control.divergence`; a sustained rise is ``degrading``."""
    return s.recent_nonfinite > 0


def is_diverging(s: Signals) -> bool:
    """Only going back to before the damage helps: non-finite values in the period (loss
    damage is caught on its own step by :mod:`scu_tui.control.divergence`)."""
    return is_blowing_up(s)


def is_unstable(s: Signals) -> bool:
    """Spikes or high variability without improvement, unless the alignment says the steps
    are too short: then the norms' spread is the batch's noise, not a LR too high (in
    batches of 2 one batch's gradient norm can be several times another's at any LR)."""
    g = s.gradients
    if steps_too_short(s):
        return False
    return g.recent_spikes >= UNSTABLE_SPIKES or (
        g.variability > HIGH_VARIABILITY and not s.trend.improving
    )


def is_overfitting(s: Signals) -> bool:
    """Validation rises while training falls, or the gap widens while validation stalls."""
    v, target = s.validation, s.trend.target
    if v.count < 2 or s.trend.slope >= 0:
        return False
    stalled = v.trend >= -VAL_RISE_FRACTION * target  # falling slower than this: stalled
    return v.rising or (v.gap_growing and stalled)


def validation_stalled(s: Signals) -> bool:
    """Validation falls at less than VAL_FOLLOW_FRACTION of the training loss's pace (too
    few passes to tell: not stalled)."""
    v, t = s.validation, s.trend
    return v.count >= 2 and -v.trend < VAL_FOLLOW_FRACTION * max(t.relative_improvement, 0.0)


def gradients_stable(s: Signals) -> bool:
    g = s.gradients
    return g.variability < STABLE_VARIABILITY and g.recent_spikes == 0


def is_too_stable(s: Signals) -> bool:
    w, g = s.wavelet, s.gradients
    low_entropy = w.levels > 0 and w.total_entropy < LOW_ENTROPY
    return gradients_stable(s) and (low_entropy or g.variability < TOO_STABLE_VARIABILITY)


def steps_too_short(s: Signals) -> bool:
    """Consistent evidence that the LR is too low: the gradient keeps pointing along the
    momentum, over the whole window and over the newest period."""
    a = s.alignment
    return (
        a.points >= ALIGN_MIN_POINTS
        and a.mean > ALIGN_TOO_LOW
        and a.recent_mean > ALIGN_TOO_LOW
        and a.t > ALIGN_MIN_T
    )


def steps_overshoot(s: Signals) -> bool:
    """Consistent evidence that the steps overshoot: a significantly negative alignment."""
    a = s.alignment
    return (
        a.points >= ALIGN_MIN_POINTS
        and a.mean < ALIGN_OVERSHOOT
        and a.recent_mean < 0
        and a.t < -ALIGN_MIN_T
    )


def diagnose(s: Signals) -> Diagnosis:
    """The one diagnosis for these signals, the most urgent first."""
    t = s.trend
    if is_diverging(s):
        return Diagnosis.DIVERGING
    if t.degrading:
        return Diagnosis.DEGRADING
    if is_unstable(s):
        return Diagnosis.UNSTABLE
    if is_overfitting(s):
        return Diagnosis.OVERFITTING
    if s.gradients.variability > HIGH_VARIABILITY:
        return Diagnosis.NOISY
    if steps_too_short(s) and gradients_stable(s):
        return Diagnosis.TOO_LOW_LR
    if t.relative_improvement >= t.target:
        return Diagnosis.IMPROVING
    if steps_overshoot(s):
        return Diagnosis.STATIONARY
    if t.plateau:
        return Diagnosis.TOO_STABLE if is_too_stable(s) else Diagnosis.PLATEAU
    return Diagnosis.SLOW


# --- rules ----------------------------------------------------------------------------------


def choose_move(diagnosis: Diagnosis, s: Signals, knobs: Knobs, scu: ScuSettings) -> Move | None:
    """The move a diagnosis calls for (unbounded), or None."""
    match diagnosis:
        case Diagnosis.DIVERGING:
            return rollback_move(s, knobs)
        case Diagnosis.DEGRADING:
            return degrading_move(s, knobs)
        case Diagnosis.UNSTABLE:
            return unstable_move(s, knobs)
        case Diagnosis.OVERFITTING:
            return overfitting_move(s, knobs, scu)
        case Diagnosis.NOISY:
            return noisy_move(s, knobs)
        case Diagnosis.TOO_LOW_LR:
            # no validation gate: at a too-low LR validation lags the training loss, and
            # the alignment itself says the steps, not the noise, limit progress
            return aligned_move(s, knobs)
        case Diagnosis.STATIONARY:
            return overshoot_move(s, knobs)
        case Diagnosis.SLOW:
            # a faster descent helps only while validation still follows the training loss
            helps = gradients_stable(s) and not validation_stalled(s)
            return slow_move(s, knobs) if helps else None
        case Diagnosis.TOO_STABLE:
            return too_stable_move(s, knobs)  # a negative alignment is STATIONARY first
        case Diagnosis.PLATEAU:
            return plateau_move(s, knobs)
    return None


def trend_evidence(s: Signals) -> dict[str, Any]:
    t = s.trend
    return {
        "relative_improvement": t.relative_improvement,
        "target": t.target,
        "slope": t.slope,
        "mk_z": t.z,
        "p_value": t.p_value,
    }


def gradient_evidence(s: Signals) -> dict[str, Any]:
    g = s.gradients
    return {"grad_variability": g.variability, "spikes": g.recent_spikes, "grad_median": g.median}


def rollback_move(s: Signals, knobs: Knobs, to_step: int | None = None) -> Move:
    """Non-finite values in the period: back to the kept state ``to_step`` (None: the
    newest checkpoint) with a lower LR."""
    t, g = s.trend, s.gradients
    evidence = {
        "nonfinite": s.recent_nonfinite,
        "to_step": to_step,
        "loss_ratio": t.recent_ratio,
        "mk_z": t.z,
        "grad_variability": g.variability,
    }
    return Move(
        ROLLBACK,
        ROLLBACK,
        knobs.lr_multiplier * ROLLBACK_LR_FACTOR,
        -1,
        "Non-finite loss or gradients - rolling back with lower LR",
        evidence,
        None,
    )


def degrading_move(s: Signals, knobs: Knobs) -> Move:
    entropy = s.wavelet.total_entropy
    complexity = "high" if entropy > HIGH_ENTROPY else "low"
    return Move(
        "cut_lr_degrading",
        LR,
        knobs.lr_multiplier * LR_CUT_DEGRADING,
        -1,
        f"Loss degradation with {complexity} entropy complexity - cutting LR",
        trend_evidence(s) | {"wavelet_entropy": entropy},
        None,
    )


def unstable_move(s: Signals, knobs: Knobs) -> Move:
    g = s.gradients
    what = f"{g.recent_spikes} gradient spikes" if g.recent_spikes else "Highly variable gradients"
    return Move(
        "cut_lr_unstable",
        LR,
        knobs.lr_multiplier * LR_CUT_UNSTABLE,
        -1,
        f"{what[0].upper()}{what[1:]} (variability {g.variability:.2f}) - cutting LR",
        gradient_evidence(s) | {"relative_improvement": s.trend.relative_improvement},
        None,
    )


def overfitting_move(s: Signals, knobs: Knobs, scu: ScuSettings) -> Move | None:
    v = s.validation
    evidence = {"val_trend": v.trend, "gap": v.gap, "gap_trend": v.gap_trend, "val_loss": v.loss}
    evidence |= {"train_slope": s.trend.slope}
    what = "Validation loss rising" if v.rising else "Train/validation gap growing"
    if knobs.weight_decay < scu.weight_decay_bounds[1]:
        target = max(knobs.weight_decay * WEIGHT_DECAY_FACTOR, WEIGHT_DECAY_START)
        reason = f"{what} while training loss falls - raising weight decay"
        return Move("raise_weight_decay", WEIGHT_DECAY, target, 1, reason, evidence, "val_loss")
    if knobs.dropout < scu.dropout_bounds[1]:
        reason = f"{what} with weight decay at its limit - raising dropout"
        target = knobs.dropout + DROPOUT_STEP
        return Move("raise_dropout", DROPOUT, target, 1, reason, evidence, "val_loss")
    return None


def alignment_evidence(s: Signals) -> dict[str, Any]:
    a = s.alignment
    return {"alignment": a.mean, "alignment_recent": a.recent_mean, "alignment_t": a.t}


def aligned_move(s: Signals, knobs: Knobs) -> Move:
    """Each step still points down the slope the last ones followed: longer steps, the
    longest one move allows while the alignment says the LR is far too low."""
    a = s.alignment
    far = a.mean > ALIGN_FAR_TOO_LOW and a.recent_mean > ALIGN_FAR_TOO_LOW
    return Move(
        "raise_lr_aligned",
        LR,
        knobs.lr_multiplier * (LR_RAISE_FAR_TOO_LOW if far else LR_RAISE_ALIGNED),
        1,
        f"Updates keep pointing the same way (alignment {s.alignment.mean:+.2f}) "
        "- the LR is too low, increasing it",
        alignment_evidence(s) | trend_evidence(s) | gradient_evidence(s),
        "loss",
    )


def overshoot_move(s: Signals, knobs: Knobs) -> Move:
    """A flat loss whose steps undo one another settles lower with shorter steps."""
    return Move(
        "settle_lr_overshoot",
        LR,
        knobs.lr_multiplier * LR_CUT_OVERSHOOT,
        -1,
        f"Flat loss and updates that undo one another (alignment {s.alignment.mean:+.2f}) "
        "- reducing LR to settle",
        alignment_evidence(s) | trend_evidence(s),
        "loss",
    )


def noisy_move(s: Signals, knobs: Knobs) -> Move:
    return Move(
        "raise_accumulation",
        ACCUMULATION,
        knobs.accumulation * ACCUMULATION_FACTOR,
        1,
        "Noisy gradients while improving - raising gradient accumulation (bigger batch)",
        gradient_evidence(s) | {"relative_improvement": s.trend.relative_improvement},
        "loss",
    )


def slow_move(s: Signals, knobs: Knobs) -> Move:
    return Move(
        "raise_lr_slow",
        LR,
        knobs.lr_multiplier * LR_RAISE_SLOW,
        1,
        "Slow loss improvement with stable gradients - increasing LR",
        trend_evidence(s) | gradient_evidence(s),
        "loss",
    )


def too_stable_move(s: Signals, knobs: Knobs) -> Move:
    """A small LR raise: the knob that sets the optimizer's noise scale (lr / batch).

    Lowering weight decay or dropout instead would weaken regularisation the run may need
    and barely moves an optimizer sitting still; an LR raise acts at once, and the effect
    check reverts it if the loss gets worse.
    """
    evidence = trend_evidence(s) | gradient_evidence(s)
    evidence |= {"wavelet_entropy": s.wavelet.total_entropy}
    return Move(
        "explore_too_stable",
        LR,
        knobs.lr_multiplier * LR_RAISE_EXPLORE,
        1,
        "Training too stable - encouraging exploration",
        evidence,
        "loss",
    )


def plateau_move(s: Signals, knobs: Knobs) -> Move:
    """Reduce-on-plateau: a trendless, noise-dominated loss settles lower with a smaller LR."""
    evidence = trend_evidence(s) | {"wavelet_entropy": s.wavelet.total_entropy}
    return Move(
        "reduce_lr_plateau",
        LR,
        knobs.lr_multiplier * LR_CUT_PLATEAU,
        -1,
        "Loss plateau with noisy dynamics - reducing LR to settle",
        evidence,
        "loss",
    )


# --- safety limits --------------------------------------------------------------------------


def hard_bounds(knob: Target, knobs: Knobs, scu: ScuSettings) -> tuple[float, float]:
    """The preset's limits for a knob; the lr limits apply to the effective lr."""
    if knob in (LR, ROLLBACK):
        base = knobs.base_lr
        if base <= 0:
            return knobs.lr_multiplier, knobs.lr_multiplier  # no schedule known: no LR move
        return scu.lr_bounds[0] / base, scu.lr_bounds[1] / base
    limits: dict[Target, list[float] | list[int]] = {
        WEIGHT_DECAY: scu.weight_decay_bounds,
        DROPOUT: scu.dropout_bounds,
        ACCUMULATION: scu.accumulation_bounds,
    }
    low, high = limits[knob]
    return float(low), float(high)


def step_limits(knob: Target, before: float) -> tuple[float, float]:
    """The most one action may move a knob from ``before``."""
    if knob == ROLLBACK:
        return before * MAX_ROLLBACK_CUT, before
    if knob == LR:
        return before * MAX_LR_DOWN, before * MAX_LR_UP
    if knob == WEIGHT_DECAY:
        up = max(before * MAX_WEIGHT_DECAY_UP, WEIGHT_DECAY_START)
        return before * MAX_WEIGHT_DECAY_DOWN, up
    if knob == DROPOUT:
        return before - MAX_DROPOUT_STEP, before + MAX_DROPOUT_STEP
    return math.ceil(before * MAX_ACCUMULATION_DOWN), before * MAX_ACCUMULATION_UP


def bounded_value(
    knob: Target, before: float, target: float, knobs: Knobs, scu: ScuSettings
) -> float:
    """``target`` within the preset's bounds, then within one action's reach of ``before``.

    The step limit wins: a knob already outside its bounds moves toward them by at most one
    step. Accumulation is rounded to a whole number of micro-batches.
    """
    low, high = hard_bounds(knob, knobs, scu)
    value = min(max(target, low), high)
    reach_low, reach_high = step_limits(knob, before)
    value = min(max(value, reach_low), reach_high)
    return float(round(value)) if knob == ACCUMULATION else value


def moves(before: float, after: float, direction: int) -> bool:
    """True when ``after`` differs from ``before`` in the intended direction."""
    if abs(after - before) <= NO_OP_TOLERANCE * max(abs(before), 1e-30):
        return False
    return (after > before) == (direction > 0)


def action_text(knob: Target, before: float, after: float) -> str:
    """A short description: ``lr x1.5``, ``weight_decay 0 -> 0.01``, ``rollback, lr x0.5``."""
    factor = f"x{after / before:.3g}" if before > 0 else f"-> {after:.3g}"
    if knob == LR:
        return f"lr {factor}"
    if knob == ROLLBACK:
        return f"rollback, lr {factor}"
    if knob == ACCUMULATION:
        return f"accumulation {before:.0f} -> {after:.0f}"
    return f"{knob} {before:.3g} -> {after:.3g}"
