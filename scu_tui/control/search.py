"""The start-up LR search: the first steps after the warm-up find the LR's scale.

Creeping up from a far too low LR by one bounded move per control period takes most of a
short run (x1.5, or x2, per period, each judged before the next). The search uses the
first steps instead: while the update alignment (the cosine between each gradient and
the optimizer's momentum) stays high over a short window, the steps still point the
same way and the LR is far too low, so it is doubled and the next window judged; while
it stays clearly negative, the steps undo one another and the LR is halved. The first
window in between (or one that asks for the other direction) ends the search for good;
the controller's rules take over from there. An overshoot has its safe return: the
damage rollback goes back to a kept state from before it, with a cut, and a rollback
ends the search.

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
from collections.abc import Iterable
from dataclasses import dataclass

#: Steps judged per window: the mean of this many alignments decides each doubling.
WINDOW = 5
#: Mean alignment over a window above this says the LR is far too low (the same level
#: as the controller's x2 raise, ``policy.ALIGN_FAR_TOO_LOW``).
ALIGNED = 0.3
#: The factor of each move.
FACTOR = 2.0
#: At most this many doublings in one run (x1024), whatever the LR bounds allow.
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


#: The warm-up's last WINDOW steps run at 0.5-1x the LR it ramps to: a mean alignment
#: under OVERSHOOTING there says even those overshoot (tuning tasks at a constant LR:
#: 0.25-0.67 at the tuned LR, -0.08 to +0.07 at 3x, -0.26 to -0.11 at 10x, where the
#: windows after the warm-up read near 0: steps that large no longer undo one another,
#: they are unrelated). The LR is cut by this factor, going back to before the damage.
WARMUP_CUT = 0.25


@dataclass(frozen=True)
class SearchStep:
    """What the search says on one step: ``raise_lr`` (double it), ``end`` (over for
    good, ``why`` says why) or ``wait`` (too few steps seen in the window)."""

    action: str  # "raise_lr" | "end" | "wait"
    why: str
    alignment: float = math.nan  # the window's mean
    first: int = -1  # the window's steps
    last: int = -1

    def evidence(self) -> dict[str, float | int]:
        """What a proposal made from this verdict shows as its evidence."""
        return {"alignment": self.alignment, "first_step": self.first, "last_step": self.last}


def window_start(warmup_steps: int, last_move_step: int) -> int:
    """The window starts after the warm-up, after the newest move, and not before
    :data:`EARLIEST`; the steps after the returned one count."""
    return max(warmup_steps, last_move_step, EARLIEST)


def _window(
    history: Iterable[tuple[int, float]], start: int
) -> SearchStep | tuple[float, int, int]:
    """The first :data:`WINDOW` finite alignments after ``start``: (mean, first step, last
    step), or the verdict when there are too few (wait, or end: none reported)."""
    after = [(s, a) for s, a in history if s > start]
    points = [(s, a) for s, a in after if math.isfinite(a)]
    if len(points) < WINDOW:
        if len(after) >= 2 * WINDOW:  # an optimizer (or a stream) without an alignment
            return SearchStep("end", f"no update alignment reported in {len(after)} steps")
        return SearchStep("wait", f"{len(points)} of {WINDOW} aligned steps seen")
    window = points[:WINDOW]
    return sum(a for _, a in window) / WINDOW, window[0][0], window[-1][0]


def search_step(
    history: Iterable[tuple[int, float]], start: int, raises: int, cuts: int = 0
) -> SearchStep:
    """Judge the window of ``(step, alignment)`` after step ``start``, the search having
    made ``raises`` doublings or ``cuts`` halvings so far (never both: the first window
    sets the direction, and a window that asks for the other one ends the search)."""
    found = _window(history, start)
    if isinstance(found, SearchStep):
        return found
    mean, first, last = found
    where = f"alignment {mean:+.2f} over steps {first}-{last}"
    if mean > ALIGNED and not cuts:
        if raises >= MAX_MOVES:
            return SearchStep("end", f"{raises} doublings made, the most one search makes")
        return SearchStep("raise_lr", f"{where}, above {ALIGNED}", mean, first, last)
    if mean < OVERSHOOTING and not raises:
        if cuts >= MAX_SETTLES:
            return SearchStep("end", f"{cuts} halvings made, the most one search makes")
        return SearchStep("cut_lr", f"{where}, under {OVERSHOOTING}", mean, first, last)
    if raises and mean < OVERSHOOTING:
        why = f"{where}: the last doubling overshot, the rules take it from here"
    elif cuts and mean > ALIGNED:
        why = f"{where}: the last halving undershot, the rules take it from here"
    else:
        why = f"{where}, between {OVERSHOOTING} and {ALIGNED}: the LR is in range"
    return SearchStep("end", why, mean, first, last)


def reason(step: SearchStep, factor: float = FACTOR) -> str:
    """The proposal's reason for a raise or a cut by ``factor``."""
    where = f"alignment {step.alignment:+.2f} over steps {step.first}-{step.last}"
    if step.action == "cut_lr":
        return (
            f"Start-up LR search: updates undo one another ({where}) - the LR is too high, "
            f"cutting it x{factor:.2g}"
        )
    return (
        f"Start-up LR search: updates keep pointing the same way ({where}) - the LR is far "
        "too low, doubling it"
    )


def settle_step(history: Iterable[tuple[int, float]], start: int, cuts_made: int) -> SearchStep:
    """After a damage rollback to ``start`` (or the newest cut since): ``cut_lr`` while the
    window's updates still undo one another, else ``end``."""
    found = _window(history, start)
    if isinstance(found, SearchStep):
        return found
    mean, first, last = found
    if mean >= OVERSHOOTING:
        why = f"alignment {mean:+.2f} over steps {first}-{last}: the steps no longer overshoot"
        return SearchStep("end", why, mean, first, last)
    if cuts_made >= MAX_SETTLES:
        return SearchStep("end", f"{cuts_made} cuts made after one rollback", mean, first, last)
    why = f"alignment {mean:+.2f} over steps {first}-{last}, under {OVERSHOOTING}"
    return SearchStep("cut_lr", why, mean, first, last)


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
    found = _window(history, warmup_steps - WINDOW)
    if isinstance(found, SearchStep):
        return SearchStep("wait", found.why)
    mean, first, last = found
    if mean < OVERSHOOTING:
        why = f"alignment {mean:+.2f} over steps {first}-{last} of the warm-up"
        return SearchStep("cut_lr", why, mean, first, last)
    return SearchStep("wait", "the warm-up's updates do not overshoot")
