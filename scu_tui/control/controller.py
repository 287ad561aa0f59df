"""The S-SCU controller: the policy plus the memory that makes it safe to act on.

How a run drives it (all plain numbers, on the training thread)::

    controller = Controller(settings.scu, settings.training)
    for every optimizer step:
        controller.observe(step, loss, grad_norm, lr)
        if a validation pass ran:
            controller.observe_eval(step, val_loss)
        proposal = controller.decide(step, knobs)  # None except on some control steps
        if proposal:
            emit ProposalEvent(**proposal.to_dict())
            auto: apply it        -> controller.record_outcome(proposal.id, "applied")
            ask:  queue it        -> later "accepted" (then applied), "vetoed" or "expired"
            observe: only log it  -> controller.record_outcome(proposal.id, "observed")
        knob "rollback": restore the last good checkpoint with lr multiplier ``after``,
            then controller.notify_rollback(checkpoint_step)
    checkpoint: save controller.state() (JSON); resume: controller.load_state(saved)

``knobs`` is ``{"lr": effective lr, "lr_multiplier", "weight_decay", "dropout",
"accumulation"}``; the LR is steered through ``lr_multiplier``, a factor on top of the base
schedule, with ``scu.lr_bounds`` applied to the effective lr.

Safety, on top of the policy's bounds and per-action limits: a diagnosis must hold on
``HYSTERESIS_CHECKS`` consecutive checks (divergence acts at once); a knob moves at most
once per ``scu.cooldown`` steps; no LR raise within ``scu.cooldown`` steps of a gradient
spike or a rollback; at most one proposal per control period. After an applied action the
next checks compare its target signal with the value before it, and propose a revert
(rule ``revert_<rule>``) when it got clearly worse; a reverted or vetoed rule backs off.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scu_tui.config import ScuSettings, TrainingSettings
from scu_tui.control.policy import (
    ERRATIC_ROLLBACK,
    LR,
    ROLLBACK,
    Diagnosis,
    Knobs,
    Move,
    Proposal,
    action_text,
    bounded_value,
    choose_move,
    diagnose,
    moves,
    rollback_move,
)
from scu_tui.control.signals import MAD_TO_SIGMA, Signals, compute_signals, json_safe

OUTCOMES = ("applied", "accepted", "vetoed", "expired", "reverted", "observed")
TAKEN = ("applied", "accepted")  # the knob moved: start the cooldown and the effect check
REJECTED = ("vetoed", "reverted")  # the rule backs off

#: Consecutive checks with the same diagnosis before a rule acts (divergence: at once).
HYSTERESIS_CHECKS = 2
#: A vetoed or harmful rule is blocked for this many cooldowns (at least control periods),
#: doubled for each further strike, up to MAX_STRIKES.
BACKOFF_COOLDOWNS = 2
MAX_STRIKES = 4
#: The effect check: a loss is "clearly worse" when its median rose by more than EFFECT_Z
#: standard errors and by more than one period's target improvement.
EFFECT_Z = 3.0
#: Losses after an action needed before its effect is judged (and at least half a period).
EFFECT_MIN_POINTS = 8
#: Standard error of a median, in standard deviations times 1/sqrt(n), for normal data.
MEDIAN_SE_FACTOR = 1.2533
#: Validation passes remembered (the trend uses the newest few).
VAL_HISTORY = 8
#: Proposals remembered for their outcome and effect check.
MAX_RECORDS = 64
STATE_VERSION = 1


@dataclass
class ActionRecord:
    """A proposal the controller remembers: until its outcome, then through its effect check."""

    id: str
    rule: str
    knob: str
    before: float
    after: float
    step: int
    action: str
    metric: str | None  # "loss" | "val_loss" | None: what the effect check compares
    baseline: float  # the metric when proposed (loss: median of the newest period)
    baseline_se: float
    val_trend: float  # validation trend when proposed (relative per period)
    status: str = "issued"  # issued | checking | done
    applied_step: int = -1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionRecord:
        floats = ("before", "after", "baseline", "baseline_se", "val_trend")
        values: dict[str, Any] = {k: float(v) if k in floats else v for k, v in data.items()}
        return cls(**values)


@dataclass(frozen=True)
class Effect:
    """The effect check's verdict on one applied action."""

    worse: bool
    before: float
    after: float
    what: str  # "Loss" | "Validation loss"


