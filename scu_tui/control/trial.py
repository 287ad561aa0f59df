"""The LR trial: the run compares two LRs itself, on the same batches, from the same state.

The update alignment tells a LR far too low (steps keep pointing the same way) and one far
too high (steps undo one another), but not a LR a few times too high from a tuned one: at
3x the tuned LR the alignment, and the gradient norm's trend, read as they do at 1x on
another task, and the damage such a LR does comes in the first steps after the warm-up.
What does tell them apart is the loss itself, compared fairly: from the state at the
warm-up's end, TRIAL_STEPS steps at the LR, then the same TRIAL_STEPS steps again at half
of it, on the same batches in the same order, so the two branches differ in the LR alone.
Each step's loss is paired with the other branch's on the same batch. The lower LR wins
when it is clearly lower: its mean log-loss ratio under -MARGIN and its t-value under
-T_MIN; otherwise the LR stays. The run goes on from the winning branch's last state, and
the start-up search (:mod:`scu_tui.control.search`) from there; the losing branch's steps
count against ``max_steps`` (the work was done), so a trial is held only where they are a
small share of the run.

Measured on the tuning tasks at a constant-then-decay LR (seeds 0-1, 20-step branches from
step 25, each trained on to the run's end; ``python -m bench.controller.paired_trial``):
the halved branch's mean log-loss ratio was -0.06 to -0.38 at 3x the tuned LR (t -3.6 to
-8.1) and -0.01 to +0.08 at the tuned LR; its sign agreed with that of the final
validation loss's change on 46 of 48 branches (halved and doubled, at 0.3x, 1x and 3x). A
doubled branch never won at the tuned LR, so the trial only looks down: a LR too low is
the alignment's to find.

Pure functions: the run (:class:`scu_tui.run.Run`) trains the branches, the controller
(:class:`~scu_tui.control.controller.Controller`) says when a trial is due.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: Steps in each branch.
TRIAL_STEPS = 20
#: The steps of each branch that judge it (its last ones): all of them.
JUDGED = TRIAL_STEPS
#: The factor of the LR tried against the current one.
FACTOR = 0.5
#: The tried LR wins when its mean log-loss ratio is under -MARGIN (about 5 % lower loss)...
MARGIN = 0.05
#: ...and the ratio's t-value (its mean over its standard error) under -T_MIN.
T_MIN = 2.0
#: A trial costs TRIAL_STEPS steps, at most this share of the run: none in a run of under
#: 400 steps. Chosen on the tuning tasks: in their 150-step runs the 20 steps cost 3-7 %
#: of the final validation loss at the tuned LR (0.974 of the runs without it over every
#: LR of the grid), in 600-step runs nothing measurable (``docs/benchmarks.md``).
MAX_COST = 0.05
#: States the trial holds in memory beside the run's kept ones: the one it starts from and
#: the first branch's last (``scu-tui check`` counts them).
KEPT_STATES = 2
#: The steps after a trial, before the run's end, that it needs to be worth its cost.
MIN_STEPS_AFTER = TRIAL_STEPS


@dataclass(frozen=True)
class TrialVerdict:
    """How the tried LR's branch compared with the current LR's."""

    tried_wins: bool
    ratio: float  # mean log(tried / current) of the judged steps' losses; nan: no pairs
    t: float  # its t-value
    current_loss: float  # mean loss of the judged steps, each branch
    tried_loss: float

    def text(self, current_lr: float, tried_lr: float) -> str:
        """One line for the run's log."""
        mean = f"mean training loss of the last {JUDGED} steps on the same batches"
        figures = (
            f"LR {current_lr:.3g}: {self.current_loss:.4g}, LR {tried_lr:.3g}: "
            f"{self.tried_loss:.4g} ({mean}; log ratio {self.ratio:+.3f}, t {self.t:+.1f})"
        )
        if self.tried_wins:
            return f"LR trial: the lower LR is clearly better, the run goes on with it: {figures}"
        return f"LR trial: the lower LR is not clearly better, the LR stays: {figures}"


def announcement(first: int, lr: float) -> str:
    """The line that says, as a trial begins after step ``first``, what the next steps are
    (the loss of the second branch starts again from the first's starting point)."""
    a, b = first + 1, first + TRIAL_STEPS
    return (
        f"LR trial begins: steps {a}-{b} at LR {lr:.3g}, then the same batches again from "
        f"step {first}'s state at LR {lr * FACTOR:.3g} (steps {b + 1}-{b + TRIAL_STEPS}); "
        "the run goes on with the lower LR only if its losses are clearly lower"
    )


def judge(current: Sequence[float], tried: Sequence[float]) -> TrialVerdict:
    """The verdict on two branches' step losses (same batches, same order). A non-finite
    loss in a branch loses it the trial (both: the current LR stays)."""
    a, b = list(current)[-JUDGED:], list(tried)[-JUDGED:]
    finite_a = all(math.isfinite(x) and x > 0 for x in a)
    finite_b = all(math.isfinite(x) and x > 0 for x in b)
    mean_a = statistics.fmean(a) if a else math.nan
    mean_b = statistics.fmean(b) if b else math.nan
    if not (finite_a and finite_b) or len(a) != len(b) or len(a) < 2:
        wins = finite_b and not finite_a and len(b) > 0
        return TrialVerdict(wins, math.nan, math.nan, mean_a, mean_b)
    logs = [math.log(y / x) for x, y in zip(a, b, strict=True)]
    ratio = statistics.fmean(logs)
    se = statistics.stdev(logs) / math.sqrt(len(logs))
    t = ratio / se if se > 0 else (-math.inf if ratio < 0 else math.inf if ratio > 0 else 0.0)
    return TrialVerdict(ratio < -MARGIN and t < -T_MIN, ratio, t, mean_a, mean_b)


def room_for_trial(step: int, max_steps: int) -> bool:
    """Whether a trial starting after ``step`` fits the run: it is long enough for the
    trial's cost to be small, and some steps are left after it."""
    if MAX_COST * max_steps < TRIAL_STEPS:
        return False
    return step + 2 * TRIAL_STEPS + MIN_STEPS_AFTER <= max_steps
