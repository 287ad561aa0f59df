"""A proposal's life without a model: steering over a stand-in run that only records.

The real run drives the same code in test_run_control.py (with training); here each rule
of the lifecycle is checked in milliseconds, through the interface the run implements.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pytest
from helpers import StandInController

from scu_tui.config import Settings
from scu_tui.control.policy import ROLLBACK, Proposal, action_text
from scu_tui.control.steering import MAX_ROLLBACKS, SteeredRun, Steering, TrainingFailed
from scu_tui.protocol import (
    Command,
    CommandKind,
    Decider,
    DecisionEvent,
    Event,
    Knob,
    Mode,
    ModeEvent,
    Outcome,
    ProposalEvent,
    RefusedEvent,
)


class StandInRun:
    """What steering sees of a run: a step counter, knobs, and a record of what it did."""

    def __init__(self) -> None:
        self.step = 0
        self.knobs: dict[str, float] = {"lr": 1e-3, "lr_multiplier": 1.0, "weight_decay": 0.0}
        self.events: list[Event] = []
        self.metrics: list[dict[str, Any]] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def knob_values(self) -> dict[str, float]:
        return dict(self.knobs)

    def set_knob(self, knob: Knob, value: float, by: Decider) -> None:
        self.knobs[knob] = value

    def go_back(self) -> int:
        raise AssertionError("no rollback in these tests")

    def pause(self, by: Decider) -> None:
        raise AssertionError("no pause in these tests")

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        self.metrics = records

    def paused_hint(self) -> str:
        return ""

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class RaiseWeightDecayAt(StandInController):
    """Proposes weight decay 0.02 at the given steps, nothing else."""

    def __init__(self, steps: set[int]) -> None:
        settings = Settings()
        super().__init__(settings.scu, settings.training)
        self.steps = steps

    def decide(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        if step not in self.steps:
            return None
        before = float(knobs["weight_decay"])
        return Proposal(
            id=f"s{step:04d}",
            step=step,
            rule="raise_weight_decay",
            diagnosis="scripted",
            knob=Knob.WEIGHT_DECAY,
            before=before,
            after=0.02,
            reason="Scripted change of weight_decay",
            action=action_text(Knob.WEIGHT_DECAY, before, 0.02),
        )


def steer(mode: Mode, steps: set[int], last: int, ttl: int = 3) -> tuple[Steering, StandInRun]:
    run = StandInRun()
    steering = Steering(RaiseWeightDecayAt(steps), run, mode, proposal_ttl=ttl)
    _: SteeredRun = run  # the stand-in has the run's shape
    for step in range(1, last + 1):
        run.step = step
        steering.step(step, loss=2.0, grad_norm=1.0, lr=1e-3, alignment=math.nan)
    return steering, run


def test_auto_applies_a_proposal_through_the_runs_knobs() -> None:
    _, run = steer(Mode.AUTO, {5}, last=6)
    assert run.knobs["weight_decay"] == 0.02
    (decision,) = run.of(DecisionEvent)
    assert (decision.id, decision.outcome, decision.by) == ("s0005", "applied", "controller")
    assert [m["outcome"] for m in run.metrics] == ["applied"]


def test_ask_waits_for_an_answer_by_id_then_applies_it() -> None:
    steering, run = steer(Mode.ASK, {5}, last=6, ttl=10)
    assert [r.id for r in steering.book.pending()] == ["s0005"]
    assert run.knobs["weight_decay"] == 0.0
    steering.command(Command(CommandKind.ACCEPT, "s0005", by=Decider.USER))
    assert run.knobs["weight_decay"] == 0.02 and not steering.book.pending()
    (decision,) = run.of(DecisionEvent)
    assert (decision.outcome, decision.by) == ("accepted", "user")


def test_an_unanswered_proposal_expires_and_a_late_answer_is_a_typed_refusal() -> None:
    steering, run = steer(Mode.ASK, {5}, last=9, ttl=3)
    (decision,) = run.of(DecisionEvent)
    assert (decision.id, decision.outcome, decision.by, decision.step) == (
        "s0005",
        Outcome.EXPIRED,
        Decider.TTL,
        8,
    )
    steering.command(Command(CommandKind.VETO, "s0005", by=Decider.USER))
    (refused,) = run.of(RefusedEvent)
    assert (refused.id, refused.command, refused.reason) == (
        "s0005",
        CommandKind.VETO,
        "it was expired",
    )
    assert refused.sentence == "proposal s0005 is no longer pending (it was expired); nothing done"
    assert run.knobs["weight_decay"] == 0.0 and len(run.of(DecisionEvent)) == 1


def test_observe_only_logs_and_a_mode_command_changes_what_follows() -> None:
    steering, run = steer(Mode.OBSERVE, {5}, last=6)
    assert run.knobs["weight_decay"] == 0.0
    assert [d.outcome for d in run.of(DecisionEvent)] == ["observed"]
    assert steering.command(Command(CommandKind.MODE, "auto", by=Decider.USER))
    assert steering.mode == Mode.AUTO and len(run.of(ModeEvent)) == 1
    assert not steering.command(Command(CommandKind.PAUSE))  # not steering's: the run's
    assert len(run.of(ProposalEvent)) == 1


class RollBackAt(StandInController):
    """Proposes a rollback one step back (the guard's rule: it acts at once) whenever the
    run reaches one of the given steps."""

    def __init__(self, steps: set[int]) -> None:
        settings = Settings()
        super().__init__(settings.scu, settings.training)
        self.steps = steps
        self.made = 0

    def decide(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        if step not in self.steps:
            return None
        self.made += 1
        return scripted_rollback(f"r{step:04d}-{self.made}", step, to_step=step - 1)


def scripted_rollback(proposal_id: str, step: int, to_step: int) -> Proposal:
    """The guard's rollback to ``to_step`` with the LR multiplier 1 -> 0.5."""
    return Proposal(
        id=proposal_id,
        step=step,
        rule=ROLLBACK,
        diagnosis="scripted",
        knob=ROLLBACK,
        before=1.0,
        after=0.5,
        reason="Scripted rollback",
        action="roll back",
        evidence={"to_step": to_step},
    )


class RollingBackRun(StandInRun):
    """A stand-in whose rollbacks go back to the step the proposal names."""

    def go_back(self, to_step: int | None) -> int:  # type: ignore[override]
        assert to_step is not None
        self.step = to_step
        return to_step


def train_on(steering: Steering, run: StandInRun, steps: int) -> None:
    """``steps`` optimizer steps, each from where the run is (a rollback sets it back)."""
    for _ in range(steps):
        run.step += 1
        steering.step(run.step, loss=2.0, grad_norm=1.0, lr=1e-3, alignment=math.nan)


def counters(steering: Steering) -> tuple[int, int, int]:
    return steering.rollbacks, steering.rollbacks_since_progress, steering._rolled_back_from


def test_the_rollback_counters_go_through_a_checkpoint_and_keep_the_give_up_rule() -> None:
    run = RollingBackRun()
    steering = Steering(RollBackAt({4}), run, Mode.AUTO, proposal_ttl=3)
    train_on(steering, run, 6)  # 1, 2, 3, then step 4 goes back to 3 three times
    assert counters(steering) == (3, 3, 4) and run.step == 3
    saved = json.loads(json.dumps(steering.state()))  # as a checkpoint keeps it

    resumed_run = RollingBackRun()
    resumed_run.step = run.step
    resumed = Steering(RollBackAt({4}), resumed_run, Mode.AUTO, proposal_ttl=3)
    assert resumed.resume(saved, step=run.step) is None
    assert counters(resumed) == (3, 3, 4)
    # the give-up rule counts on from the saved count: the sixth rollback without progress
    # in between fails the run, as it would have without the resume
    train_on(resumed, resumed_run, 2)
    assert counters(resumed) == (MAX_ROLLBACKS, MAX_ROLLBACKS, 4)
    with pytest.raises(TrainingFailed, match="6 times"):
        train_on(resumed, resumed_run, 1)


def test_a_checkpoint_saved_before_the_rollback_counters_were_resumes_with_none() -> None:
    run = RollingBackRun()
    steering = Steering(RollBackAt({4}), run, Mode.AUTO, proposal_ttl=3)
    train_on(steering, run, 4)
    saved = {k: v for k, v in (steering.state() or {}).items() if k != "steering"}
    resumed = Steering(RollBackAt(set()), RollingBackRun(), Mode.AUTO, proposal_ttl=3)
    resumed.rollbacks = 7  # replaced by the checkpoint's (none there: a fresh count)
    assert resumed.resume(saved, step=3) is None
    assert counters(resumed) == (0, 0, -1)


class CollapseAt(RollBackAt):
    """The guard's rollback for collapsed gradients (or, with ``collapse=False``, for
    damage) at the given steps."""

    def __init__(self, steps: set[int], collapse: bool) -> None:
        super().__init__(steps)
        self.collapse = collapse

    def decide(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        proposal = super().decide(step, knobs)
        if proposal is None:
            return None
        evidence = {"to_step": 0, "collapse": True} if self.collapse else {"to_step": 0}
        return Proposal(**{**proposal.to_dict(), "evidence": evidence})


class PausingRun(StandInRun):
    def __init__(self) -> None:
        super().__init__()
        self.paused_by: list[Decider] = []

    def pause(self, by: Decider) -> None:
        self.paused_by.append(by)


@pytest.mark.parametrize("collapse", [True, False])
def test_in_observe_mode_damage_pauses_and_a_collapse_is_only_logged(collapse: bool) -> None:
    """Damage pauses an observe-mode run (nobody acts, and it may get worse); collapsed
    gradients only log their rollback: the run is stuck, not getting worse, and an
    unattended headless run must not wait for a person over it."""
    run = PausingRun()
    steering = Steering(CollapseAt({3}, collapse), run, Mode.OBSERVE, proposal_ttl=3)
    train_on(steering, run, 5)
    assert [d.outcome for d in run.of(DecisionEvent)] == ["observed"]
    assert run.step == 5 and steering.rollbacks == 0  # never went back
    assert run.paused_by == ([] if collapse else [Decider.GUARD])


def test_accepting_a_proposal_whose_knob_moved_since_is_refused_and_leaves_it_waiting() -> None:
    """The person set weight decay by hand after the proposal: its ``after`` was worked out
    from the old value, so accepting it is refused with the value now, and nothing moves."""
    steering, run = steer(Mode.ASK, {5}, last=6, ttl=10)
    run.knobs["weight_decay"] = 0.05
    steering.command(Command(CommandKind.ACCEPT, "s0005", by=Decider.USER))
    (refused,) = run.of(RefusedEvent)
    assert (refused.id, refused.command) == ("s0005", CommandKind.ACCEPT)
    assert refused.reason.startswith("weight_decay is 0.05 now, not the 0 it was proposed from")
    assert run.knobs["weight_decay"] == 0.05 and not run.of(DecisionEvent)
    assert [r.id for r in steering.book.pending()] == ["s0005"]
    steering.command(Command(CommandKind.VETO, "s0005", by=Decider.USER))  # still answerable
    assert [(d.id, d.outcome) for d in run.of(DecisionEvent)] == [("s0005", "vetoed")]


class ProposeThenRollback(StandInController):
    """Proposes ``knob`` -> ``after`` at ``propose_at``, then the guard's rollback to
    ``to_step`` (LR multiplier 1 -> 0.5) at ``roll_at``."""

    def __init__(self, knob: Knob, after: float, propose_at: int, roll_at: int, to_step: int):
        settings = Settings()
        super().__init__(settings.scu, settings.training)
        self.knob, self.after, self.propose_at = knob, after, propose_at
        self.roll_at, self.to_step = roll_at, to_step

    def decide(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        if step == self.propose_at:
            before = float(knobs[self.knob])
            return Proposal(
                id=f"s{step:04d}",
                step=step,
                rule="scripted",
                diagnosis="scripted",
                knob=self.knob,
                before=before,
                after=self.after,
                reason="Scripted change",
                action=action_text(self.knob, before, self.after),
            )
        if step != self.roll_at:
            return None
        self.roll_at = -1
        return scripted_rollback(f"r{step:04d}", step, self.to_step)


def roll_back_over(knob: Knob, after: float, propose_at: int) -> tuple[Steering, StandInRun]:
    """Ask mode: the proposal waits; the guard goes back from step 7 to step 4."""
    run = RollingBackRun()
    controller = ProposeThenRollback(knob, after, propose_at, roll_at=7, to_step=4)
    steering = Steering(controller, run, Mode.ASK, proposal_ttl=100)
    train_on(steering, run, 7)
    assert run.step == 4 and run.knobs["lr_multiplier"] == 0.5
    return steering, run


@pytest.mark.parametrize("propose_at", [2, 4, 6])
def test_a_rollback_cancels_a_waiting_lr_proposal_it_made_stale(propose_at: int) -> None:
    """An LR cut worked out from multiplier 1, made before the step the run returns to (2),
    at it (4) or on the abandoned branch (6): the rollback cut the multiplier to 0.5, so
    accepting it later would raise the LR. Cancelled, and a late accept is refused."""
    steering, run = roll_back_over(Knob.LR_MULTIPLIER, 0.7, propose_at)
    assert not steering.book.pending()
    outcomes = [(d.id, d.outcome, d.by) for d in run.of(DecisionEvent)]
    assert (f"s{propose_at:04d}", Outcome.CANCELLED, Decider.ROLLBACK) in outcomes
    steering.command(Command(CommandKind.ACCEPT, f"s{propose_at:04d}", by=Decider.USER))
    (refused,) = run.of(RefusedEvent)
    assert refused.reason == "it was cancelled" and run.knobs["lr_multiplier"] == 0.5


def test_a_waiting_proposal_on_a_knob_the_rollback_left_alone_survives_it() -> None:
    """Weight decay proposed at step 2, before the step the run returns to: the rollback
    did not touch it, so the proposal still waits, and accepting it does what it says."""
    steering, run = roll_back_over(Knob.WEIGHT_DECAY, 0.02, 2)
    assert [r.id for r in steering.book.pending()] == ["s0002"]
    steering.command(Command(CommandKind.ACCEPT, "s0002", by=Decider.USER))
    assert run.knobs["weight_decay"] == 0.02 and not run.of(RefusedEvent)
