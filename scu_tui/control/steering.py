"""A proposal's life, in one place: from the controller's proposal to what became of it.

The controller analyses and proposes; :class:`Steering` does the rest. It opens each
proposal in the S-SCU mode of the moment (auto: applied; ask: pending until answered or
until ``scu.proposal_ttl`` steps pass; observe: only logged), answers a pending one by id,
applies it through the run's knobs, records the outcome (and with it the start of the
effect check) in the controller's :class:`~scu_tui.control.proposals.ProposalBook`, and
goes back to the last checkpoint when a proposal is a rollback.

The run calls it once per step (:meth:`Steering.step`) and for every command
(:meth:`Steering.command`); what it needs of the run is the small :class:`SteeredRun`
interface, so this module, like all of :mod:`scu_tui.control`, never imports MLX.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from scu_tui.control.controller import Controller
from scu_tui.control.policy import ROLLBACK, Proposal
from scu_tui.control.proposals import ProposalBook
from scu_tui.control.trial import FACTOR as TRIAL_FACTOR
from scu_tui.control.trial import TRIAL_STEPS, TrialVerdict
from scu_tui.control.trial import announcement as trial_announcement
from scu_tui.protocol import (
    AnalysisEvent,
    Command,
    CommandKind,
    Decider,
    DecisionEvent,
    Event,
    Knob,
    MessageEvent,
    MessageLevel,
    Mode,
    ModeEvent,
    Outcome,
    ProposalEvent,
    RefusedEvent,
    RollbackEvent,
    TrialEvent,
    TrialStartEvent,
)

#: A run that needs more than this many rollbacks with no progress in between has failed.
#: Progress: a new best validation loss, or training past the step of the last rollback.
MAX_ROLLBACKS = 5
#: The key of the rollback counters in the state a checkpoint keeps (beside the
#: controller's own keys, which never use it).
STATE_KEY = "steering"


class TrainingFailed(RuntimeError):
    """Training cannot go on (it keeps diverging); the message says what to change."""


class StepRecord(Protocol):
    """What the controller sees of one optimizer step (the trainer's ``StepResult``)."""

    @property
    def loss(self) -> float: ...
    @property
    def grad_norm(self) -> float: ...
    @property
    def lr(self) -> float: ...
    @property
    def skipped(self) -> bool: ...
    @property
    def alignment(self) -> float: ...


class SteeredRun(Protocol):
    """What steering needs of the run: its step, its knobs, and the few things a proposal
    can make it do (:class:`scu_tui.run.Run` implements it over the trainer)."""

    @property
    def step(self) -> int: ...

    def emit(self, event: Event) -> None: ...

    def knob_values(self) -> dict[str, float]:
        """The effective lr and every knob, by name."""
        ...

    def set_knob(self, knob: Knob, value: float, by: Decider) -> None:
        """Change a knob before the next step; a refused value is a warning, not an error."""
        ...

    def go_back(self, to_step: int | None) -> int:
        """Restore the kept good state of ``to_step`` (or, without one, the newest intact
        checkpoint), past the batches that led here; returns the step it went back to."""
        ...

    def pause(self, by: Decider) -> None: ...

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Write the metrics file (every proposal's record)."""
        ...

    def paused_hint(self) -> str:
        """How to go on after the guard paused an observe-mode run."""
        ...


class Steering:
    """Every proposal's life: mode, expiry, answers, applying, outcomes, rollbacks.

    ``controller`` is None when the S-SCU is off: then no proposal is ever made and the
    book stays empty.
    """

    def __init__(
        self,
        controller: Controller | None,
        run: SteeredRun,
        mode: Mode,
        proposal_ttl: int,
    ) -> None:
        self.controller = controller
        self.run = run
        self.mode = mode
        self.proposal_ttl = proposal_ttl
        # every proposal's life, in one place (the controller's; empty without the S-SCU)
        self.book = controller.book if controller is not None else ProposalBook()
        self.rollbacks = 0  # in the whole run
        self.rollbacks_since_progress = 0
        self._rolled_back_from = -1  # the step the newest rollback left
        #: wall seconds in the S-SCU's own code (observing, the guard, the analysis) since
        #: this process started the run; applying what it proposes is not counted
        self.seconds = 0.0

    # --- the run's calls --------------------------------------------------------------

    def step(
        self,
        step: int,
        loss: float,
        grad_norm: float,
        lr: float,
        skipped: bool = False,
        alignment: float = math.nan,
    ) -> None:
        """After each optimizer step (and its evaluation, if any): expire unanswered
        proposals, feed the controller, and open the step's one proposal (the guard's,
        the search's or the analysis's: :meth:`Controller.propose`)."""
        if step > self._rolled_back_from >= 0 and not skipped:
            self.rollbacks_since_progress = 0  # further than before the last rollback
            self._rolled_back_from = -1
        if self.controller is None:
            return
        for record in self.book.pending():
            if record.expires_at is not None and step >= record.expires_at:
                self._decide(record.id, Outcome.EXPIRED, Decider.TTL)
        tic = time.perf_counter()
        self.controller.observe(step, loss, grad_norm, lr, skipped, alignment)
        proposal, analysed = self.controller.propose(step, self.run.knob_values())
        self.seconds += time.perf_counter() - tic
        note, self.controller.search_note = self.controller.search_note, None
        if note:
            self.run.emit(MessageEvent(step, level=MessageLevel.INFO, text=note))
        analysis = self.controller.last_analysis
        if analysed and analysis is not None and analysis.step == step:
            self.run.emit(AnalysisEvent(**_analysis_fields(analysis.to_dict())))
        if proposal is not None:
            self._open(proposal, analysed)

    def trial_due(self, one_process: bool) -> bool:
        """Whether the run should hold its LR trial now (:mod:`scu_tui.control.trial`): in
        auto mode only (it moves the LR on its own evidence; a person asked is not), and in
        a run of one process."""
        if self.controller is None or self.mode != Mode.AUTO or not one_process:
            return False
        return self.controller.trial_due(self.run.step, self.run.knob_values())

    def trial_started(self, first: int) -> None:
        """A trial begins after step ``first``: the log says what its steps will be."""
        lr = self.run.knob_values()["lr"]
        tried = lr * TRIAL_FACTOR
        self.run.emit(TrialStartEvent(first, lr=lr, tried_lr=tried, steps=TRIAL_STEPS))
        text = trial_announcement(first, lr)
        self.run.emit(MessageEvent(first, level=MessageLevel.INFO, text=text))

    def trial_done(self, first: int, verdict: TrialVerdict, steps: Sequence[StepRecord]) -> None:
        """The trial from step ``first`` is over and the run is on the winning branch's
        state at the current LR: the controller sees that branch's steps (numbered as the
        run's last ones), the log says what the trial found, and a lower LR that won is
        applied as the trial's move."""
        assert self.controller is not None
        step = self.run.step
        for i, r in enumerate(steps):
            n = step - len(steps) + 1 + i
            self.controller.observe(n, r.loss, r.grad_norm, r.lr, r.skipped, r.alignment)
        knobs = self.run.knob_values()
        lr = knobs["lr"]
        tried = lr * TRIAL_FACTOR
        self.run.emit(
            TrialEvent(
                step,
                first=first,
                lr=lr,
                tried_lr=tried,
                tried_wins=verdict.tried_wins,
                current_loss=verdict.current_loss,
                tried_loss=verdict.tried_loss,
                ratio=verdict.ratio,
                t=verdict.t,
            )
        )
        self.run.emit(MessageEvent(step, level=MessageLevel.INFO, text=verdict.text(lr, tried)))
        proposal = self.controller.trial_done(first, step, verdict, knobs)
        if proposal is not None:
            self.book.open(proposal, self.mode, None)
            self.run.emit(ProposalEvent(**proposal.to_dict(), analysis=-1))
            self._apply(proposal, Outcome.APPLIED, Decider.CONTROLLER)

    def evaluated(self, step: int, val_loss: float, is_best: bool) -> None:
        """A validation pass: a new best is progress; the controller sees the loss."""
        if step <= 0:
            return
        if is_best:
            self.rollbacks_since_progress = 0
        if self.controller is not None:
            self.controller.observe_eval(step, val_loss)

    def command(self, command: Command) -> bool:
        """Carry out a command about steering (mode, accept, veto); False for any other."""
        kind, value = command.kind, command.value
        if kind == CommandKind.MODE:
            if isinstance(value, str) and value in tuple(Mode) and value != self.mode:
                self.mode = Mode(value)
                self.run.emit(ModeEvent(self.run.step, mode=self.mode, by=command.by))
            return True
        if kind in (CommandKind.ACCEPT, CommandKind.VETO):
            proposal_id = value if isinstance(value, str) else ""
            self._answer(kind, proposal_id, command.by)
            return True
        return False

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps: the controller's state with the rollback counters under
        ``"steering"`` (so the give-up rule counts on after a resume), or None without
        the S-SCU."""
        if self.controller is None:
            return None
        counters = {
            "rollbacks": self.rollbacks,
            "rollbacks_since_progress": self.rollbacks_since_progress,
            "rolled_back_from": self._rolled_back_from,
        }
        return {**self.controller.state(), STATE_KEY: counters}

    def resume(self, saved: Mapping[str, Any] | None, step: int) -> str | None:
        """Restore a checkpoint's state; returns a warning when it could not be used.
        Proposals still waiting at the checkpoint lapse: nobody can answer them now. A
        checkpoint from before the rollback counters were saved starts them afresh."""
        if self.controller is None or saved is None:
            return None
        note = None
        try:
            self.controller.load_state(saved)
        except (ValueError, KeyError, TypeError):
            note = "the S-SCU's saved state is from another version: it starts afresh"
        self._load_counters(saved.get(STATE_KEY))
        self.book.expire_open(step, Decider.RESUME)
        return note

    def _load_counters(self, saved: Any) -> None:
        """The rollback counters a checkpoint kept; fresh ones when it kept none (or a
        value of another shape)."""
        counters = saved if isinstance(saved, Mapping) else {}
        try:
            rollbacks = int(counters.get("rollbacks", 0))
            since_progress = int(counters.get("rollbacks_since_progress", 0))
            rolled_back_from = int(counters.get("rolled_back_from", -1))
        except (TypeError, ValueError):
            rollbacks, since_progress, rolled_back_from = 0, 0, -1
        self.rollbacks = rollbacks
        self.rollbacks_since_progress = since_progress
        self._rolled_back_from = rolled_back_from

    def pending_summary(self) -> list[dict[str, str]]:
        """The pending proposals as plain values, for watchers on other threads."""
        return [
            {"id": r.id, "reason": r.proposal.reason, "action": r.proposal.action}
            for r in self.book.pending()
        ]

    # --- a proposal's life --------------------------------------------------------------

    def _open(self, proposal: Proposal, analysed: bool = True) -> None:
        """Apply, queue or log a proposal by the mode. A blow-up or non-finite rollback
        (rule ``rollback``, the guard's or a control check's) acts at once in auto and ask
        modes and pauses the run in observe mode; every other proposal, an erratic-gradient
        rollback included, follows the mode. A rollback for collapsed gradients acts at once
        too, but in observe mode is only logged: the run is stuck, not getting worse, so
        pausing it would protect nothing."""
        urgent = proposal.rule == ROLLBACK
        asking = not urgent and self.mode == Mode.ASK
        expires = proposal.step + self.proposal_ttl if asking else None
        # pending before anyone hears of it, so an instant answer finds it
        self.book.open(proposal, self.mode, expires)
        self.run.emit(
            ProposalEvent(**proposal.to_dict(), analysis=proposal.step if analysed else -1)
        )
        if urgent:
            if self.mode == Mode.OBSERVE:
                self._decide(proposal.id, Outcome.OBSERVED, Decider.GUARD)
                if not proposal.evidence.get("collapse"):
                    self.run.pause(Decider.GUARD)
                    self.run.emit(
                        MessageEvent(
                            self.run.step, level=MessageLevel.WARNING, text=self.run.paused_hint()
                        )
                    )
            else:
                self._decide(proposal.id, Outcome.APPLIED, Decider.GUARD)
                self._rollback(proposal, by=Decider.GUARD)
        elif self.mode == Mode.AUTO:
            self._apply(proposal, Outcome.APPLIED, Decider.CONTROLLER)
        elif asking:
            self.run.write_metrics(self.book.metrics())
        else:
            self._decide(proposal.id, Outcome.OBSERVED, Decider.CONTROLLER)

    def _apply(self, proposal: Proposal, outcome: Outcome, by: Decider) -> None:
        if proposal.knob is ROLLBACK:  # the controller's own, in auto or once accepted
            self._decide(proposal.id, outcome, by)
            self._rollback(proposal, by=by)
            return
        self.run.set_knob(proposal.knob, proposal.after, by=by)
        self._decide(proposal.id, outcome, by)

    def _answer(self, kind: CommandKind, proposal_id: str, by: Decider) -> None:
        """Accept or veto a pending proposal by its id (the oldest when none is given). An
        id that is no longer pending is refused, never redirected to another proposal."""
        pending = self.book.pending()
        if not proposal_id and not pending:
            self.run.emit(
                MessageEvent(self.run.step, level=MessageLevel.INFO, text="no pending proposal")
            )
            return
        record = self.book.get(proposal_id) if proposal_id else pending[0]
        if record is None or not record.pending:
            state = f"it was {record.outcome}" if record and record.outcome else "unknown id"
            self.run.emit(RefusedEvent(self.run.step, command=kind, reason=state, id=proposal_id))
            return
        if kind == CommandKind.ACCEPT:
            moved = self._moved_since(record.proposal)
            if moved:
                self.run.emit(
                    RefusedEvent(self.run.step, command=kind, reason=moved, id=proposal_id)
                )
                return
            self._apply(record.proposal, Outcome.ACCEPTED, by)
        else:
            self._decide(record.id, Outcome.VETOED, by)

    def _moved_since(self, proposal: Proposal) -> str:
        """Why accepting ``proposal`` now would not do what it says ('' when it would): its
        knob was moved since it was proposed (by a person, say), so its ``after`` was
        worked out from a value that no longer holds. A rollback is taken from any LR."""
        now = None if proposal.knob is ROLLBACK else proposal.moved_since(self.run.knob_values())
        if now is None:
            return ""
        return (
            f"{proposal.knob} is {now:.4g} now, not the {proposal.before:.4g} it was "
            "proposed from: veto it, or wait for the next proposal"
        )

    def _decide(self, proposal_id: str, outcome: Outcome, by: Decider) -> None:
        """Record what became of a proposal (and of one it closes): book, event, metrics."""
        assert self.controller is not None
        step = self.run.step
        closed = self.controller.record_outcome(proposal_id, outcome, by, step)
        self.run.emit(DecisionEvent(step, id=proposal_id, outcome=outcome, by=by))
        for record in closed:
            assert record.outcome is not None and record.by is not None
            self.run.emit(DecisionEvent(step, id=record.id, outcome=record.outcome, by=record.by))
        self.run.write_metrics(self.book.metrics())

    def _rollback(self, proposal: Proposal, by: Decider) -> None:
        """Back to the kept state the proposal names (``evidence["to_step"]``; without one,
        the newest intact checkpoint), past the offending batches, with a lower LR."""
        self.rollbacks += 1
        self.rollbacks_since_progress += 1
        if self.rollbacks_since_progress > MAX_ROLLBACKS:
            raise TrainingFailed(
                f"training diverged {self.rollbacks_since_progress} times without progress "
                "in between; giving up (lower training.learning_rate)"
            )
        from_step = self.run.step
        self._rolled_back_from = max(self._rolled_back_from, from_step)
        named = proposal.evidence.get("to_step")
        to_step = self.run.go_back(named if isinstance(named, int) else None)
        self.run.set_knob(Knob.LR_MULTIPLIER, proposal.after, by=by)
        assert self.controller is not None
        cancelled = self.controller.notify_rollback(to_step, keep=proposal.id)
        # what still waits from before ``to_step`` keeps its branch, unless it would now
        # move a knob the rollback just reset or cut from a value that no longer holds
        knobs = self.run.knob_values()
        stale = [r for r in self.book.pending() if r.proposal.moved_since(knobs) is not None]
        cancelled += self.controller.cancel(stale, to_step)
        self.run.emit(RollbackEvent(from_step, to_step=to_step, reason=proposal.reason))
        for record in cancelled:  # their branch is gone, or the knob they would move
            self.run.emit(
                DecisionEvent(to_step, id=record.id, outcome=Outcome.CANCELLED, by=Decider.ROLLBACK)
            )
        if cancelled:
            self.run.write_metrics(self.book.metrics())


def _analysis_fields(data: dict[str, Any]) -> dict[str, Any]:
    """An analysis as the event's fields (an empty string where nothing fired)."""
    return {**data, "rule": data["rule"] or "", "proposal": data["proposal"] or ""}
