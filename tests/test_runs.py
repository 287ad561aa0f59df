"""The runs under runs/: listed with how each ended, reopened, resumed and compared."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import pytest
from helpers import scu, scu_popen, until, wait_for_line

from scu_tui.app import make_app
from scu_tui.app.screens import CompareScreen, ConfirmScreen, PresetPicker, RunsScreen
from scu_tui.presets import load_preset
from scu_tui.runlock import RunLock
from scu_tui.runs import list_runs

pytestmark = pytest.mark.slow

QUIET = ["--set", "scu.enabled=false", "--set", "training.save_every=10"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run and a killed one, as a user's runs/ holds them."""
    root = tmp_path_factory.mktemp("cwd") / "runs"
    done = scu("--headless", "--max-steps", "20", "--output-dir", str(root / "a-done"), *QUIET)
    assert done.returncode == 0, done.stderr
    proc = scu_popen("--headless", "--max-steps", "100000", "--output-dir",
                     str(root / "b-killed"), *QUIET)  # fmt: skip
    wait_for_line(proc, "save ")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return root


def test_runs_are_listed_with_how_they_ended(runs_dir: Path) -> None:
    runs = {r.name: r for r in list_runs(runs_dir)}
    assert set(runs) == {"a-done", "b-killed"}
    done, killed = runs["a-done"], runs["b-killed"]
    assert (done.status, done.steps, done.max_steps, done.live) == ("completed", 20, 20, False)
    assert done.best_val_loss is not None and done.started is not None
    assert not done.resumable
    assert killed.status == "lost" and killed.resumable and killed.checkpoints >= 1
    lock = RunLock(runs_dir / "b-killed")  # as a live run holds it
    lock.acquire()
    try:
        live = {r.name: r for r in list_runs(runs_dir)}["b-killed"]
        assert live.live and live.status == "running" and not live.resumable
    finally:
        lock.release()


async def test_the_runs_list_compares_and_resumes(
    runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs_dir = Path(shutil.copytree(runs_dir, tmp_path / "runs"))  # it resumes one: a copy
    monkeypatch.chdir(tmp_path)  # runs/ is where the app looks, as for a user
    settings_for = lambda name: load_preset(name).replace({"ui.refresh_hz": 20.0})  # noqa: E731
    app = make_app(None, load=settings_for)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, PresetPicker)
        await pilot.press("r")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        assert [r.name for r in screen.runs.values()] == ["b-killed", "a-done"]  # newest first
        await pilot.press("space", "down", "space", "c")
        await pilot.pause()
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        assert "1:b-killed" in compare.text and "2:a-done" in compare.text
        await pilot.press("escape", "up", "enter")  # the killed run: resume it?
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        resumed = app.expect("start")
        stepped = app.expect("step")
        await pilot.press("y")
        start = await asyncio.wait_for(resumed, 120)
        await asyncio.wait_for(stepped, 120)
        assert start.resumed and app.resume is not None
        assert app.resume.resolve() == (runs_dir / "b-killed").resolve()
        await until(app, lambda: app.state.step > start.step)
        steps = app.state.loss_history.steps  # the first process's steps, then these
        assert steps == list(range(1, steps[-1] + 1))
        done = app.expect("done")
        await pilot.press("q", "y")
        assert (await asyncio.wait_for(done, 120)).status == "stopped"
    killed = {r.name: r for r in list_runs(runs_dir)}["b-killed"]
    assert killed.status == "stopped" and not killed.live
    assert not (runs_dir / "b-killed" / "control.json").exists()
