"""The dashboard driven as a user would, with Pilot, on REAL tiny training runs of the demo.

No sleeps: every wait is on an event the app drained (``app.expect``) or on a number of
its refresh ticks (``app.drains``), each bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from helpers import StandInController, step_event
from textual.widgets import Sparkline

from scu_tui.app import ScuApp, make_app
from scu_tui.app.feed import EventFeed, History, RunState
from scu_tui.app.screens import ConfirmScreen, HelpScreen, NameScreen, PlotsScreen, PresetPicker
from scu_tui.app.widgets import DecisionLog, Readout
from scu_tui.config import Settings
from scu_tui.control.policy import Proposal
from scu_tui.presets import load_preset
from scu_tui.protocol import DecisionEvent, Event, KnobEvent, Outcome, ProposalEvent, StepEvent
from scu_tui.run import Run

#: A fast refresh keeps the tests quick; the app is the same at any rate.
FAST = {"ui.refresh_hz": 20.0}
#: On the demo a 30x learning rate makes the S-SCU propose within ~60 steps; a long TTL
#: keeps each proposal waiting for the test's answer.
HOT = {
    "training.learning_rate": 3e-2,
    "scu.lr_bounds": [1e-5, 1e-1],
    "scu.proposal_ttl": 100_000,
    "scu.mode": "ask",
}
PANELS = ("#status", "#loss", "#gradients", "#entropy", "#decisions")
TIMEOUT = 90.0


def demo(**updates: Any) -> Settings:
    return load_preset("demo").replace({**FAST, **updates})


async def wait(awaitable: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    """Every wait is bounded: a missed event fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, timeout)


def word(app: ScuApp) -> str:
    return str(app.dashboard.query_one("#status-word", Readout)._shown)


def events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def quit_with_confirm(app: ScuApp, pilot: Any) -> Any:
    """q, then y in the confirm dialog; returns the run's DoneEvent."""
    done = app.expect("done")
    await pilot.press("q")
    assert isinstance(app.screen, ConfirmScreen)
    await pilot.press("y")
    return await wait(done)


# --- the dashboard on a real run ---------------------------------------------------------


@pytest.mark.slow
async def test_panels_fill_and_render_at_80x24_in_two_themes(tmp_path: Path) -> None:
    app = make_app(demo(**{"training.max_steps": 40}), output_dir=tmp_path / "run")
    async with app.run_test(size=(80, 24)) as pilot:
        done = await wait(app.expect("done"))
        await wait(app.drains(2))
        assert done.status == "completed"
        assert app.state.step == 40 and app.state.max_steps == 40
        keys = app.screen.active_bindings  # in-process: q quits, nothing to detach from
        assert keys["q"].binding.description == "Quit" and "x" not in keys
        assert len(app.query_one("#loss-spark", Sparkline).data or []) >= 20
        assert app.query_one("#val-spark", Sparkline).data
        analysis = app.state.analysis
        assert analysis is not None and analysis.wavelet["levels"] > 0
        assert "40/40" in str(app.query_one("#status-numbers", Readout)._shown)
        assert word(app) == "COMPLETED"
        for theme in ("scu-dark", "scu-light"):
            if app.theme != theme:
                await pilot.press("t")
                await pilot.pause()
            assert app.theme == theme
            for panel in PANELS:
                region = app.query_one(panel).region
                assert region.width > 10 and region.height > 2, (panel, region)
                assert region.right <= 80 and region.bottom <= 24
            path = app.save_screenshot(f"{theme}.svg", str(tmp_path))
            svg = Path(path).read_text(encoding="utf-8")
            assert "Loss" in svg and "Gradients" in svg and "S-SCU" in svg
        await pilot.press("q")  # the run is over: no confirmation needed
    assert app.return_code == 0


@pytest.mark.slow
async def test_pause_stops_the_steps_and_resume_continues(tmp_path: Path) -> None:
    app = make_app(demo(**{"training.max_steps": 3000}), output_dir=tmp_path / "run")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait(app.expect("step", lambda e: e.step >= 5))
        paused = app.expect("pause")
        await pilot.press("p")
        assert word(app) in ("pausing…", "PAUSED")  # at once, before the run confirms
        pause = await wait(paused)
        await wait(app.drains(4))
        assert app.state.paused and word(app) == "PAUSED"
        assert app.state.step == pause.step
        await wait(app.drains(4))
        assert app.state.step == pause.step  # nothing moved while paused

        resumed = app.expect("resume")
        await pilot.press("p")
        await wait(resumed)
        await wait(app.expect("step", lambda e: e.step > pause.step))
        assert not app.state.paused and word(app) == "RUNNING"
        await quit_with_confirm(app, pilot)


