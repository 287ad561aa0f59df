"""The start-up LR search: the first steps after the warm-up find the LR's scale.

Creeping up from a far too low LR by one bounded move per control period takes most of a
short run (x1.5, or x2, per period, each judged before the next). The search uses the
first steps instead: while the update alignment (the cosine between each gradient and
the optimizer's momentum) stays high over a short window, the steps still point the
same way and the LR is far too low, so it is doubled and the next window judged; while
it stays clearly negative, the steps undo one another and the LR is halved. The
doublings stop where the alignment first falls under 0.3, which is at a third or so of
the tuned LR: from there a longer window judges more finely, and a LR still too low goes
up by x1.5 at a time, one that went too far takes its last raise back. A run whose first
window reads under 0.3 gets a longer look, which can still raise it (or halve it). The
first window in range (two of the longer ones in a row once raised; or an undone raise,
or a halving search asked to go up) ends the search for good; the controller's rules take
over from there. An overshoot that did damage has its own safe return: the damage
rollback goes back to a kept state from before it, with a cut, and a rollback ends the
search. Before all this, a warm-up whose last steps overshoot, or blow up (a gradient
spike while the loss climbs: steps so large they read as unrelated, near 0), is cut x0.1
at its end, back to the run's start, and the search begins again from there: a cut that
went too far (a LR 3x too high left at 0.3x) is raised again as at any start.

What was measured on the tuning tasks at a constant LR (``docs/benchmarks.md``): after
a 10-step warm-up the alignment of each step stays at 0.45-0.98 at 0.1x the tuned LR
for 20 steps and more, drops under 0.3 within a few steps of the warm-up's end at the
tuned LR (0.02-0.19 over the first window), and is negative from 3x on (-0.21 to
-0.07).

Pure functions: :class:`~scu_tui.control.controller.Controller` keeps whether the search
is over and asks :func:`search_step` what to do on each step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from scu_tui.control.divergence import DAMAGE_MARGIN
from scu_tui.control.signals import spike_threshold

#: Steps judged per window: the mean of this many alignments decides each doubling.
WINDOW = 5
#: Mean alignment over a window above this says the LR is far too low (the same level
#: as the controller's x2 raise, ``policy.ALIGN_FAR_TOO_LOW``).
ALIGNED = 0.3
#: The factor of each move.
FACTOR = 2.0
#: Once a raise has been made and a window reads under ALIGNED, the LR is judged over
#: NEAR_WINDOW steps: a mean alignment above NEAR still says too low, though nearer, and
#: the LR goes up by NEAR_FACTOR (the rules' ``LR_RAISE_ALIGNED``); under OVERSHOOTING
#: the last raise is undone. Measured on the tuning tasks at a constant LR, the mean of
#: the first 10 steps after the warm-up (demo-lora, completions, json, sort-text): at 0.4x
#: the tuned LR 0.12, 0.35, 0.33, 0.50; at 0.7x 0.08, 0.22, 0.21, 0.21; at 1x 0.01, 0.10,
#: 0.16, 0.10; at 1.5x -0.03, 0.00, 0.06, 0.05. The level where the tuned LR sits varies by
#: task, and a raised run stopped short of it more often than past it: at 0.1 the x0.1 and
#: x0.3 runs of the tuning tasks ended their searches at 0.45x-1.35x of the tuned LR. At
#: 0.05 (0.0 did the same within the noise) their final validation loss fell by 1-5 % on
#: demo-lora and json, the x1 and x10 runs unchanged (seeds 0-2); on the held-back tasks
#: the mean did not move (1.000; arith-chat x0.1 4 % higher, x0.3 3 % lower), see
#: ``docs/benchmarks.md``.
#: Not before a raise: a run started at the tuned LR is left alone.
NEAR = 0.05
NEAR_WINDOW = 10
NEAR_FACTOR = 1.5
#: In-range windows in a row that end the search once it has raised the LR.
NEAR_CONFIRM = 2
#: A run not yet moved whose first window reads under ALIGNED is judged once more over
#: LOOK_WINDOW steps from the warm-up's end: a mean above LOOK says the LR is still a few
#: times too low, and it goes up by NEAR_FACTOR. Measured on the tuning tasks at a constant
#: LR (seed 0, steps 11-30): at 0.3x the tuned LR 0.26 (demo-lora), 0.48 (completions),
#: 0.33 (json), 0.54 (sort-text); at the tuned LR 0.02, 0.10, 0.08, 0.10.
LOOK_WINDOW = 20
LOOK = 0.15
#: ... and a mean under LOOK_LOW says the steps, on balance, undo one another: the LR is
#: halved. Zero, not OVERSHOOTING (as it was): over 20 steps a negative mean is no longer
#: a flicker. On the tuning tasks the looks between -0.05 and 0 were completions x3
#: (-0.04 to -0.05), json x1 and x10 after the warm-up's cut, and atlas-text x1 (-0.01 to
#: -0.03); halved, their cells ended 9 %, 2 %, 6 % and 3 % lower (8 of the 10 runs
#: lower, json x1 seeds 1 and 2 0.1 % and 2 % higher), every other run the same; on the
#: held-back tasks docs-text x3 4-6 % lower, sql x1 0.3-0.4 % higher
#: (``docs/benchmarks.md``).
LOOK_LOW = 0.0
#: At most this many raises in one run, whatever the LR bounds allow.
MAX_MOVES = 10
#: The search never starts before this step: Adam's first steps point the same way at
#: any LR, since the weights have barely moved yet.
EARLIEST = WINDOW


#: The mean alignment of a window under this says the steps overshoot one another
#: (measured at a constant LR on the tuning tasks: -0.21 to -0.07 in the first window
#: after the warm-up from 3x the tuned LR on, 0.02-0.19 at it); the same level judges
#: the LR a damage rollback left.
OVERSHOOTING = -0.05
#: The factor of each cut, and the most cuts in one search (or after one rollback).
SETTLE_FACTOR = 0.5
MAX_SETTLES = 3
#: Windows in a row that read in range before the settling after a rollback ends.
SETTLE_CONFIRM = 2


#: The warm-up's last WINDOW steps run at 0.5-1x the LR it ramps to: a mean alignment
#: under OVERSHOOTING there says even those overshoot (tuning tasks at a constant LR:
#: 0.25-0.67 at the tuned LR, -0.08 to +0.07 at 3x, -0.26 to -0.11 at 10x, where the
#: windows after the warm-up read near 0: steps that large no longer undo one another,
#: they are unrelated). The LR is cut by this factor, going back to the run's start (the
#: ramp's first half may have done damage that a kept state inside it still holds), and
#: the search begins again from the lower LR. Chosen on the tuning tasks at 3x, 10x and
#: 20x the tuned LR, seeds 0-3, against x0.25 to the newest kept state as good as the
#: best (step 5 of a 10-step ramp, as before), x0.25 or x0.1 to the start without the
#: search again, x0.25 to the start with it, and the cut held until the collapse test
#: had judged (``docs/benchmarks.md``): the lowest mean final validation loss.
WARMUP_CUT = 0.1


@dataclass(frozen=True)
class SearchStep:
    """What the search says on one step: ``raise_lr`` or ``cut_lr`` (by ``factor``),
    ``end`` (over for good, ``why`` says why) or ``wait`` (too few steps seen in the
    window)."""

    action: str  # "raise_lr" | "cut_lr" | "undo" (the last raise) | "end" | "wait"
    why: str
    alignment: float = math.nan  # the window's mean
    first: int = -1  # the window's steps
    last: int = -1
    factor: float = 1.0  # of the move

    def evidence(self) -> dict[str, float | int]:
        """What a proposal made from this verdict shows as its evidence."""
        evidence: dict[str, float | int] = {"first_step": self.first, "last_step": self.last}
        if math.isfinite(self.alignment):
            evidence["alignment"] = self.alignment
        return evidence


def window_start(warmup_steps: int, last_move_step: int) -> int:
    """The window starts after the warm-up, after the newest move, and not before
    :data:`EARLIEST`; the steps after the returned one count."""
    return max(warmup_steps, last_move_step, EARLIEST)


def window_mean(
    history: Iterable[tuple[int, float]], start: int, size: int = WINDOW, skip: int = 0
) -> SearchStep | tuple[float, int, int]:
    """The ``size`` finite alignments after ``start`` that follow the first ``skip``: (mean,
    first step, last step), or the verdict when there are too few (wait, or end: none
    reported)."""
    after = [(s, a) for s, a in history if s > start]
    points = [(s, a) for s, a in after if math.isfinite(a)]
    if len(points) < skip + size:
        if len(after) >= 2 * (skip + size):  # an optimizer (or a stream) without one
            return SearchStep("end", f"no update alignment reported in {len(after)} steps")
        return SearchStep("wait", f"{len(points) - skip} of {size} aligned steps seen")
    window = points[skip : skip + size]
    return sum(a for _, a in window) / size, window[0][0], window[-1][0]


def search_step(
    history: Iterable[tuple[int, float]],
    start: int,
    raises: int,
    cuts: int = 0,
    last_factor: float = FACTOR,
) -> SearchStep:
    """Judge the window of ``(step, alignment)`` after step ``start``, the search having
    made ``raises`` raises (the newest by ``last_factor``) or ``cuts`` halvings so far
    (never both: the first window sets the direction; a raise is undone once, at the end).
    """
    history = list(history)
    found = window_mean(history, start)
    if isinstance(found, SearchStep):
        return found
    mean, first, last = found
    where = f"alignment {mean:+.2f} over steps {first}-{last}"
    if mean > ALIGNED and not cuts:
        return _raise(f"{where}, above {ALIGNED}", raises, mean, first, last, FACTOR)
    if raises:
        return _near(history, start, raises, last_factor)
    if mean < OVERSHOOTING:
        if cuts >= MAX_SETTLES:
            return SearchStep("end", f"{cuts} halvings made, the most one search makes")
        why = f"{where}, under {OVERSHOOTING}"
        return SearchStep("cut_lr", why, mean, first, last, SETTLE_FACTOR)
    if cuts and mean > ALIGNED:
        why = f"{where}: the last halving undershot, the rules take it from here"
        return SearchStep("end", why, mean, first, last)
    if not cuts:
        return _look(history, start)
    why = f"{where}, between {OVERSHOOTING} and {ALIGNED}: the LR is in range"
    return SearchStep("end", why, mean, first, last)


def _look(history: list[tuple[int, float]], start: int) -> SearchStep:
    """A run never moved whose first window reads between OVERSHOOTING and ALIGNED: the
    LR may still be a few times too low or too high, which LOOK_WINDOW steps tell from
    the tuned LR: above LOOK a raise by NEAR_FACTOR (after which the search judges as
    after any raise), under LOOK_LOW a halving (as after a first window under
    OVERSHOOTING), else the end."""
    found = window_mean(history, start, LOOK_WINDOW)
    if isinstance(found, SearchStep):
        return found
    mean, first, last = found
    where = f"alignment {mean:+.2f} over steps {first}-{last}"
    if mean > LOOK:
        why = f"{where}, above {LOOK}"
        return SearchStep("raise_lr", why, mean, first, last, NEAR_FACTOR)
    if mean < LOOK_LOW:
        why = f"{where}, under {LOOK_LOW}"
        return SearchStep("cut_lr", why, mean, first, last, SETTLE_FACTOR)
    why = f"{where}, between {LOOK_LOW} and {LOOK}: the LR is in range"
    return SearchStep("end", why, mean, first, last)


def _raise(why: str, raises: int, mean: float, first: int, last: int, factor: float) -> SearchStep:
    """A raise by ``factor``, unless the search has made its most raises (the end)."""
    if raises >= MAX_MOVES:
        return SearchStep("end", f"{raises} raises made, the most one search makes")
    return SearchStep("raise_lr", why, mean, first, last, factor)


def _near(
    history: list[tuple[int, float]], start: int, raises: int, last_factor: float
) -> SearchStep:
    """After a raise, once a window reads under ALIGNED: the longer NEAR_WINDOW says
    whether the LR is still too low (a smaller raise), overshoots (the last raise is
    undone, in place: a step too far, not damage), or is in range. In range ends the
    search only when the next NEAR_WINDOW steps say so too (NEAR_CONFIRM windows in a
    row): one window in a phase where the loss changes shape can read low at a LR that
    is still far too low, and the search's end is for good."""
    for judged in range(NEAR_CONFIRM):
        found = window_mean(history, start, NEAR_WINDOW, judged * NEAR_WINDOW)
        if isinstance(found, SearchStep):
            return found
        mean, first, last = found
        where = f"alignment {mean:+.2f} over steps {first}-{last}"
        if mean > NEAR:
            return _raise(f"{where}, above {NEAR}", raises, mean, first, last, NEAR_FACTOR)
        if mean < OVERSHOOTING:
            why = f"{where}, under {OVERSHOOTING}: the last raise went too far"
            return SearchStep("undo", why, mean, first, last, 1 / last_factor)
    why = f"{where}, between {OVERSHOOTING} and {NEAR}"
    if NEAR_CONFIRM > 1:
        why += f" as over the {NEAR_WINDOW} steps before"
    return SearchStep("end", f"{why}: the LR is in range", mean, first, last)


