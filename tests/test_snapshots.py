"""Snapshot tests of the dashboard: the main screen as a person sees it, pixel for pixel.

The panels are fed a fixed event stream recorded from a real demo run (a hot learning
rate, ask mode, one pending proposal), so the screen is the same on every machine; the
live-training tests in ``test_app.py`` cover the same panels on a run in progress.
Update the snapshots after a deliberate change with ``pytest --snapshot-update``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import StandInRun, until
from textual.widgets import Static

from scu_tui.app import ScuApp, make_app
from scu_tui.app.screens import InspectorScreen
from scu_tui.app.widgets import DecisionLog
from scu_tui.presets import load_preset
from scu_tui.protocol import Event, event_from_dict

RECORDED = Path(__file__).parent / "data" / "dashboard-events.jsonl"


#: Two more decisions after the recording, so the log has something to move through: a
#: vetoed weight-decay raise and a second pending proposal (an accumulation raise).
MORE = [
    {"type": "proposal", "step": 160, "time": 0.0, "id": "p0002", "rule": "raise_weight_decay",
     "reason": "Train/validation gap growing while training loss falls - raising weight decay",
     "action": "weight_decay 0 -> 0.01", "knob": "weight_decay", "before": 0.0, "after": 0.01,
     "evidence": {"val_trend": 0.004, "gap": 0.31, "gap_trend": 0.02}, "diagnosis":
     "overfitting", "analysis": 160},
    {"type": "decision", "step": 160, "time": 0.0, "id": "p0002", "outcome": "vetoed",
     "by": "user"},
    {"type": "proposal", "step": 160, "time": 0.0, "id": "p0003", "rule": "raise_accumulation",
     "reason": "Noisy gradients while improving - raising gradient accumulation (bigger batch)",
     "action": "accumulation 1 -> 2", "knob": "accumulation", "before": 1.0, "after": 2.0,
     "evidence": {"grad_variability": 0.61, "spikes": 0, "relative_improvement": 0.028},
     "diagnosis": "noisy", "analysis": 160},
]  # fmt: skip


class RecordedRun(StandInRun):
    """Stands in for a run: emits the recorded events, then idles until stopped."""

    extra: ClassVar[list[dict[str, Any]]] = []

    def events(self) -> Iterable[Event]:
        lines = RECORDED.read_text(encoding="utf-8").splitlines()
        for data in [*map(json.loads, lines), *self.extra]:
            event = event_from_dict(data)
            assert event is not None
            yield event


class MoreDecisions(RecordedRun):
    extra = MORE


def recorded_app(theme: str, run: type[RecordedRun] = RecordedRun) -> ScuApp:
    settings = load_preset("demo").replace(
        {
            "training.max_steps": 160,
            "training.learning_rate": 3e-2,
            "scu.lr_bounds": [1e-5, 1e-1],
            "scu.proposal_ttl": 100_000,
            "scu.mode": "ask",
            "ui.refresh_hz": 20.0,
        }
    )
    return make_app(settings, run_factory=run, theme=theme)


async def all_drawn(pilot: Any) -> None:
    """Wait until the last recorded step is on screen and the pop-ups are gone."""
    app: ScuApp = pilot.app
    await until(app, lambda: app.state.step >= 120, timeout=60)
    await asyncio.wait_for(app.drains(2), 60)
    app.clear_notifications()
    await pilot.pause()


@pytest.mark.parametrize("theme", ["scu-dark", "scu-light", "scu-contrast"])
def test_main_screen_at_80x24(snap_compare: Any, theme: str) -> None:
    assert snap_compare(recorded_app(theme), terminal_size=(80, 24), run_before=all_drawn)


def test_main_screen_on_a_tall_terminal(snap_compare: Any) -> None:
    assert snap_compare(recorded_app("scu-dark"), terminal_size=(120, 40), run_before=all_drawn)


def test_help_screen_at_80x24(snap_compare: Any) -> None:
    assert snap_compare(
        recorded_app("scu-dark"), terminal_size=(80, 24), run_before=all_drawn, press=["?"]
    )


def test_help_scrolls_to_a_glossary_at_80x24(snap_compare: Any) -> None:
    assert snap_compare(
        recorded_app("scu-dark"), terminal_size=(80, 24), run_before=all_drawn, press=["?", "end"]
    )


async def log_ready(pilot: Any) -> None:
    await all_drawn(pilot)
    app: ScuApp = pilot.app
    await until(app, lambda: len(app.state.pending) == 2, timeout=60)
    await asyncio.wait_for(app.drains(2), 60)
    app.query_one(DecisionLog).focus()
    await pilot.pause()


def test_the_log_chooses_which_pending_proposal_a_and_v_answer(snap_compare: Any) -> None:
    """Up twice from the newest: the older pending proposal, named in the banner."""
    app = recorded_app("scu-dark", MoreDecisions)
    assert snap_compare(app, terminal_size=(80, 24), run_before=log_ready, press=["up", "up"])


def test_the_inspector_at_80x24(snap_compare: Any) -> None:
    app = recorded_app("scu-dark", MoreDecisions)
    assert snap_compare(
        app, terminal_size=(80, 24), run_before=log_ready, press=["up", "up", "enter"]
    )


async def test_a_and_v_send_the_id_the_banner_names() -> None:
    app = recorded_app("scu-dark", MoreDecisions)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_ready(pilot)
        run = app.training_run
        assert isinstance(run, RecordedRun)
        banner = str(app.query_one("#banner", Static).render())  # the log follows the newest
        assert "p0003 at step 160" in banner and "accept/veto p0003" in banner
        await pilot.press("up")  # p0002 was vetoed: the banner names the oldest waiting
        await pilot.pause()
        assert "accept/veto p0001" in str(app.query_one("#banner", Static).render())
        await pilot.press("end")  # the newest line: the second pending proposal
        await pilot.pause()
        assert "accept/veto p0003" in str(app.query_one("#banner", Static).render())
        await pilot.press("a")
        assert (run.commands[-1].kind, run.commands[-1].value) == ("accept", "p0003")
        await pilot.press("a")  # p0003 is being answered: a second press does not redirect
        assert len(run.commands) == 1
        await pilot.press("home", "v")  # the first line: p0001, pending
        assert (run.commands[-1].kind, run.commands[-1].value) == ("veto", "p0001")
        await pilot.press("q", "y")


async def test_the_inspector_shows_the_whole_reason_and_absolute_values() -> None:
    app = recorded_app("scu-dark", MoreDecisions)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_ready(pilot)
        await pilot.press("home", "enter")
        screen = app.screen
        assert isinstance(screen, InspectorScreen)
        text = screen.text
        assert "Erratic gradients (variability 1.04) - rolling back with lower LR" in text
        lr = next(e["lr"] for e in map(json.loads, RECORDED.read_text().splitlines())
                  if e["type"] == "step" and e["step"] == 20)  # fmt: skip
        assert f"rollback, LR {lr:.2e} → {lr * 0.25:.2e} (x0.25)" in text
        assert "gradient variability (robust CV): 1.04" in text
        assert "What the S-SCU saw (analysis at step 20" in text
        await pilot.press("escape", "end", "up", "enter")  # p0002: vetoed
        text = app.screen.text  # type: ignore[attr-defined]
        assert "weight decay 0 → 0.01" in text and "vetoed by user" in text
        assert "none (the change was not made)" in text
        await pilot.press("escape", "q", "y")


#: After the recording: an accepted weight-decay raise, then a rollback to step 140.
ROLLED_BACK = [
    {"type": "knob", "step": 150, "time": 0.0, "knob": "weight_decay", "before": 0.0,
     "after": 0.01, "by": "user"},
    {"type": "rollback", "step": 158, "time": 0.0, "to_step": 140, "reason": "Erratic"},
]  # fmt: skip


class RolledBack(RecordedRun):
    extra = ROLLED_BACK


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_plots_with_markers(snap_compare: Any, size: tuple[int, int]) -> None:
    app = recorded_app("scu-dark", RolledBack)
    assert snap_compare(app, terminal_size=size, run_before=all_drawn, press=["g"])


def fake_run(root: Path, name: str, status: str, steps: int, best: float, started: float) -> None:
    """A run folder as a finished run leaves it (its files written here, for a fixed view)."""
    run = root / name
    (run / "checkpoints" / f"step-{steps:06d}").mkdir(parents=True)
    settings = {"name": "demo", "model": {"path": "@demo"}, "training": {"max_steps": 800}}
    (run / "simple_training_config.json").write_text(json.dumps({"settings": settings}))
    summary = {"status": status, "steps": steps, "max_steps": 800, "best_val_loss": best}
    (run / "scu_training_summary.json").write_text(json.dumps(summary))
    start = {"type": "start", "step": 0, "time": started}
    (run / "events.jsonl").write_text(json.dumps(start) + "\n")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_runs_list(
    snap_compare: Any, size: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    import time as _time

    _time.tzset()
    fake_run(tmp_path / "runs", "demo-20261130-090000", "completed", 800, 0.2941, 1796029200.0)
    fake_run(tmp_path / "runs", "demo-20261201-101500", "interrupted", 412, 0.3518, 1796120100.0)
    fake_run(tmp_path / "runs", "hot-20261201-111500", "failed", 60, 5.9213, 1796123700.0)
    monkeypatch.chdir(tmp_path)
    app = make_app(None, load=lambda name: load_preset(name))
    assert snap_compare(app, terminal_size=size, press=["r"])


@pytest.mark.parametrize("notify", [True, False])
async def test_a_waiting_proposal_rings_unless_turned_off(notify: bool) -> None:
    settings = load_preset("demo").replace(
        {"scu.mode": "ask", "ui.refresh_hz": 20.0, "ui.notify": notify}
    )
    app = make_app(settings, run_factory=RecordedRun)
    async with app.run_test(size=(80, 24)) as pilot:
        await all_drawn(pilot)
        if notify:
            assert app.alerts == [
                "p0001 waits for an answer: Erratic gradients (variability 1.04) - rolling "
                "back with lower LR"
            ]
        else:
            assert app.alerts == []
        await pilot.press("q", "y")


#: What a run's end and its evaluations add (as the demo writes them).
ENDING = [
    {"type": "samples", "step": 140, "time": 0.0, "samples": [
        {"prompt": "What is the sum of 13 and 5?", "reference": "13 plus 5 is 18.",
         "answer": "13 plus 5 is 18."},
        {"prompt": "Give me the opposite of up.", "reference": "The opposite of up is down.",
         "answer": "The opposite of up is down."}]},
    {"type": "samples", "step": 160, "time": 0.0, "samples": [
        {"prompt": "What is the sum of 13 and 5?", "reference": "13 plus 5 is 18.",
         "answer": "13 plus 5 is 18."},
        {"prompt": "Give me the opposite of up.", "reference": "The opposite of up is down.",
         "answer": "The opposite of up is left."}]},
    {"type": "comparison", "step": 160, "time": 0.0, "split": "test", "rows": 117,
     "adapters": "runs/demo/best", "base_loss": 5.9157, "tuned_loss": 0.3328, "fixed": 1,
     "broke": 0, "examples": [
        {"prompt": "What is 3 plus 14?", "reference": "3 plus 14 is 17.",
         "base_answer": "A: 14 plus 13 is 27.", "tuned_answer": "3 plus 14 is 17.",
         "verdict": "fixed"},
        {"prompt": "Which city is the capital of Bulgaria?",
         "reference": "The capital of Bulgaria is Sofia.",
         "base_answer": "A: The capital of Germany is Berlin.",
         "tuned_answer": "The capital of Bulgaria is Sofghanistan.", "verdict": "both wrong"}]},
]  # fmt: skip


class Ending(RecordedRun):
    extra = ENDING


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_samples_panel(snap_compare: Any, size: tuple[int, int]) -> None:
    app = recorded_app("scu-dark", Ending)
    assert snap_compare(app, terminal_size=size, run_before=all_drawn, press=["o"])


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_base_versus_adapters_comparison(snap_compare: Any, size: tuple[int, int]) -> None:
    app = recorded_app("scu-dark", Ending)
    assert snap_compare(app, terminal_size=size, run_before=all_drawn, press=["c"])


async def test_samples_and_comparison_follow_the_run() -> None:
    app = recorded_app("scu-dark", Ending)
    async with app.run_test(size=(80, 24)) as pilot:
        await all_drawn(pilot)
        await until(app, lambda: app.state.comparison is not None)
        await pilot.press("o")
        text = app.screen.text  # type: ignore[attr-defined]
        assert text.index("step 160") < text.index("step 140")  # newest first
        assert "→ The opposite of up is left." in text
        await pilot.press("escape", "c")
        text = app.screen.text  # type: ignore[attr-defined]
        assert "1 fixed" in text and "[fixed] What is 3 plus 14?" in text
        await pilot.press("escape", "q", "y")
