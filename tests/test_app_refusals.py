"""A command that did not take effect comes back as a typed refusal: the app drops the
key's pending effect it refused, and says why, without parsing a sentence."""

from __future__ import annotations

from helpers import StandInRun, start_event, step_event, until

from scu_tui.app import ScuApp, make_app
from scu_tui.presets import load_preset
from scu_tui.protocol import CommandKind, Event, ProposalEvent, RefusedEvent


def proposal(pid: str, step: int = 3) -> ProposalEvent:
    return ProposalEvent(
        step,
        id=pid,
        rule="lower_lr",
        reason="loss rising",
        action="lr x0.5",
        knob="lr_multiplier",  # type: ignore[arg-type]
        before=1.0,
        after=0.5,
        evidence={},
    )


class Waiting(StandInRun):
    """A run in ask mode with two proposals waiting."""

    def events(self) -> list[Event]:
        steps = [step_event(n) for n in (1, 2, 3)]
        return [start_event(mode="ask"), *steps, proposal("s0001"), proposal("s0002")]


def app() -> ScuApp:
    settings = load_preset("demo").replace({"scu.mode": "ask", "ui.refresh_hz": 20.0})
    return make_app(settings, run_factory=Waiting)


def shown(app: ScuApp) -> list[str]:
    return [n.message for n in app._notifications]


async def test_a_refused_answer_drops_that_answer_only_and_says_why() -> None:
    the_app = app()
    async with the_app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(the_app, lambda: len(the_app.state.pending) == 2)
        await pilot.press("a")  # the proposal the banner names
        (first,) = the_app.in_flight.answering
        for _ in range(3):  # the other one, highlighted in the log
            target = the_app.dashboard.answer_target()
            if target is not None and target.id != first:
                break
            await pilot.press("up")
        await pilot.press("v")
        assert set(the_app.in_flight.answering) == {"s0001", "s0002"}
        other = ({"s0001", "s0002"} - {first}).pop()
        refused = RefusedEvent(3, command=CommandKind.ACCEPT, reason="it was expired", id=first)
        the_app.feed.emit(refused)
        await until(the_app, lambda: first not in the_app.in_flight.answering)
        assert set(the_app.in_flight.answering) == {other}  # it still waits for the run
        assert refused.sentence in shown(the_app)


async def test_a_command_that_was_not_sent_drops_every_pending_effect() -> None:
    the_app = app()
    async with the_app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(the_app, lambda: len(the_app.state.pending) == 2)
        await pilot.press("p")
        await pilot.press("a")
        assert the_app.in_flight.text == "pausing…" and the_app.in_flight.answering
        gone = RefusedEvent(3, command=CommandKind.PAUSE, reason="the socket is gone", sent=False)
        the_app.feed.emit(gone)
        await until(the_app, lambda: the_app.in_flight.text == "")
        assert not the_app.in_flight.answering
        assert "command not sent: the socket is gone" in shown(the_app)


async def test_a_drain_tick_during_shutdown_draws_nothing() -> None:
    """The drain timer can tick while Textual takes the dashboard apart on the way out
    (seen on a busy machine: a panel found without its charts). Such a tick must neither
    fail nor fold events the dashboard can no longer show."""
    the_app = app()
    async with the_app.run_test(size=(80, 24)):
        await until(the_app, lambda: len(the_app.state.pending) == 2)
    assert not the_app.screen_stack  # the screens are gone, as during shutdown
    the_app.feed.emit(step_event(4))
    count = the_app.drain_count
    the_app.drain()
    assert the_app.drain_count == count and the_app.state.step == 3