@pytest.mark.slow
async def test_save_and_evaluate_keys(tmp_path: Path) -> None:
    app = make_app(demo(**{"training.max_steps": 3000}), output_dir=tmp_path / "run")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait(app.expect("step", lambda e: e.step >= 3))
        saved = app.expect("checkpoint", lambda e: e.reason == "user")
        await pilot.press("s")
        checkpoint = await wait(saved)
        assert (Path(checkpoint.path) / "adapters.safetensors").is_file()

        evaluated = app.expect("eval")
        await pilot.press("e")
        assert word(app) in ("evaluating…", "RUNNING")
        assert (await wait(evaluated)).val_loss > 0

        changed = app.expect("mode")
        await pilot.press("m")
        assert (await wait(changed)).mode == "auto"
        await wait(app.drains(1))
        assert app.state.mode == "auto"
        assert "mode auto" in str(app.query_one("#status-knobs", Readout)._shown)
        await quit_with_confirm(app, pilot)


def askable(event: Event) -> bool:
    """A proposal that waits for an answer (blow-up rollbacks are applied at once)."""
    return isinstance(event, ProposalEvent) and event.rule != "rollback"


async def answer(
    app: ScuApp,
    pilot: Any,
    proposed: asyncio.Future[Event],
    key: str,
    outcome: str,
    timeout: float = TIMEOUT,
) -> tuple[ProposalEvent, asyncio.Future[Event]]:
    """Wait for a proposal, check the banner, press ``key``, check the log line.

    Returns the proposal and a future for the next one, registered before the key press
    so a proposal that follows quickly cannot slip past.
    """
    proposal: ProposalEvent = await wait(proposed, timeout)
    await wait(app.drains(1))
    await pilot.pause()
    banner = app.query_one("#banner")
    assert proposal.id in app.state.pending
    assert banner.display and banner.region.height >= 1
    decided = app.expect("decision", lambda e: e.id == proposal.id)
    following = app.expect("proposal", askable)
    await pilot.press(key)
    decision: DecisionEvent = await wait(decided)
    await wait(app.drains(1))
    assert decision.outcome == outcome and decision.by == "user"
    log = app.query_one(DecisionLog)
    line = next(x for x in log.lines if proposal.action in x and f"{proposal.step} " in x)
    assert outcome in line
    return proposal, following


def metrics(run_dir: Path) -> dict[str, dict[str, Any]]:
    records = json.loads((run_dir / "scu_training_metrics.json").read_text(encoding="utf-8"))
    return {r["id"]: r for r in records}


@pytest.mark.slow
async def test_accepting_a_real_proposal_on_a_hot_run(tmp_path: Path) -> None:
    """The real S-SCU on a 30x learning rate: a proposal that waits, accepted from the app.

    Marked slow because when that proposal comes depends on the policy's tuning (a few
    seconds today; up to some hundreds of steps with earlier tunings). At 30x the guard
    may roll back while a proposal waits, which cancels it (its knobs were reset): then
    the next one that waits is answered.
    """
    out = tmp_path / "run"
    app = make_app(demo(**HOT, **{"training.max_steps": 2000}), output_dir=out)
    async with app.run_test(size=(80, 24)) as pilot:
        # the user's knob change: the run goes on meanwhile, and the guard may move the LR
        # again before the app is looked at
        by_user = app.expect("knob", lambda e: isinstance(e, KnobEvent) and e.by == "user")
        proposal, undone = await accept_a_waiting_proposal(app, pilot)
        moved = "lr_multiplier" if proposal.knob == "rollback" else proposal.knob
        change = await wait(by_user)
        assert isinstance(change, KnobEvent)
        assert change.knob == moved and change.after == pytest.approx(proposal.after)
        await quit_with_confirm(app, pilot)
        # a rollback after the accept abandons the branch it was taken on: then it says so
        was_undone = undone.done() and undone.exception() is None
    record = metrics(out)[proposal.id]
    final = ("cancelled", "rollback") if was_undone else ("accepted", "user")
    assert (record["outcome"], record["by"]) == final
    assert record["before"] == pytest.approx(change.before)  # accepted from where it stood


def cancelled(proposal_id: str) -> Any:
    return lambda e: e.id == proposal_id and e.outcome == Outcome.CANCELLED


