"""The S-SCU controller: the policy plus the memory that makes it safe to act on.

How a run drives it (all plain numbers, on the training thread)::

    controller = Controller(settings.scu, settings.training)
    for every optimizer step:
        controller.observe(step, loss, grad_norm, lr)
        if a validation pass ran:
            controller.observe_eval(step, val_loss)
        proposal = controller.decide(step, knobs)  # None except on some control steps
        if proposal:  (scu_tui.control.steering does this part for a run)
            emit ProposalEvent(**proposal.to_dict())
            auto: apply it        -> controller.record_outcome(proposal.id, Outcome.APPLIED)
            ask:  queue it        -> later ACCEPTED (then applied), VETOED or EXPIRED
            observe: only log it  -> controller.record_outcome(proposal.id, Outcome.OBSERVED)
        analysis = controller.last_analysis   # what it computed, on every control step
        every step: divergence = controller.check_divergence(step, knobs)  # the guard
        if controller.snapshot_due(step): take a state, keep controller.snapshot_taken(step)
        knob "rollback": restore the kept state ``evidence["to_step"]`` (or the newest
            checkpoint) with lr multiplier ``after``,
            then cancelled = controller.notify_rollback(restored_step)
    checkpoint: save controller.state() (JSON); resume: controller.load_state(saved)

Every proposal's life is kept in ``controller.book`` (:class:`ProposalBook`):
:class:`~scu_tui.control.steering.Steering` opens proposals there, answers them and
records outcomes through :meth:`record_outcome`, and writes the metrics file from it.

``knobs`` is ``{"lr": effective lr, "lr_multiplier", "weight_decay", "dropout",
"accumulation"}``; the LR is steered through ``lr_multiplier``, a factor on top of the base
schedule, with ``scu.lr_bounds`` applied to the effective lr.

Safety, on top of the policy's bounds and per-action limits: damage (a loss clearly worse
than at a kept state, judged against the run's own noise) or a non-finite step is caught
on the step itself by the one :class:`DivergenceDetector`, which also says which recent
good states the run keeps and which of them to go back to; a diagnosis must hold
on ``HYSTERESIS_CHECKS`` consecutive checks (divergence acts at once); a knob moves at most
once per ``scu.cooldown`` steps; no LR raise within ``scu.cooldown`` steps of a gradient
spike or a rollback; at most one proposal per control period. After an applied action the
next checks compare its target signal with the value before it, and propose a revert
(rule ``revert_<rule>``) when it got clearly worse; a reverted or vetoed rule backs off.

Memory of effects, so a long run neither flip-flops nor drifts:

- a knob moved one way is not moved back within ``REVERSAL_PERIODS`` control periods,
  unless a safety rule (a rollback, a cut for a rising or unstable loss) or the effect
  check's revert demands it;
- a rule's move is not repeated while the effect of its previous one is still being
  judged; a move with no measurable effect ("flat") backs its rule off like a veto (each
  strike doubles the wait), and only a move that helped clears the strikes;
- a weight-decay or dropout move (:data:`MUST_HELP`) repeats only after one that helped:
  one that did not retires its rule for the rest of the run;
- an LR raise needs ``RAISE_ROOM_PERIODS`` periods before the run's end (its effect check
  and a period at the LR the check leaves); a cut near the end still comes.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scu_tui.config import ScuSettings, TrainingSettings
from scu_tui.control.divergence import Divergence, DivergenceDetector, noise_of
from scu_tui.control.effects import (
    EFFECT_MIN_POINTS,
    EFFECT_Z,
    HELP_Z,
    Effect,
    segment_stats,
)
from scu_tui.control.memory import VAL_HISTORY, Memory
from scu_tui.control.policy import (
    COLLAPSE_LR_FACTOR,
    DAMAGE_LR_FACTOR,
    LR,
    ROLLBACK,
    ROLLBACK_LR_FACTOR,
    Diagnosis,
    Knobs,
    Move,
    Proposal,
    action_text,
    bounded_value,
    choose_move,
    diagnose,
    gradients_stable,
    moves,
    rollback_move,
    validation_stalled,
)
from scu_tui.control.proposals import ProposalBook, ProposalRecord
from scu_tui.control.search import FACTOR as SEARCH_FACTOR
from scu_tui.control.search import (
    SETTLE_FACTOR,
    WARMUP_CUT,
    SearchStep,
    search_step,
    settle_reason,
    settle_start,
    settle_step,
    warmup_blowup,
    warmup_step,
    window_start,
)
from scu_tui.control.search import reason as search_reason
from scu_tui.control.signals import Signals, compute_signals, json_safe
from scu_tui.control.trial import FACTOR as TRIAL_FACTOR
from scu_tui.control.trial import TrialVerdict, room_for_trial
from scu_tui.protocol import TAKEN, Decider, Outcome, Target

OUTCOMES = tuple(Outcome)
REJECTED = (Outcome.VETOED, Outcome.REVERTED)  # the rule backs off

#: The rule of the per-step divergence guard's rollback (acts at once in auto and ask).
GUARD_RULE = ROLLBACK
#: The rule of the start-up LR search's doublings (see :mod:`scu_tui.control.search`).
SEARCH_RULE = "search_lr"
#: ... and of its cuts after a damage rollback while the updates still overshoot.
SETTLE_RULE = "settle_lr_after_rollback"
#: The LR trial's move, when the lower LR won it (:mod:`scu_tui.control.trial`).
TRIAL_RULE = "trial_lr"
#: Consecutive checks with the same diagnosis before a rule acts (divergence: at once).
HYSTERESIS_CHECKS = 2
#: A vetoed or harmful rule is blocked for this many cooldowns (at least control periods),
#: doubled for each further strike, up to MAX_STRIKES.
BACKOFF_COOLDOWNS = 2
MAX_STRIKES = 4
#: Control periods an LR raise needs before the run's end: one for its effect check, one
#: at the LR the check leaves.
RAISE_ROOM_PERIODS = 2
#: A knob moved one way is not moved back (except for safety) within this many periods.
REVERSAL_PERIODS = 25
STATE_VERSION = 3
#: Rules whose moves must show an effect: regularisation acts slowly and weakly on LoRA
#: (on the demo, weight decay 0.01-0.1 changed the validation loss by less than its
#: noise), so one such move whose effect check does not say "helped" retires its rule
#: for the rest of the run, instead of driving its knob to the bound step by step.
MUST_HELP = frozenset({"raise_weight_decay", "raise_dropout"})


@dataclass(frozen=True)
class Analysis:
    """What the S-SCU computed on one control step and what it made of it: the signals,
    the diagnosis, the rule that fired (and its proposal) or why none did, and the effect
    checks judged on the way. Views render this; none recomputes it."""

    step: int
    diagnosis: str
    rule: str | None
    proposal: str | None
    why: str
    signals: Signals
    effects: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        s = self.signals.to_dict()
        return {
            "step": self.step,
            "diagnosis": self.diagnosis,
            "rule": self.rule,
            "proposal": self.proposal,
            "why": self.why,
            "period": s["period"],
            "window": s["window"],
            "nonfinite": s["recent_nonfinite"],
            "trend": s["trend"],
            "gradients": s["gradients"],
            "wavelet": s["wavelet"],
            "validation": s["validation"],
            "effects": list(self.effects),
        }


def rounded(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """Evidence with floats cut to 6 significant digits, for logs people read."""
    return {
        k: float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v
        for k, v in evidence.items()
    }


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


#: What :func:`_newest_answer` says while the newest move still awaits its answer.
WAITS = "waits"


def _newest_answer(made: list[ProposalRecord]) -> str | None:
    """The newest of a sequence of moves (the search's, the settling's): None when it was
    taken (or there is none: go on), :data:`WAITS` while it awaits an answer (hold), or
    what became of it when it was not taken (the sequence ends)."""
    if not made or made[-1].outcome in TAKEN:
        return None
    newest = made[-1]
    return WAITS if newest.outcome is None else f"{newest.id} was {newest.outcome}"


def _answered_rollback_to(record: ProposalRecord, step: int) -> bool:
    """Whether ``record`` is an answered rollback proposal back to ``step`` (the search's
    warm-up cut, the settling's cut from a kept state)."""
    proposal = record.proposal
    return (
        record.outcome is not None
        and proposal.knob == ROLLBACK
        and proposal.evidence.get("to_step") == step
    )


class Controller(Memory):
    """Watches a run step by step and proposes at most one bounded change per control period."""

    def __init__(
        self, scu: ScuSettings, training: TrainingSettings, *, dropout: bool = True
    ) -> None:
        if not dropout:  # nothing to drop out (full fine-tuning): no dropout move, ever
            scu = dataclasses.replace(scu, dropout_bounds=[0.0, 0.0])
        self.scu = scu
        self.training = training
        # (step, loss, grad norm, lr, alignment): alignment is nan when not reported
        Memory.__init__(self)
        self._history = deque(maxlen=scu.window)
        self._detector = DivergenceDetector(scu.snapshots_kept, scu.snapshot_every)
        self._divergence: Divergence | None = None
        self.book = ProposalBook()
        self._judged: list[dict[str, Any]] = []
        self.last_signals: Signals | None = None
        self.last_diagnosis: Diagnosis | None = None
        self.last_analysis: Analysis | None = None
        #: why the start-up LR search ended, once, for the run to say (then None)
        self.search_note: str | None = None

    @property
    def min_history(self) -> int:
        """Steps of history needed before the rules act (divergence needs one)."""
        return min(self.scu.window, 2 * self.scu.control_frequency)

    # --- input --------------------------------------------------------------------------

    def observe(
        self,
        step: int,
        loss: float,
        grad_norm: float,
        lr: float,
        skipped: bool = False,
        alignment: float = math.nan,
    ) -> None:
        """One optimizer step; a step at or before the newest one rewinds (a resume).
        ``alignment`` is the trainer's cos(gradient, momentum), when it reports one."""
        if self._history and step <= self._history[-1][0]:
            self._rewind(step)
        entry = (step, float(loss), float(grad_norm), float(lr), float(alignment))
        self._history.append(entry)
        self._last_step = step
        self._divergence = self._detector.observe(step, loss, grad_norm, skipped)

    def observe_eval(self, step: int, val_loss: float) -> None:
        """A validation pass; the training-loss level at that time is kept for the gap."""
        while self._evals and self._evals[-1][0] >= step:
            self._evals.pop()
        recent = [h[1] for h in self._history][-self.scu.control_frequency :]
        self._evals.append((step, float(val_loss), segment_stats(recent)[0]))
        self._detector.validated(step, val_loss)

    def notify_spike(self, step: int) -> None:
        """A spike seen by the run (loss or gradient): no LR raise for ``cooldown`` steps. One
        after the warm-up also ends the start-up search's raises (:meth:`check_search`)."""
        self._no_raise_until = max(self._no_raise_until, step + self.scu.cooldown)
        if step > self.training.warmup_steps:
            self._spike_after_warmup = max(self._spike_after_warmup, step)

    def notify_rollback(self, step: int, keep: str | None = None) -> list[ProposalRecord]:
        """Training went back to ``step``: forget the abandoned steps, no LR raise for a
        while, and cancel what the abandoned branch proposed or changed (the checkpoint
        restored its knobs); ``keep`` is the rollback's own proposal. Returns the cancelled.
        A rollback ends the start-up search, except the search's own warm-up cut back to
        the run's start: from there it begins again, at once."""
        self._rewind(step + 1)
        self._detector.rolled_back(step)
        restart = self._warmup_cut_to(step)
        if restart:
            # back to the start with a LR certainly not too high: the search begins again
            # from it, and raises it again if the cut went too far
            self._search_from = len(self.book)
        elif self._settle_cut_to(step):
            # the settling's own cut from a kept state: it goes on, its cuts still counted
            self._settle = (step, self._settle[1])
        else:
            self._end_search(step, "a rollback went back to a state from before the damage")
            if self.scu.lr_search:
                self._settle = (step, len(self.book))
        self._divergence = None
        self._last_step = step
        self._no_raise_until = step if restart else step + self.scu.cooldown
        self._streak = ("", 0)
        for record in self.book:
            if record.check == "checking":
                record.check = "done"
        for knob, moved in self._knob_moved_at.items():
            self._knob_moved_at[knob] = min(moved, step)
        undone = [
            r
            for r in self.book.on_branch_after(step)
            if r.id != keep and not self._led_here(r, step)
        ]
        return self.cancel(undone, step)

    def _warmup_cut_to(self, step: int) -> bool:
        """Whether a rollback to ``step`` is the search's warm-up cut (answered, so not the
        guard's going back while the cut waits), back to the run's start, while the search
        is still on."""
        if not self.searching:
            return False
        made = self._search_moves()
        if len(made) != 1 or not made[0].proposal.evidence.get("warmup"):
            return False
        return _answered_rollback_to(made[0], step)

    def _settle_cut_to(self, step: int) -> bool:
        """Whether a rollback to ``step`` is the settling's own cut, from a kept state."""
        if self._settle[0] < 0:
            return False
        made = self.book.of_rule(SETTLE_RULE, self._settle[1])
        return bool(made) and _answered_rollback_to(made[-1], step)

    def _search_moves(self) -> list[ProposalRecord]:
        """The start-up search's proposals since it (re)started."""
        return self.book.of_rule(SEARCH_RULE, self._search_from)

    @staticmethod
    def cancel(records: list[ProposalRecord], step: int) -> list[ProposalRecord]:
        """Close ``records`` as cancelled by a rollback to ``step``; returns them."""
        for record in records:
            record.outcome, record.by = Outcome.CANCELLED, Decider.ROLLBACK
            record.decided_step = step
            record.check = "done"
        return records

    @staticmethod
    def _led_here(record: ProposalRecord, step: int) -> bool:
        """A taken rollback to ``step`` or before: proposed later on the branch it left,
        its return and LR cut are part of the timeline that reaches ``step`` now."""
        to_step = record.proposal.evidence.get("to_step")
        return (
            record.proposal.knob == ROLLBACK
            and record.outcome in TAKEN
            and isinstance(to_step, int)
            and to_step <= step
        )

    def _rewind(self, first_dropped: int) -> None:
        kept = [h for h in self._history if h[0] < first_dropped]
        self._history = deque(kept, maxlen=self.scu.window)
        self._evals = deque((e for e in self._evals if e[0] < first_dropped), maxlen=VAL_HISTORY)
        self._last_check = min(self._last_check, first_dropped - 1)

    # --- analysis -----------------------------------------------------------------------

    def signals(self) -> Signals:
        """The signals of the current window."""
        evals = list(self._evals)
        return compute_signals(
            [h[1] for h in self._history],
            [h[2] for h in self._history],
            [e[0] for e in evals],
            [e[1] for e in evals],
            self.scu,
            train_at_val=[e[2] for e in evals],
            alignments=[h[4] for h in self._history],
        )

    def propose(self, step: int, knobs: Mapping[str, float]) -> tuple[Proposal | None, bool]:
        """The step's one proposal, in the order the run and its replay share: the
        divergence guard on every step, else the start-up search (and the settling after
        a rollback), else the control check. The flag says whether it came from an
        analysis (the control check's, in :attr:`last_analysis`)."""
        early = self.check_divergence(step, knobs) or self.check_search(step, knobs)
        if early is not None:
            return early, False
        return self.decide(step, knobs), True

    def check_divergence(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        """The guard, on every step: a rollback with a lower LR when the newest step was
        non-finite or the loss is damaged (see :mod:`scu_tui.control.divergence`); its
        evidence names the kept state to return to (``to_step``)."""
        found, self._divergence = self._divergence, None
        if found is None:
            return None
        current = Knobs.from_mapping(knobs, self.training)
        before = current.lr_multiplier
        if found.nonfinite:
            factor = ROLLBACK_LR_FACTOR
        else:
            factor = COLLAPSE_LR_FACTOR if found.collapse else DAMAGE_LR_FACTOR
        where = f"step {found.to_step}" if found.to_step is not None else "the last checkpoint"
        what = found.what
        move = Move(
            GUARD_RULE,
            ROLLBACK,
            before * factor,
            -1,
            f"Divergence ({what[0].lower()}{what[1:]}) - rolling back to {where} with a lower LR",
            found.evidence(),
            None,
        )
        return self._issue(step, move, Diagnosis.DIVERGING, before, move.target, None)

    # --- the start-up LR search --------------------------------------------------------

    def check_search(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        """On every step until it ends: a raise of the LR while the updates keep
        pointing the same way (see :mod:`scu_tui.control.search`), and after a damage
        rollback a halving while they still undo one another. Each follows the mode like
        any proposal; one not applied (vetoed, expired, only observed, cancelled by a
        rollback) ends its search, and one still awaiting an answer holds it; the warm-up's
        cut, back to the run's start, starts it again. Why a search ended is left in
        :attr:`search_note`."""
        if not self.scu.lr_search:
            return None
        if self._search_ended_at >= 0:
            return self._check_settle(step, knobs) if self._settle[0] >= 0 else None
        made = self._search_moves()
        answer = _newest_answer(made)
        if answer is not None:
            if answer != WAITS:
                self._end_search(step, f"its proposal {answer}")
            return None
        if made and made[-1].proposal.evidence.get("undo"):
            self._end_search(step, "the last raise went too far and was taken back")
            return None
        if not made and step == self.training.warmup_steps:
            history = ((h[0], h[4]) for h in self._history)
            verdict = warmup_step(history, step)
            if verdict.action != "cut_lr":
                verdict = warmup_blowup(((h[0], h[1], h[2], h[4]) for h in self._history), step)
            if verdict.action == "cut_lr":
                start = self._detector.start(step)
                return self._search_move(step, knobs, verdict, WARMUP_CUT, 1, start)
            return None
        start = window_start(self.training.warmup_steps, made[-1].applied_step if made else -1)
        raises = sum(1 for r in made if r.proposal.after > r.proposal.before)
        last = made[-1].proposal.after / made[-1].proposal.before if made else SEARCH_FACTOR
        history = ((h[0], h[4]) for h in self._history)
        verdict = search_step(history, start, raises, len(made) - raises, last)
        if verdict.action == "wait":
            return None
        if verdict.action == "end":
            self._end_search(step, verdict.why)
            return None
        if verdict.factor > 1 and self._spike_blocks_search(step):
            # a spike says nothing against a cut; against a raise it does, for good
            self._end_search(step, "a gradient spike was seen")
            return None
        return self._search_move(step, knobs, verdict, verdict.factor, len(made) + 1)

    def _search_move(
        self,
        step: int,
        knobs: Mapping[str, float],
        verdict: SearchStep,
        factor: float,
        number: int,
        to_step: int | None = None,
    ) -> Proposal | None:
        """The search's move by ``factor``: a raise in place; a cut as a rollback to
        ``to_step`` when given (the warm-up's cut: the run's start), else to the newest
        kept state as good as the best (in place when there is none before now)."""
        current = Knobs.from_mapping(knobs, self.training)
        before = current.lr_multiplier
        up = factor > 1
        evidence: dict[str, Any] = {**verdict.evidence(), "move": number}
        if to_step is not None:  # the warm-up's cut, back to the run's start
            evidence["warmup"] = 1
        knob: Target = LR
        undo = verdict.action == "undo"  # a raise taken back, in place
        if undo:
            evidence["undo"] = 1
        target = None
        if not (up or undo):
            target = to_step if to_step is not None else self._detector.target()
        if target is not None and target < step:
            # an LR too high since the warm-up may have done damage that a cut in place
            # would leave, and hide from the detector once its good states age out: go
            # back to the newest kept state as good as the best, with the cut (a
            # rollback, which ends the search; settling after it goes on halving)
            knob, evidence["to_step"] = ROLLBACK, target
        after = bounded_value(knob, before, before * factor, current, self.scu)
        if not moves(before, after, 1 if up else -1):
            self._end_search(step, f"the LR is at its bound ({current.lr:.3g})")
            return None
        why = search_reason(verdict, after / before)
        if knob == ROLLBACK:
            why += f" from the kept state of step {target}"
        move = Move(SEARCH_RULE, knob, after, 1 if up else -1, why, evidence, None)
        diagnosis = Diagnosis.TOO_LOW_LR if up else Diagnosis.STATIONARY
        return self._issue(step, move, diagnosis, before, after, None)

    def _check_settle(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        since, first = self._settle
        made = self.book.of_rule(SETTLE_RULE, first)
        answer = _newest_answer(made)
        if answer is not None:
            if answer != WAITS:
                self._end_settle(step, len(made), answer)
            return None
        newest = max(since, made[-1].applied_step if made else -1)
        start = settle_start(self.training.warmup_steps, newest)
        verdict = settle_step(((h[0], h[4]) for h in self._history), start, len(made))
        if verdict.action == "wait":
            return None
        if verdict.action == "end":
            self._end_settle(step, len(made), verdict.why)
            return None
        current = Knobs.from_mapping(knobs, self.training)
        before = current.lr_multiplier
        after = bounded_value(LR, before, before * SETTLE_FACTOR, current, self.scu)
        if not moves(before, after, -1):
            self._end_settle(step, len(made), f"the LR is at its bound ({current.lr:.3g})")
            return None
        evidence = {**verdict.evidence(), "rolled_back_to": since}
        knob: Target = LR
        why = settle_reason(verdict)
        target = self._settle_target(step)
        if target is not None:
            # the steps that overshoot did damage of their own, too little for the damage
            # check in small batches' noise: go back to the newest kept state before it
            knob, evidence["to_step"] = ROLLBACK, target
            why += f" from the kept state of step {target}"
        move = Move(SETTLE_RULE, knob, after, -1, why, evidence, None)
        return self._issue(step, move, Diagnosis.STATIONARY, before, after, None)

    def _settle_target(self, step: int) -> int | None:
        """The kept state a settling's halving goes back to: the newest as good as the best,
        when a kept state after it has a level and so is worse (the overshooting steps did
        damage since); None (a halving in place) when none shows any."""
        target = self._detector.target()
        if target is None or target >= step:
            return None
        levels = self._detector.levels()
        worse = any(s > target and level is not None for s, level in levels.items())
        return target if worse else None

    def _end_settle(self, step: int, cuts: int, why: str) -> None:
        self._settle = (-1, 0)
        if cuts:
            self.search_note = (
                f"Settling after the rollback over at step {step}, after {cuts} "
                f"halving{'s' if cuts != 1 else ''}: {why}"
            )

    def _end_search(self, step: int, why: str) -> None:
        if self._search_ended_at >= 0 or not self.scu.lr_search:
            return
        self._search_ended_at = max(step, 0)
        taken = [r.proposal for r in self.book.of_rule(SEARCH_RULE) if r.outcome in TAKEN]
        ups = sum(1 for p in taken if p.after > p.before)
        downs = len(taken) - ups
        total = math.prod(p.after / p.before for p in taken)
        if ups:
            moved = f"after {ups} raise{'s' if ups != 1 else ''} (LR x{total:.3g} in all)"
        elif downs:
            moved = f"after {downs} cut{'s' if downs != 1 else ''} (LR x{total:.3g} in all)"
        else:
            moved = "with no change"
        self.search_note = f"Start-up LR search over at step {step}, {moved}: {why}"

    @property
    def searching(self) -> bool:
        """Whether the start-up LR search is still on."""
        return self.scu.lr_search and self._search_ended_at < 0

    # --- the LR trial ---------------------------------------------------------------------

    def trial_due(self, step: int, knobs: Mapping[str, float]) -> bool:
        """Whether the run should try half its LR now (:mod:`scu_tui.control.trial`): once,
        at the warm-up's end, before the start-up search's first window, unless the
        warm-up's own check cut the LR there, and with room left in the run. The search
        judges the LR by the updates' alignment; a LR a few times too high reads like a
        tuned one there, and does its damage in the search's first steps."""
        if not (self.scu.lr_search and self.scu.lr_trial) or self._trial_at >= 0:
            return False
        if step != window_start(self.training.warmup_steps, -1) or self.book.of_rule(SEARCH_RULE):
            return False
        if self.book.pending() or not room_for_trial(step, self.training.max_steps):
            return False
        current = Knobs.from_mapping(knobs, self.training)
        before = current.lr_multiplier
        tried = before * TRIAL_FACTOR
        return bounded_value(LR, before, tried, current, self.scu) == tried  # within bounds

    def trial_done(
        self, first: int, step: int, verdict: TrialVerdict, knobs: Mapping[str, float]
    ) -> Proposal | None:
        """The trial from step ``first`` is over at ``step``: the move to the lower LR when
        it won (to be applied: the run is on its branch), else None."""
        self._trial_at = first
        if not verdict.tried_wins:
            return None
        current = Knobs.from_mapping(knobs, self.training)
        before = current.lr_multiplier
        after = before * TRIAL_FACTOR
        lr_before = current.lr
        why = verdict.text(lr_before, lr_before * TRIAL_FACTOR)
        evidence = {
            "first_step": first,
            "log_ratio": verdict.ratio,
            "t": verdict.t,
            "current_loss": verdict.current_loss,
            "tried_loss": verdict.tried_loss,
        }
        move = Move(TRIAL_RULE, LR, after, -1, why, evidence, None)
        return self._issue(step, move, Diagnosis.STATIONARY, before, after, None)

    # --- the kept good states -----------------------------------------------------------

    def snapshot_due(self, step: int) -> bool:
        """Whether the run should keep its state at this step (``scu.snapshot_every``)."""
        return self._detector.due(step)

    def snapshot_taken(self, step: int) -> list[int]:
        """The run kept its state at ``step``; returns the steps of the states to keep."""
        return self._detector.state_taken(step)

    def rollback_target(self) -> int | None:
        """The kept state a rollback goes back to now (None: none is kept)."""
        return self._detector.target()

    def decide(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        """At a control step: analyse, diagnose and maybe propose one change; the analysis
        (with why nothing was proposed, when nothing was) is in :attr:`last_analysis`."""
        if step % self.scu.control_frequency or step == self._last_check or not self._history:
            return None
        self._last_check = step
        signals = self.signals()
        diagnosis = diagnose(signals)
        self.last_signals, self.last_diagnosis = signals, diagnosis
        if signals.gradients.last_spike_age is not None:
            self.notify_spike(self._last_step - signals.gradients.last_spike_age)
        self._judged = []
        proposal, why = self._choose(
            step, signals, diagnosis, Knobs.from_mapping(knobs, self.training)
        )
        self.last_analysis = Analysis(
            step,
            str(diagnosis),
            proposal.rule if proposal else None,
            proposal.id if proposal else None,
            why,
            signals,
            list(self._judged),
        )
        return proposal

    def _choose(
        self, step: int, signals: Signals, diagnosis: Diagnosis, knobs: Knobs
    ) -> tuple[Proposal | None, str]:
        if diagnosis is Diagnosis.DIVERGING:
            self._count(diagnosis)
            return self._rollback(step, signals, knobs)
        if len(self._history) < self.min_history:
            return None, f"warming up: {len(self._history)} of {self.min_history} steps seen"
        if step <= self.training.warmup_steps:
            return None, f"in the LR warm-up (until step {self.training.warmup_steps})"
        self._count(diagnosis)
        revert = self._revert_if_harmful(step, signals, diagnosis, knobs)
        if revert is not None:
            return revert, revert.reason
        return self._propose(step, signals, diagnosis, knobs)

    def _count(self, diagnosis: Diagnosis) -> None:
        seen, count = self._streak
        self._streak = (seen, count + 1) if diagnosis == seen else (str(diagnosis), 1)

    # --- proposals ----------------------------------------------------------------------

    def _rollback(self, step: int, signals: Signals, knobs: Knobs) -> tuple[Proposal | None, str]:
        move = rollback_move(signals, knobs, self._detector.target())
        blocked = self._rule_blocked(move.rule, step)
        if blocked:
            return None, blocked
        before = knobs.lr_multiplier
        after = min(before, bounded_value(ROLLBACK, before, move.target, knobs, self.scu))
        return self._issue(step, move, Diagnosis.DIVERGING, before, after, signals), move.reason

    def _propose(
        self, step: int, signals: Signals, diagnosis: Diagnosis, knobs: Knobs
    ) -> tuple[Proposal | None, str]:
        move = choose_move(diagnosis, signals, knobs, self.scu)
        if move is None:
            return None, self._idle_reason(diagnosis, signals)
        blocked = self._blocked(move, step)
        if blocked:
            return None, f"{move.reason.split(' - ')[0]}; not yet: {blocked}"
        before = knobs.value(move.knob)
        after = bounded_value(move.knob, before, move.target, knobs, self.scu)
        if not moves(before, after, move.direction):
            return (
                None,
                f"{move.reason.split(' - ')[0]}; {move.knob} is at its bound ({before:.3g})",
            )
        return self._issue(step, move, diagnosis, before, after, signals), move.reason

    def _idle_reason(self, diagnosis: Diagnosis, s: Signals) -> str:
        t = s.trend
        per = f"per {s.period} steps"
        if diagnosis is Diagnosis.IMPROVING:
            return (
                f"improving: loss {_pct(-t.relative_improvement)} {per} against a target of "
                f"{_pct(-t.target)}; nothing to change"
            )
        if diagnosis is Diagnosis.SLOW and not gradients_stable(s):
            return "slow progress, but the gradients are too unsteady for a higher LR"
        if diagnosis is Diagnosis.SLOW and validation_stalled(s):
            return "slow progress, but validation no longer follows: a higher LR would fit noise"
        if diagnosis is Diagnosis.OVERFITTING:
            return "overfitting, with weight decay and dropout at their limits"
        return f"{diagnosis}: no rule applies"

    def _blocked(self, move: Move, step: int) -> str | None:
        """Why a rule may not act now, or None when it may."""
        if self._streak[1] < HYSTERESIS_CHECKS:
            return f"seen on {self._streak[1]} check in a row, acting from {HYSTERESIS_CHECKS}"
        blocked = self._rule_blocked(move.rule, step)
        if blocked:
            return blocked
        last = self._last_proposed.get(move.rule)
        if last is not None and step - last < self.scu.cooldown:
            return f"rule {move.rule} proposed at step {last} (cooldown {self.scu.cooldown})"
        moved = self._knob_moved_at.get(move.knob)
        if moved is not None and step - moved < self.scu.cooldown:
            return f"{move.knob} moved at step {moved} (cooldown {self.scu.cooldown})"
        if move.effect_metric is not None:  # safety moves pass the memory of effects
            reversal = self._reversal_blocked(move.knob, move.direction, step)
            if reversal:
                return reversal
            judging = self._unproven(move.rule)
            if judging:
                return judging
        if self._raise_blocked(move.knob, move.direction, step):
            return f"no LR raise until step {self._no_raise_until} (after a spike or rollback)"
        if self._too_late_to_judge(move, step):
            end = self.training.max_steps
            return f"an LR raise now could not be judged and undone before the run's end ({end})"
        return None

    def _too_late_to_judge(self, move: Move, step: int) -> bool:
        """An LR raise needs a period for its effect check and one more at the LR the check
        leaves: nearer the run's end it could only leave the final weights at a higher,
        untested LR (a cut near the end is a settling, and stays allowed)."""
        raise_lr = move.knob == LR and move.direction > 0 and move.effect_metric is not None
        return raise_lr and step + RAISE_ROOM_PERIODS * self.scu.control_frequency > (
            self.training.max_steps
        )

    def _rule_blocked(self, rule: str, step: int) -> str | None:
        """Retired, backed off, or an earlier proposal of this rule still awaits its outcome."""
        if rule in self._retired:
            return f"rule {rule} showed no effect beyond the noise; not used again in this run"
        until = self._blocked_until.get(rule, -1)
        if step < until:
            return f"rule {rule} backed off until step {until}"
        ttl = self.scu.proposal_ttl
        for r in self.book:
            waiting = r.outcome is None and step - r.proposal.step < ttl
            if waiting and r.proposal.rule == rule:
                return f"{r.id} ({rule}) still awaits an answer"
        return None

    def _reversal_blocked(self, knob: str, direction: int, step: int) -> str | None:
        """A knob moved one way stays put in the other for REVERSAL_PERIODS periods."""
        last = self._knob_direction.get(knob)
        if last is None or last[0] == direction:
            return None
        span = REVERSAL_PERIODS * self.scu.control_frequency
        if step - last[1] >= span:
            return None
        way = "raised" if last[0] > 0 else "cut"
        return f"{knob} was {way} at step {last[1]}; not moved back before step {last[1] + span}"

    def _unproven(self, rule: str) -> str | None:
        """The rule's previous move is still being judged (one that did not help has
        backed its rule off already)."""
        taken = [r for r in self.book.of_rule(rule) if r.applied_step >= 0]
        if taken and taken[-1].check == "checking":
            return f"the effect of {taken[-1].id} ({rule}) is still being judged"
        return None

    def _spike_blocks_search(self, step: int) -> bool:
        """A raise by the search is blocked by a gradient spike after the warm-up within the
        cool-down; one inside the warm-up is not held against it: the warm-up's norms ramp
        with its LR, and in small batches one batch's norm can be several times another's."""
        spike = self._spike_after_warmup
        return self._raise_blocked(LR, 1, step) and spike >= 0 and step < spike + self.scu.cooldown

    def _raise_blocked(self, knob: str, direction: int, step: int) -> bool:
        return knob == LR and direction > 0 and step < self._no_raise_until

    def _issue(
        self,
        step: int,
        move: Move,
        diagnosis: Diagnosis,
        before: float,
        after: float,
        signals: Signals | None,
    ) -> Proposal:
        self._counter += 1
        proposal = Proposal(
            id=f"p{self._counter:04d}",
            step=step,
            rule=move.rule,
            diagnosis=str(diagnosis),
            knob=move.knob,
            before=before,
            after=after,
            reason=move.reason,
            action=action_text(move.knob, before, after),
            evidence=rounded(move.evidence),
        )
        baseline, baseline_se = self._baseline(move.effect_metric, signals)
        self.book.add(
            ProposalRecord(
                proposal,
                signals=signals.to_dict() if signals is not None else {},
                metric=move.effect_metric,
                baseline=baseline,
                baseline_se=baseline_se,
                val_trend=signals.validation.trend if signals is not None else 0.0,
            )
        )
        self._last_proposed[move.rule] = step
        return proposal

    def _baseline(self, metric: str | None, signals: Signals | None) -> tuple[float, float]:
        if metric == "loss":
            recent = [h[1] for h in self._history][-self.scu.control_frequency :]
            return segment_stats(recent)
        if metric == "val_loss" and signals is not None and signals.validation.loss is not None:
            return signals.validation.loss, 0.0
        return math.nan, math.nan

    # --- outcomes, back-off and the effect check ----------------------------------------

    def record_outcome(
        self,
        proposal_id: str,
        outcome: Outcome,
        by: Decider | None = None,
        step: int | None = None,
    ) -> list[ProposalRecord]:
        """What became of a proposal; only applied/accepted ones move cooldowns and get
        checked. Returns the further records this closes (a revert closes what it undoes)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome '{outcome}' (known: {', '.join(OUTCOMES)})")
        record = self.book.get(proposal_id)
        if record is None:
            return []
        at = max(self._last_step, record.proposal.step) if step is None else step
        record.outcome, record.by, record.decided_step = Outcome(outcome), by, at
        closed: list[ProposalRecord] = []
        if outcome in TAKEN:
            if record.check == "issued":
                self._take(record, at)
            reverted = self.book.get(str(record.proposal.evidence.get("reverts", "")))
            if record.proposal.rule.startswith("revert_") and reverted is not None:
                reverted.outcome, reverted.by, reverted.decided_step = (
                    Outcome.REVERTED,
                    Decider.CONTROLLER,
                    at,
                )
                closed.append(reverted)
        elif outcome in REJECTED:
            record.check = "done"
            self._back_off(record.proposal.rule, at)
        elif record.check == "issued":
            record.check = "done"
        return closed

    def _take(self, record: ProposalRecord, step: int) -> None:
        knob = record.proposal.knob
        self._knob_moved_at[LR if knob == ROLLBACK else knob] = step
        p = record.proposal
        if p.after != p.before and p.rule != SEARCH_RULE:  # the search locks no direction
            direction = 1 if p.after > p.before else -1
            self._knob_direction[LR if knob == ROLLBACK else knob] = (direction, step)
        if knob == ROLLBACK:
            self._no_raise_until = max(self._no_raise_until, step + self.scu.cooldown)
        record.check = "checking" if record.metric else "done"
        record.applied_step = step

    def _back_off(self, rule: str, step: int) -> None:
        strikes = min(self._strikes.get(rule, 0) + 1, MAX_STRIKES)
        self._strikes[rule] = strikes
        span = BACKOFF_COOLDOWNS * max(self.scu.cooldown, self.scu.control_frequency)
        until = step + span * 2 ** (strikes - 1)
        self._blocked_until[rule] = max(self._blocked_until.get(rule, -1), until)

    def _revert_if_harmful(
        self, step: int, signals: Signals, diagnosis: Diagnosis, knobs: Knobs
    ) -> Proposal | None:
        for record in self.book:
            if record.check != "checking":
                continue
            effect = self._effect(record, step)
            if effect is None:
                continue
            record.check = "done"
            record.effect = effect.to_dict(step, record.metric)
            self._judged.append({"id": record.id, **record.effect})
            if effect.helped:
                self._strikes.pop(record.proposal.rule, None)
                continue
            if record.proposal.rule in MUST_HELP:  # no effect told from noise: never again
                self._retired.add(record.proposal.rule)
            if not effect.worse:  # no measurable effect: that rule waits longer
                self._back_off(record.proposal.rule, step)
                continue
            self._back_off(record.proposal.rule, step)
            proposal = self._revert(step, record, effect, signals, diagnosis, knobs)
            if proposal is not None:
                return proposal
        return None

    def _effect(self, record: ProposalRecord, step: int) -> Effect | None:
        """The verdict on an applied action, or None while there is too little data."""
        if record.metric == "val_loss":
            return self._val_effect(record, step)
        after = [h[1] for h in self._history if h[0] > record.applied_step]
        if len(after) < max(EFFECT_MIN_POINTS, self.scu.control_frequency // 2):
            return None
        median, se = segment_stats(after)
        spread = math.hypot(se, record.baseline_se)
        margin = max(EFFECT_Z * spread, self.scu.target_loss_improvement * abs(record.baseline))
        change = median - record.baseline
        helped = change < 0 and -change > HELP_Z * spread
        return Effect(change > margin, record.baseline, median, "Loss", helped)

    def _val_effect(self, record: ProposalRecord, step: int) -> Effect | None:
        """Validation after the action against its pre-action trend, plus one target."""
        later = [e for e in self._evals if e[0] > record.applied_step and math.isfinite(e[1])]
        if not later:
            give_up = (
                record.applied_step + self.training.eval_every + 2 * self.scu.control_frequency
            )
            return (
                Effect(False, record.baseline, math.nan, "Validation") if step > give_up else None
            )
        eval_step, val_loss = later[0][0], later[0][1]
        periods = (eval_step - record.proposal.step) / self.scu.control_frequency
        expected = record.baseline * (1 + max(record.val_trend, 0.0) * periods)
        margin = self.scu.target_loss_improvement * abs(record.baseline)
        worse = val_loss > expected + margin
        # helped: a fall the run's own validation noise does not explain (too few passes
        # before the move to know that noise: it cannot be told, so not helped)
        before = [e[1] for e in self._evals if e[0] <= record.applied_step][-VAL_HISTORY:]
        noise = noise_of(before)
        told = max(0.5 * margin, HELP_Z * math.sqrt(2.0) * noise) if math.isfinite(noise) else None
        helped = told is not None and val_loss < min(expected, record.baseline) - told
        return Effect(worse, record.baseline, val_loss, "Validation loss", helped)

    def _revert(
        self,
        step: int,
        record: ProposalRecord,
        effect: Effect,
        signals: Signals,
        diagnosis: Diagnosis,
        knobs: Knobs,
    ) -> Proposal | None:
        old = record.proposal
        direction = 1 if old.before > old.after else -1
        if self._raise_blocked(old.knob, direction, step):
            return None
        before = knobs.value(old.knob)
        after = bounded_value(old.knob, before, old.before, knobs, self.scu)
        if not moves(before, after, direction):
            return None
        reason = (
            f"{effect.what} rose from {effect.before:.4g} to {effect.after:.4g} "
            f"after {old.action} - reverting"
        )
        evidence = {"reverts": old.id, "before": effect.before, "after": effect.after}
        move = Move(f"revert_{old.rule}", old.knob, old.before, direction, reason, evidence, None)
        return self._issue(step, move, diagnosis, before, after, signals)

    # --- checkpoint state ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as JSON data (non-finite floats as strings)."""
        data = {
            "version": STATE_VERSION,
            **self.memory_state(),
            "detector": self._detector.state(),
            "book": self.book.state(),
        }
        return dict(json_safe(data))

    def load_state(self, data: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (possibly through JSON)."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"controller state version {data.get('version')!r} is not supported")
        self.load_memory(data)
        self._detector.load_state(data["detector"])
        self.book.load_state(data["book"])
        self.last_signals, self.last_diagnosis, self.last_analysis = None, None, None