def reason(step: SearchStep, factor: float = FACTOR) -> str:
    """The proposal's reason for a raise or a cut by ``factor``."""
    where = f"alignment {step.alignment:+.2f} over steps {step.first}-{step.last}"
    if step.action == "cut_lr" and math.isnan(step.alignment):
        return (
            f"Start-up LR search: the warm-up blew up ({step.why}) - the LR is too high, "
            f"cutting it x{factor:.2g}"
        )
    if step.action == "cut_lr":
        return (
            f"Start-up LR search: updates undo one another ({where}) - the LR is too high, "
            f"cutting it x{factor:.2g}"
        )
    if step.action == "undo":
        return (
            f"Start-up LR search: after the last raise the updates undo one another ({where})"
            f" - taking the raise back (x{factor:.2g}); the search ends here"
        )
    if factor >= FACTOR:
        return (
            f"Start-up LR search: updates keep pointing the same way ({where}) - the LR is "
            "far too low, doubling it"
        )
    return (
        f"Start-up LR search: updates still mostly point the same way ({where}) - the LR "
        f"is still too low, raising it x{factor:.2g}"
    )


def settle_step(history: Iterable[tuple[int, float]], start: int, cuts_made: int) -> SearchStep:
    """After a damage rollback to ``start`` (or the newest cut since): ``cut_lr`` while a
    window's updates still undo one another; ``end`` once SETTLE_CONFIRM windows in a row
    do not (one window can read in range at a LR still too high, as one can read low at a
    LR still too low)."""
    history = list(history)
    for judged in range(SETTLE_CONFIRM):
        found = window_mean(history, start, WINDOW, judged * WINDOW)
        if isinstance(found, SearchStep):
            return found
        mean, first, last = found
        if mean < OVERSHOOTING:
            if cuts_made >= MAX_SETTLES:
                why = f"{cuts_made} cuts made after one rollback"
                return SearchStep("end", why, mean, first, last)
            why = f"alignment {mean:+.2f} over steps {first}-{last}, under {OVERSHOOTING}"
            return SearchStep("cut_lr", why, mean, first, last)
    why = f"alignment {mean:+.2f} over steps {first}-{last}: the steps no longer overshoot"
    return SearchStep("end", why, mean, first, last)