async def accept_a_waiting_proposal(
    app: ScuApp, pilot: Any, tries: int = 5
) -> tuple[ProposalEvent, asyncio.Future[Event]]:
    """Press ``a`` on the proposal the banner offers; a rollback that cancels it first
    (the decision says so) sends the test on to the next one that waits. Returns the
    accepted proposal and a future that is done if a later rollback cancelled it."""
    for _ in range(tries):
        await wait(app.drains(1))
        await pilot.pause()
        target = app.dashboard.answer_target()
        if target is None:  # nothing waits now: the next askable proposal
            await wait(app.expect("proposal", askable), 300)
            continue
        assert app.query_one("#banner").display
        decided = app.expect("decision", lambda e, pid=target.id: e.id == pid)
        undone = app.expect("decision", cancelled(target.id))
        await pilot.press("a")
        decision: DecisionEvent = await wait(decided)
        if decision.outcome == Outcome.CANCELLED:
            continue
        assert decision.outcome == "accepted" and decision.by == "user"
        await wait(app.drains(1))
        line = next(x for x in app.query_one(DecisionLog).lines if f" {target.id} " in x)
        assert ("cancelled" if undone.done() else "accepted") in line
        return target, undone
    raise AssertionError(f"no proposal could be accepted in {tries} tries")


class EveryTenSteps(StandInController):
    """A stand-in S-SCU that proposes an LR cut every 10 steps while none is pending.

    The policy's own timing depends on its tuning; the app's accept/veto path should not.
    """

    count = 0

    def decide(self, step: int, knobs: Any) -> Proposal | None:
        if step % 10 or self.book.pending():
            return None
        self.count += 1
        before = float(knobs["lr_multiplier"])
        return Proposal(
            id=f"t{self.count:04d}",
            step=step,
            rule="test_cut_lr",
            diagnosis="scripted",
            knob="lr_multiplier",
            before=before,
            after=before * 0.9,
            reason="Scripted proposal for the app test",
            action=f"lr x{before * 0.9:.3g}",
        )


def proposing_run(settings: Settings, output_dir: Path | None = None, resume: Any = None) -> Run:
    """A real run on the demo whose S-SCU is :class:`EveryTenSteps`."""
    controller = EveryTenSteps(settings.scu, settings.training)
    return Run(settings, output_dir=output_dir, resume=resume, controller=controller)


@pytest.mark.slow
async def test_veto_and_accept_reach_the_log_and_the_metrics_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = demo(**{"scu.mode": "ask", "scu.proposal_ttl": 100_000, "training.max_steps": 3000})
    app = make_app(settings, output_dir=out, run_factory=proposing_run)
    async with app.run_test(size=(80, 24)) as pilot:
        vetoed, following = await answer(app, pilot, app.expect("proposal"), "v", "vetoed")
        accepted, _ = await answer(app, pilot, following, "a", "accepted")
        assert app.state.knobs["lr_multiplier"] == pytest.approx(accepted.after)
        await quit_with_confirm(app, pilot)
    records = metrics(out)
    assert records[vetoed.id]["outcome"] == "vetoed" and records[vetoed.id]["by"] == "user"
    assert records[accepted.id]["outcome"] == "accepted"


@pytest.mark.slow
async def test_quit_asks_then_saves_a_checkpoint_and_exits(tmp_path: Path) -> None:
    out = tmp_path / "run"
    app = make_app(demo(**{"training.max_steps": 3000}), output_dir=out)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait(app.expect("step", lambda e: e.step >= 3))
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # keep training
        step = app.state.step
        await wait(app.expect("step", lambda e: e.step > step))
        done = await quit_with_confirm(app, pilot)
        assert done.status == "stopped"
    assert app.return_code == 0
    last = events(out)[-1]
    assert last["type"] == "done" and last["status"] == "stopped"
    assert (out / "checkpoints" / f"step-{done.step:06d}" / "adapters.safetensors").is_file()


@pytest.mark.slow
async def test_sighup_checkpoints_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGHUP)  # SIG_DFL, or SIG_IGN under nohup
    app = make_app(demo(**{"training.max_steps": 3000}), output_dir=out)
    async with app.run_test(size=(80, 24)):
        await wait(app.expect("step", lambda e: e.step >= 3))
        assert app._previous_hup is not None  # trapped, or the signal below would end pytest
        done = app.expect("done")
        os.kill(os.getpid(), signal.SIGHUP)
        assert (await wait(done)).status == "interrupted"
    assert app.return_code == 130
    assert signal.getsignal(signal.SIGHUP) == before  # handed back on exit
    assert any(e.get("reason") == "signal" for e in events(out) if e["type"] == "checkpoint")


@pytest.mark.slow
async def test_plots_and_help_screens(tmp_path: Path) -> None:
    app = make_app(demo(**{"training.max_steps": 60}), output_dir=tmp_path / "run")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait(app.expect("done"))
        await pilot.press("g")
        assert isinstance(app.screen, PlotsScreen)
        await pilot.pause()
        plot = str(app.screen.query_one("#plot").render())
        assert "loss" in plot and "learning rate" in plot and "gradient norm" in plot
        await pilot.press("escape")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is app.dashboard
        await pilot.press("q")
    assert app.return_code == 0


# --- failures -------------------------------------------------------------------------------


