"""The preset picker shows the check's peak memory and ETA for the highlighted preset."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from textual.widgets import Static

from scu_tui.app import make_app
from scu_tui.app.screens import PresetPicker
from scu_tui.check.cache import recall
from scu_tui.config import Settings
from scu_tui.presets import load_preset

pytestmark = pytest.mark.slow

CHECK_SECONDS = 240  # a real `scu-tui check` of the demo, on a busy machine


def overridden(name: str) -> Settings:
    """What the CLI passes: the preset plus this command line's overrides."""
    return load_preset(name).replace({"training.max_steps": 321})


def detail(picker: PresetPicker) -> str:
    return str(picker.query_one("#preset-detail", Static).content)


async def test_picker_runs_the_check_and_shows_memory_and_eta(user_config: Path) -> None:
    app = make_app(None, load=overridden)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, PresetPicker)
        assert picker.selected() is not None and picker.selected()[0] == "demo"  # type: ignore[index]
        assert "check: c estimates peak memory and ETA" in detail(picker)
        await pilot.press("c")
        assert "measuring" in detail(picker)
        deadline = time.monotonic() + CHECK_SECONDS
        while picker.checking is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # a separate process: poll with a deadline
        await pilot.pause()
        text = detail(picker)
        assert "check: peak" in text and "fits" in text and "ETA" in text, text
        summary = recall(overridden("demo"))  # cached for exactly these settings
        assert summary is not None and summary["fits"] is True
        assert summary["eta_seconds"] > 0
        assert recall(load_preset("demo")) is None  # other settings: not checked
        await pilot.press("q")