def settle_start(warmup_steps: int, since: int) -> int:
    """The settling's windows count the steps after ``since`` (the rollback, or its newest
    cut), and of a warm-up gone back into only its last WINDOW steps, which run at half the
    LR the rollback left and more (the warm-up's own window); the earlier ones ran at a
    fraction of it."""
    judged = warmup_steps - WINDOW if warmup_steps >= EARLIEST + WINDOW else warmup_steps
    return max(since, judged, EARLIEST)


def settle_reason(step: SearchStep) -> str:
    """The proposal's reason for a cut after a rollback."""
    return (
        f"After the rollback the updates still undo one another (alignment "
        f"{step.alignment:+.2f} over steps {step.first}-{step.last}) - the LR is still too "
        f"high, halving it"
    )


def warmup_step(history: Iterable[tuple[int, float]], warmup_steps: int) -> SearchStep:
    """At the warm-up's last step: ``cut_lr`` when its last :data:`WINDOW` steps overshoot,
    else ``wait`` (the windows after the warm-up decide); a warm-up too short to hold a
    window after :data:`EARLIEST` is not judged."""
    if warmup_steps < EARLIEST + WINDOW:
        return SearchStep("wait", "the warm-up is too short to judge")
    found = window_mean(history, warmup_steps - WINDOW)
    if isinstance(found, SearchStep):
        return SearchStep("wait", found.why)
    mean, first, last = found
    if mean < OVERSHOOTING:
        why = f"alignment {mean:+.2f} over steps {first}-{last} of the warm-up"
        return SearchStep("cut_lr", why, mean, first, last)
    return SearchStep("wait", "the warm-up's updates do not overshoot")


