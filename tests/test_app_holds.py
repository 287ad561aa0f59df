"""The app says why the S-SCU holds, and a run that has ended offers no key to steer it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from helpers import StandInRun, start_event, step_event, until

from scu_tui.app import ScuApp, make_app
from scu_tui.app.feed import RunState
from scu_tui.app.widgets import DecisionLog
from scu_tui.presets import load_preset
from scu_tui.protocol import AnalysisEvent, DoneEvent, Event, RunStatus, TrialEvent

#: The keys that steer a live run (the footer's names for them).
STEERING_KEYS = {"p", "a", "v", "s", "e", "m"}


def analysis(step: int, why: str, diagnosis: str = "improving") -> AnalysisEvent:
    return AnalysisEvent(
        step,
        diagnosis=diagnosis,
        why=why,
        period=20,
        window=20,
        nonfinite=0,
        trend={"level": 2.0, "slope": -0.01},
        gradients={},
        wavelet={},
        validation={},
    )


HOLDS = [
    analysis(20, "improving: loss 9.1% per 20 steps against a target of 1.0%; nothing to change"),
    analysis(40, "Noisy gradients while improving; not yet: seen on 1 check in a row", "noisy"),
    analysis(60, "improving: loss 4.0% per 20 steps against a target of 1.0%; nothing to change"),
]


class Holding(StandInRun):
    """A 60-step run whose three analyses changed nothing."""

    def events(self) -> list[Event]:
        events: list[Event] = [start_event(mode="ask", max_steps=60)]
        for n in range(1, 61):
            events.append(step_event(n))
            events.extend(a for a in HOLDS if a.step == n)
        return events


class Ended(Holding):
    """The same run, ended: it emits its done event and returns, as a run does."""

    status = RunStatus.COMPLETED

    def events(self) -> list[Event]:
        return [*super().events(), DoneEvent(60, status=self.status, message="")]

    def execute(self) -> int:
        for event in self.events():
            for sink in self.sinks:
                sink.emit(event)
        return 0


def app(run: type[StandInRun]) -> ScuApp:
    settings = load_preset("demo").replace({"scu.mode": "ask", "ui.refresh_hz": 20.0})
    return make_app(settings, run_factory=run)


async def decision_log(the_app: ScuApp, ready: Callable[[], bool]) -> DecisionLog:
    """The app's S-SCU log, once ``ready`` holds and the views have drawn it."""
    await until(the_app, ready)
    await the_app.drains(2)
    return the_app.query_one(DecisionLog)


async def test_each_period_that_changed_nothing_is_a_dim_line_in_the_log() -> None:
    the_app = app(Holding)
    async with the_app.run_test(size=(80, 24)):
        log = await decision_log(the_app, lambda: the_app.state.holds == 3)
        assert log.lines == [
            "    20 no change · improving: loss 9.1% per 20 steps against a target of 1.0%; "
            "nothing to change",
            "    40 no change · noisy: Noisy gradients while improving; not yet: seen on 1 "
            "check in a row",
            "    60 no change · improving: loss 4.0% per 20 steps against a target of 1.0%; "
            "nothing to change",
        ]
        options = [log.get_option_at_index(i) for i in range(log.option_count)]
        assert all(option.disabled for option in options)  # dimmed, and a/v never pick one
        assert log.selected_id is None and the_app.dashboard.answer_target() is None


class Trialling(StandInRun):
    """Two trials' events (a run holds one): one that kept the LR, one the half won."""

    def events(self) -> list[Event]:
        events: list[Event] = [start_event(mode="auto", max_steps=100)]
        events += [step_event(n) for n in range(1, 51)]
        kept = dict(lr=1e-3, tried_lr=5e-4, current_loss=1.63, tried_loss=1.901, t=8.0)
        events.append(TrialEvent(50, first=10, tried_wins=False, ratio=0.184, **kept))
        events.append(TrialEvent(60, first=20, tried_wins=True, ratio=-0.2, **kept))
        events.append(step_event(61))
        return events


def test_after_a_trial_the_app_reads_the_lr_the_run_goes_on_from() -> None:
    """The last step event of a trial is the tried branch's, at half the LR."""
    state = RunState()
    for n in range(1, 51):
        event = step_event(n)
        state.handle(event if n <= 30 else dataclasses.replace(event, lr=5e-4))
    assert state.lr == 5e-4
    state.handle(Trialling().events()[-3])  # the trial that kept the LR
    assert state.lr == state.knobs["lr"] == 1e-3


@pytest.mark.parametrize("tried_wins", [False, True])
def test_after_a_trial_the_charts_show_one_timeline(tried_wins: bool) -> None:
    """Both branches' steps are in the log (steps 11-30 at the LR, 31-50 at half, on the
    same batches); after the verdict the charts hold the winner's alone, at steps 31-50,
    as the run and its controller number them, the way a rollback leaves one timeline."""
    state = RunState()
    for n in range(1, 51):
        loss, lr = (3.0, 1e-3) if n <= 10 else (1.0 + n / 100, 1e-3) if n <= 30 else (2.0, 5e-4)
        state.handle(dataclasses.replace(step_event(n, loss=loss), lr=lr))
    kept = dict(lr=1e-3, tried_lr=5e-4, current_loss=1.2, tried_loss=2.0, t=8.0)
    state.handle(TrialEvent(50, first=10, tried_wins=tried_wins, ratio=0.5, **kept))
    steps = [*range(1, 11), *range(31, 51)]
    winner = [2.0] * 20 if tried_wins else [1.0 + n / 100 for n in range(11, 31)]
    assert list(state.loss_history) == list(zip(steps, [3.0] * 10 + winner, strict=True))
    assert [s for s, _ in state.losses] == steps
    assert state.lr_history.steps == steps
    assert state.lr_history.values[-1] == (5e-4 if tried_wins else 1e-3)
    assert state.loss == winner[-1]
    assert state.best_train_loss == min(winner)
    state.handle(step_event(51, loss=0.5))  # the run goes on from there
    assert state.loss_history.steps[-2:] == [50, 51]


async def test_a_trial_that_kept_the_lr_is_a_hold_line_with_its_figures() -> None:
    """The LR trial's steps have no analysis: the log says what the trial found (a trial
    the lower LR won is its proposal's line, not a hold)."""
    the_app = app(Trialling)
    async with the_app.run_test(size=(100, 24)):
        log = await decision_log(the_app, lambda: the_app.state.step == 61)
        assert log.lines == [
            "    50 no change · LR trial: LR 0.0005 not clearly better than 0.001 on the same "
            "batches (mean loss 1.901 against 1.63)"
        ]


@pytest.mark.parametrize("status", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.LOST])
async def test_a_run_that_has_ended_offers_no_steering_key(status: RunStatus) -> None:
    class This(Ended):
        pass

    This.status = status
    live = app(Holding)
    async with live.run_test(size=(80, 24)):
        await until(live, lambda: live.state.step == 60)
        assert set(live.screen.active_bindings) >= STEERING_KEYS  # a live run offers them
    the_app = app(This)
    async with the_app.run_test(size=(80, 24)) as pilot:
        await until(the_app, lambda: the_app.state.done is not None)
        await pilot.pause()
        keys = set(the_app.screen.active_bindings)
        assert not STEERING_KEYS & keys, keys
        assert {"q", "g", "question_mark"} <= keys  # quitting and looking still work
        await pilot.press("p")
        assert the_app.in_flight.text == ""  # the key does nothing
