"""Snapshot tests of the dashboard: the main screen as a person sees it, pixel for pixel.

The panels are fed a fixed event stream recorded from a real demo run (a hot learning
rate, ask mode, one pending proposal), so the screen is the same on every machine; the
live-training tests in ``test_app.py`` cover the same panels on a run in progress.
Update the snapshots after a deliberate change with ``pytest --snapshot-update``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import until

from scu_tui.app import ScuApp, make_app
from scu_tui.events import event_from_dict
from scu_tui.presets import load_preset
from scu_tui.sinks import Sink

RECORDED = Path(__file__).parent / "data" / "dashboard-events.jsonl"


class RecordedRun:
    """Stands in for a run: emits the recorded events, then idles until stopped."""

    attached = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sinks: list[Sink] = []
        self.stopped = threading.Event()
        self.commands: list[Any] = []

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def execute(self) -> int:
        for line in RECORDED.read_text(encoding="utf-8").splitlines():
            event = event_from_dict(json.loads(line))
            assert event is not None
            for sink in self.sinks:
                sink.emit(event)
        self.stopped.wait()
        return 0

    def submit(self, command: Any) -> None:
        self.commands.append(command)

    def request_stop(self, reason: str = "user") -> None:
        self.stopped.set()


def recorded_app(theme: str) -> ScuApp:
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
    return make_app(settings, run_factory=RecordedRun, theme=theme)


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