def warmup_blowup(
    history: Iterable[tuple[int, float, float, float]], warmup_steps: int
) -> SearchStep:
    """At the warm-up's last step, with ``(step, loss, gradient norm, alignment)`` of the
    warm-up: ``cut_lr`` when its last :data:`WINDOW` steps hold a gradient spike (the
    controller's own test, ``signals.spike_threshold``, on the warm-up's norms), their
    median loss is above that of the window before them by more than DAMAGE_MARGIN of it
    (what the damage detector calls damage at the least), and their mean alignment is
    under ALIGNED (steps still pointing the same way are a LR too low, whatever one
    batch's gradient does); else ``wait``. Steps so large that they no longer undo one
    another read near 0 in alignment (unrelated, not overshooting): their gradients blow
    up and the loss climbs, which this sees."""
    if warmup_steps < EARLIEST + WINDOW:
        return SearchStep("wait", "the warm-up is too short to judge")
    rows = list(history)
    aligned = [a for s, _, _, a in rows if s > warmup_steps - WINDOW and math.isfinite(a)]
    if aligned and sum(aligned) / len(aligned) >= ALIGNED:
        return SearchStep("wait", "the warm-up's last steps point the same way")
    points = [(s, loss, g) for s, loss, g, _ in rows if 0 < s <= warmup_steps]
    norms = [g for _, _, g in points if math.isfinite(g)]
    last = [p for p in points if p[0] > warmup_steps - WINDOW]
    before = [p for p in points if warmup_steps - 2 * WINDOW < p[0] <= warmup_steps - WINDOW]
    if len(norms) < 2 * WINDOW or len(last) < WINDOW or len(before) < WINDOW:
        return SearchStep("wait", "too few warm-up steps seen")
    median = statistics.median(norms)
    mad = statistics.median(abs(g - median) for g in norms)
    threshold = spike_threshold(median, mad)
    spikes = [(s, g) for s, _, g in last if g > threshold or not math.isfinite(g)]
    level = statistics.median(x for _, x, _ in before)
    rise = statistics.median(x for _, x, _ in last) - level
    if not spikes or not rise > DAMAGE_MARGIN * abs(level):
        return SearchStep("wait", "no gradient spike with a rising loss in the warm-up")
    step, norm = max(spikes, key=lambda p: p[1] if math.isfinite(p[1]) else math.inf)
    first, end = last[0][0], last[-1][0]
    why = (
        f"gradient norm {norm:.3g} at step {step} (the warm-up's median {median:.3g}) and "
        f"the loss up by {rise:.3g} over steps {first}-{end}"
    )
    return SearchStep("cut_lr", why, math.nan, first, end)