def segment_stats(values: Iterable[float]) -> tuple[float, float]:
    """(median, standard error of the median) of the finite values."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return math.nan, math.nan
    median = float(np.median(data))
    mad = float(np.median(np.abs(data - median)))
    return median, MEDIAN_SE_FACTOR * MAD_TO_SIGMA * mad / math.sqrt(data.size)


def rounded(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """Evidence with floats cut to 6 significant digits, for logs people read."""
    return {
        k: float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v
        for k, v in evidence.items()
    }


class Controller:
    """Watches a run step by step and proposes at most one bounded change per control period."""

    def __init__(self, scu: ScuSettings, training: TrainingSettings) -> None:
        self.scu = scu
        self.training = training
        self._history: deque[tuple[int, float, float, float]] = deque(maxlen=scu.window)
        self._evals: deque[tuple[int, float, float]] = deque(maxlen=VAL_HISTORY)
        self._last_step = -1
        self._last_check = -1
        self._counter = 0
        self._streak_diagnosis = ""
        self._streak_count = 0
        self._knob_moved_at: dict[str, int] = {}
        self._blocked_until: dict[str, int] = {}
        self._strikes: dict[str, int] = {}
        self._last_proposed: dict[str, int] = {}
        self._no_raise_until = -1
        self._records: dict[str, ActionRecord] = {}
        self.last_signals: Signals | None = None
        self.last_diagnosis: Diagnosis | None = None

    @property
    def min_history(self) -> int:
        """Steps of history needed before the rules act (divergence needs one)."""
        return min(self.scu.window, 2 * self.scu.control_frequency)

    # --- input --------------------------------------------------------------------------

    def observe(self, step: int, loss: float, grad_norm: float, lr: float) -> None:
        """One optimizer step; a step at or before the newest one rewinds (a resume)."""
        if self._history and step <= self._history[-1][0]:
            self._rewind(step)
        self._history.append((step, float(loss), float(grad_norm), float(lr)))
        self._last_step = step

    def observe_eval(self, step: int, val_loss: float) -> None:
        """A validation pass; the training-loss level at that time is kept for the gap."""
        while self._evals and self._evals[-1][0] >= step:
            self._evals.pop()
        recent = [h[1] for h in self._history][-self.scu.control_frequency :]
        self._evals.append((step, float(val_loss), segment_stats(recent)[0]))

    def notify_spike(self, step: int) -> None:
        """A spike seen by the run (loss or gradient): no LR raise for ``cooldown`` steps."""
        self._no_raise_until = max(self._no_raise_until, step + self.scu.cooldown)

    def notify_rollback(self, step: int) -> None:
        """Training went back to ``step``: forget the abandoned steps, no LR raise for a while."""
        self._rewind(step + 1)
        self._last_step = step
        self._no_raise_until = step + self.scu.cooldown
        self._streak_diagnosis, self._streak_count = "", 0
        for record in self._records.values():
            if record.status == "checking":
                record.status = "done"
        for knob, moved in self._knob_moved_at.items():
            self._knob_moved_at[knob] = min(moved, step)

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
        )

    def decide(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        """At a control step: analyse, diagnose and maybe propose one change."""
        if step % self.scu.control_frequency or step == self._last_check or not self._history:
            return None
        self._last_check = step
        signals = self.signals()
        diagnosis = diagnose(signals)
        self.last_signals, self.last_diagnosis = signals, diagnosis
        if signals.gradients.last_spike_age is not None:
            self.notify_spike(self._last_step - signals.gradients.last_spike_age)
        current = Knobs.from_mapping(knobs, self.training)
        if diagnosis is Diagnosis.DIVERGING:
            self._count(diagnosis)
            return self._rollback(step, signals, current)
        if len(self._history) < self.min_history or step <= self.training.warmup_steps:
            return None
        self._count(diagnosis)
        return self._revert_if_harmful(step, signals, diagnosis, current) or self._propose(
            step, signals, diagnosis, current
        )

    def _count(self, diagnosis: Diagnosis) -> None:
        if diagnosis == self._streak_diagnosis:
            self._streak_count += 1
        else:
            self._streak_diagnosis, self._streak_count = str(diagnosis), 1

    # --- proposals ----------------------------------------------------------------------

    def _rollback(self, step: int, signals: Signals, knobs: Knobs) -> Proposal | None:
        move = rollback_move(signals, knobs)
        if not self._rule_free(move.rule, step):
            return None
        before = knobs.lr_multiplier
        after = min(before, bounded_value(ROLLBACK, before, move.target, knobs, self.scu))
        if move.rule == ERRATIC_ROLLBACK and not moves(before, after, -1):
            return None  # erratic at the LR floor: going back with the same LR changes nothing
        return self._issue(step, move, Diagnosis.DIVERGING, before, after, signals)

    def _propose(
        self, step: int, signals: Signals, diagnosis: Diagnosis, knobs: Knobs
    ) -> Proposal | None:
        move = choose_move(diagnosis, signals, knobs, self.scu)
        if move is None or not self._allowed(move, step):
            return None
        before = knobs.value(move.knob)
        after = bounded_value(move.knob, before, move.target, knobs, self.scu)
        if not moves(before, after, move.direction):
            return None
        return self._issue(step, move, diagnosis, before, after, signals)

    def _allowed(self, move: Move, step: int) -> bool:
        return (
            self._streak_count >= HYSTERESIS_CHECKS
            and self._rule_free(move.rule, step)
            and step - self._last_proposed.get(move.rule, -(10**9)) >= self.scu.cooldown
            and self._knob_free(move.knob, step)
            and not self._raise_blocked(move.knob, move.direction, step)
        )

    def _rule_free(self, rule: str, step: int) -> bool:
        """Not backed off, and no earlier proposal of this rule still awaiting its outcome."""
        if step < self._blocked_until.get(rule, -1):
            return False
        ttl = self.scu.proposal_ttl
        return not any(
            r.rule == rule and r.status == "issued" and step - r.step < ttl
            for r in self._records.values()
        )

    def _knob_free(self, knob: str, step: int) -> bool:
        moved = self._knob_moved_at.get(knob)
        return moved is None or step - moved >= self.scu.cooldown

    def _raise_blocked(self, knob: str, direction: int, step: int) -> bool:
        return knob == LR and direction > 0 and step < self._no_raise_until

    def _issue(
        self,
        step: int,
        move: Move,
        diagnosis: Diagnosis,
        before: float,
        after: float,
        signals: Signals,
    ) -> Proposal:
        self._counter += 1
        proposal_id = f"p{self._counter:04d}"
        action = action_text(move.knob, before, after)
        baseline, baseline_se = self._baseline(move.effect_metric, signals)
        record = ActionRecord(
            proposal_id,
            move.rule,
            move.knob,
            before,
            after,
            step,
            action,
            move.effect_metric,
            baseline,
            baseline_se,
            signals.validation.trend,
        )
        self._remember(record)
        self._last_proposed[move.rule] = step
        return Proposal(
            id=proposal_id,
            step=step,
            rule=move.rule,
            diagnosis=str(diagnosis),
            knob=move.knob,
            before=before,
            after=after,
            reason=move.reason,
            action=action,
            evidence=rounded(move.evidence),
        )

    def _baseline(self, metric: str | None, signals: Signals) -> tuple[float, float]:
        if metric == "loss":
            recent = [h[1] for h in self._history][-self.scu.control_frequency :]
            return segment_stats(recent)
        if metric == "val_loss" and signals.validation.loss is not None:
            return signals.validation.loss, 0.0
        return math.nan, math.nan

    def _remember(self, record: ActionRecord) -> None:
        self._records[record.id] = record
        while len(self._records) > MAX_RECORDS:
            done = [k for k, r in self._records.items() if r.status == "done"]
            del self._records[done[0] if done else next(iter(self._records))]

    # --- outcomes, back-off and the effect check ----------------------------------------

    def record_outcome(self, proposal_id: str, outcome: str) -> None:
        """What became of a proposal; only applied/accepted ones move cooldowns and get checked."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome '{outcome}' (known: {', '.join(OUTCOMES)})")
        record = self._records.get(proposal_id)
        if record is None:
            return
        step = max(self._last_step, record.step)
        if outcome in TAKEN:
            if record.status == "issued":
                self._take(record, step)
        elif outcome in REJECTED:
            record.status = "done"
            self._back_off(record.rule, step)
        elif record.status == "issued":
            record.status = "done"

    def _take(self, record: ActionRecord, step: int) -> None:
        self._knob_moved_at[LR if record.knob == ROLLBACK else record.knob] = step
        if record.knob == ROLLBACK:
            self._no_raise_until = max(self._no_raise_until, step + self.scu.cooldown)
        record.status = "checking" if record.metric else "done"
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
        for record in list(self._records.values()):
            if record.status != "checking":
                continue
            effect = self._effect(record, step)
            if effect is None:
                continue
            record.status = "done"
            if not effect.worse:
                self._strikes.pop(record.rule, None)
                continue
            self._back_off(record.rule, step)
            proposal = self._revert(step, record, effect, signals, diagnosis, knobs)
            if proposal is not None:
                return proposal
        return None

    def _effect(self, record: ActionRecord, step: int) -> Effect | None:
        """The verdict on an applied action, or None while there is too little data."""
        if record.metric == "val_loss":
            return self._val_effect(record, step)
        after = [h[1] for h in self._history if h[0] > record.applied_step]
        if len(after) < max(EFFECT_MIN_POINTS, self.scu.control_frequency // 2):
            return None
        median, se = segment_stats(after)
        noise = EFFECT_Z * math.hypot(se, record.baseline_se)
        margin = max(noise, self.scu.target_loss_improvement * abs(record.baseline))
        return Effect(median - record.baseline > margin, record.baseline, median, "Loss")

    def _val_effect(self, record: ActionRecord, step: int) -> Effect | None:
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
        periods = (eval_step - record.step) / self.scu.control_frequency
        expected = record.baseline * (1 + max(record.val_trend, 0.0) * periods)
        margin = self.scu.target_loss_improvement * abs(record.baseline)
        return Effect(val_loss > expected + margin, record.baseline, val_loss, "Validation loss")

    def _revert(
        self,
        step: int,
        record: ActionRecord,
        effect: Effect,
        signals: Signals,
        diagnosis: Diagnosis,
        knobs: Knobs,
    ) -> Proposal | None:
        direction = 1 if record.before > record.after else -1
        if self._raise_blocked(record.knob, direction, step):
            return None
        before = knobs.value(record.knob)
        after = bounded_value(record.knob, before, record.before, knobs, self.scu)
        if not moves(before, after, direction):
            return None
        reason = (
            f"{effect.what} rose from {effect.before:.4g} to {effect.after:.4g} "
            f"after {record.action} - reverting"
        )
        evidence = {"reverts": record.id, "before": effect.before, "after": effect.after}
        rule = f"revert_{record.rule}"
        move = Move(rule, record.knob, record.before, direction, reason, evidence, None)
        return self._issue(step, move, diagnosis, before, after, signals)

    # --- checkpoint state ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as JSON data (non-finite floats as strings)."""
        data = {
            "version": STATE_VERSION,
            "history": [list(h) for h in self._history],
            "evals": [list(e) for e in self._evals],
            "last_step": self._last_step,
            "last_check": self._last_check,
            "counter": self._counter,
            "streak": [self._streak_diagnosis, self._streak_count],
            "knob_moved_at": dict(self._knob_moved_at),
            "blocked_until": dict(self._blocked_until),
            "strikes": dict(self._strikes),
            "last_proposed": dict(self._last_proposed),
            "no_raise_until": self._no_raise_until,
            "records": [asdict(r) for r in self._records.values()],
        }
        return dict(json_safe(data))

    def load_state(self, data: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (possibly through JSON)."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"controller state version {data.get('version')!r} is not supported")
        self._history = deque(
            ((int(s), float(loss), float(g), float(lr)) for s, loss, g, lr in data["history"]),
            maxlen=self.scu.window,
        )
        self._evals = deque(
            ((int(s), float(v), float(t)) for s, v, t in data["evals"]), maxlen=VAL_HISTORY
        )
        self._last_step = int(data["last_step"])
        self._last_check = int(data["last_check"])
        self._counter = int(data["counter"])
        self._streak_diagnosis, self._streak_count = str(data["streak"][0]), int(data["streak"][1])
        self._knob_moved_at = {str(k): int(v) for k, v in data["knob_moved_at"].items()}
        self._blocked_until = {str(k): int(v) for k, v in data["blocked_until"].items()}
        self._strikes = {str(k): int(v) for k, v in data["strikes"].items()}
        self._last_proposed = {str(k): int(v) for k, v in data["last_proposed"].items()}
        self._no_raise_until = int(data["no_raise_until"])
        records = (ActionRecord.from_dict(r) for r in data["records"])
        self._records = {r.id: r for r in records}
        self.last_signals, self.last_diagnosis = None, None