class FailingRun(Run):
    """A real run whose training breaks at step 5."""

    def _one_step(self) -> None:
        if self.trainer.step >= 5:
            raise RuntimeError("boom")
        super()._one_step()


@pytest.mark.slow
async def test_a_training_failure_is_shown_and_the_app_can_quit(tmp_path: Path) -> None:
    app = make_app(demo(), output_dir=tmp_path / "run", run_factory=FailingRun)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        done = await wait(app.expect("done"))
        await wait(app.drains(1))
        assert done.status == "failed" and "boom" in done.message
        assert word(app) == "FAILED"
        assert "boom" in str(app.query_one("#status-numbers", Readout)._shown)
        assert any("boom" in str(n.message) for n in app._notifications)
        await pilot.press("q")
    assert app.return_code == 1


async def test_a_bad_model_path_is_bad_input(tmp_path: Path) -> None:
    settings = demo(**{"model.path": str(tmp_path / "no-such-model")})
    app = make_app(settings, output_dir=tmp_path / "run")
    async with app.run_test(size=(80, 24)) as pilot:
        done = await wait(app.expect("done"))
        await wait(app.drains(1))
        assert done.status == "failed" and word(app) == "FAILED"
        await pilot.press("q")
    assert app.return_code == 2


# --- the preset picker ------------------------------------------------------------------


@pytest.mark.slow
async def test_picker_saves_a_copy_and_trains_with_it(tmp_path: Path, user_config: Path) -> None:
    def load(name: str) -> Settings:  # what the CLI passes: the preset plus its overrides
        return load_preset(name).replace({**FAST, "training.max_steps": 8})

    app = make_app(None, output_dir=tmp_path / "run", load=load)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, PresetPicker)
        assert "demo" in app.screen.loaded and "qwen3-4b-mlx-4bit" in app.screen.loaded
        await pilot.press("n")
        assert isinstance(app.screen, NameScreen)
        await pilot.press("ctrl+u", *"mine", "enter")
        await pilot.pause()
        assert (user_config / "presets" / "mine.toml").is_file()
        picker = app.screen
        assert isinstance(picker, PresetPicker) and picker.selected() is not None
        assert picker.selected()[0] == "mine"  # type: ignore[index]
        started, finished = app.expect("start"), app.expect("done")  # both before Enter
        await pilot.press("enter")
        start = await wait(started)
        assert start.preset == "mine" and start.max_steps == 8
        assert (await wait(finished)).status == "completed"
        await pilot.press("q")
    assert app.return_code == 0


# --- the feed, without a run ------------------------------------------------------------


def step(n: int) -> StepEvent:
    return step_event(n, loss=1.0 / n, max_steps=10_000)


def test_the_feed_coalesces_steps_but_keeps_every_proposal_in_order() -> None:
    feed = EventFeed(max_buffered_steps=16)
    emitted: list[Event] = []
    for n in range(1, 1001):
        emitted.append(step(n))
        if n % 100 == 0:
            emitted.append(DecisionEvent(n, id=f"p{n}", outcome="applied", by="controller"))
    for event in emitted:
        feed.emit(event)
    drained = feed.drain()
    assert [e for e in drained if e.type == "decision"] == [
        e for e in emitted if e.type == "decision"
    ]
    assert len([e for e in drained if e.type == "step"]) == 16
    assert [e.step for e in drained] == sorted(e.step for e in drained)  # emission order
    assert feed.coalesced_steps == 1000 - 16 and feed.drain() == []


def test_state_memory_stays_bounded_on_a_long_run() -> None:
    state = RunState(window=64)
    for n in range(1, 50_001):
        state.fold(step(n))
    assert len(state.losses) <= 128 and len(state.loss_history) < 4096
    assert state.loss_history.steps[0] == 1 and state.loss_history.steps[-1] > 49_000
    history = History(capacity=8)
    for n in range(100):
        history.append(n, float(n))
    assert len(history) < 8 and history.steps[0] == 0


async def test_a_preset_that_cannot_start_says_so_once_and_escape_goes_back(
    tmp_path: Path,
) -> None:
    """Offline, a hub model cannot load: one notice (not two), no talk of a checkpoint
    that does not exist, and Escape returns to the presets."""
    missing = demo(**{"model.path": str(tmp_path / "no-such-model")})
    app = make_app(None, output_dir=tmp_path / "run", load=lambda name: missing)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, PresetPicker)
        done = app.expect("done")
        await pilot.press("enter")
        assert (await wait(done)).status == "failed"
        await wait(app.drains(2))
        notices = [n for n in app._notifications if n.severity == "error"]
        assert len(notices) == 1 and notices[0].title == "Could not start"
        assert "checkpoint" not in notices[0].message and "no such directory" in notices[0].message
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, PresetPicker)
        await pilot.press("q")
