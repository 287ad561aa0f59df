"""Attaching to a headless run from another process: history, live events, commands."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from helpers import Inbox, read_events, scu, scu_popen, start_headless, until, wait_for_line

from scu_tui.app import attach_app
from scu_tui.app.screens import ConfirmScreen
from scu_tui.errors import UserError
from scu_tui.protocol import Command, RefusedEvent
from scu_tui.remote.attach import RemoteRun, find_live_run


def attach(run_dir: Path) -> tuple[RemoteRun, Inbox, threading.Thread]:
    remote = RemoteRun(run_dir)
    inbox = Inbox()
    remote.add_sink(inbox)
    thread = threading.Thread(target=remote.execute, daemon=True)
    thread.start()
    return remote, inbox, thread


@pytest.mark.slow
def test_attach_detach_reattach_and_stop(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = scu_popen(
        "--headless",
        "--preset",
        "demo",
        "--max-steps",
        "3000",
        "--output-dir",
        str(out),
        "--set",
        "training.report_every=1",
    )
    wait_for_line(proc, "step      2/")
    first, inbox, thread = attach(out)
    assert first.live
    assert inbox.wait_for("start").type == "start"  # history replayed from the file
    first.submit(Command("pause"))
    paused = inbox.wait_for("pause")
    assert paused.to_dict()["by"] == "remote"
    first.request_stop()  # detach: the run must not notice
    thread.join(timeout=30)
    assert not thread.is_alive()

    second, inbox2, thread2 = attach(out)
    assert inbox2.wait_for("pause").step == paused.step  # sees the same state
    second.submit(Command("resume"))
    inbox2.wait_for("resume")
    step = inbox2.wait_for("step").step
    assert step > paused.step
    second.submit(Command("stop"))
    done = inbox2.wait_for("done")
    assert done.to_dict()["status"] == "stopped"
    thread2.join(timeout=30)
    proc.communicate(timeout=120)
    assert proc.returncode == 0


@pytest.mark.slow
def test_finished_run_attaches_read_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        scu(
            "--headless", "--preset", "demo", "--max-steps", "3", "--output-dir", str(out)
        ).returncode
        == 0
    )
    remote, inbox, thread = attach(out)
    assert not remote.live
    assert inbox.wait_for("done").to_dict()["status"] == "completed"
    thread.join(timeout=30)
    remote.submit(Command("pause"))
    refused = inbox.wait_for("refused")
    assert isinstance(refused, RefusedEvent) and not refused.sent
    assert "read-only" in refused.sentence


def test_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a scu-tui run"):
        RemoteRun(tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        RemoteRun(tmp_path / "missing")


# --- the dashboard attached to a run in another process ---------------------------------

#: A hot learning rate makes the S-SCU propose early on the demo; ask mode holds each
#: proposal for an answer; a fast refresh keeps the test quick.
HOT_HEADLESS = (
    "--mode",
    "ask",
    "--set",
    "training.learning_rate=3e-2",
    "--set",
    "scu.lr_bounds=[1e-5, 1e-1]",
    "--set",
    "scu.proposal_ttl=100000",
    "--set",
    "ui.refresh_hz=20.0",
)
TIMEOUT = 120.0


@pytest.mark.slow
async def test_attached_dashboard_steers_the_run_and_detaching_leaves_it_going(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    proc = start_headless(out, *HOT_HEADLESS)
    try:
        app = attach_app(out)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(app, lambda: app.state.step > 0)
            assert app.attached
            keys = app.screen.active_bindings
            assert keys["q"].binding.description == "Detach"
            assert keys["x"].binding.description == "Stop"
            assert keys["t"].enabled  # works, though left out of the footer for room

            # a second client, watching the same run at the same time
            watcher, inbox, watcher_thread = attach(out)

            paused = app.expect("pause")
            await pilot.press("p")
            pause = await asyncio.wait_for(paused, TIMEOUT)
            assert pause.to_dict()["by"] == "remote" and app.state.paused
            assert inbox.wait_for("pause").step == pause.step  # the other client saw it too
            await app.drains(10)
            assert app.state.step == pause.step  # steps stopped advancing

            resumed = app.expect("resume")
            await pilot.press("p")
            await asyncio.wait_for(resumed, TIMEOUT)
            await until(app, lambda: app.state.step > pause.step)

            await until(app, lambda: bool(app.state.pending))
            pid = next(iter(app.state.pending))
            decided = app.expect("decision", lambda e: e.to_dict()["id"] == pid)
            await pilot.press("v")
            assert (await asyncio.wait_for(decided, TIMEOUT)).to_dict()["outcome"] == "vetoed"

            saved = app.expect("checkpoint", lambda e: e.to_dict()["reason"] == "user")
            await pilot.press("s")
            checkpoint = await asyncio.wait_for(saved, TIMEOUT)
            assert Path(checkpoint.to_dict()["path"]).is_dir()

            await pilot.press("q")  # detach: no confirmation, nothing sent to the run
            await asyncio.wait_for(app.workers.wait_for_complete(), TIMEOUT)
        assert app.return_code == 0
        assert proc.poll() is None  # the run never noticed
        step_after_detach = app.state.step
        while inbox.wait_for("step").step <= step_after_detach:  # and it goes on
            pass

        # stop it from a new dashboard with x (confirmed), as a user would at the end
        app2 = attach_app(out)
        async with app2.run_test(size=(80, 24)) as pilot:
            await until(app2, lambda: app2.state.step > step_after_detach)
            done = app2.expect("done")
            await pilot.press("x")
            assert isinstance(app2.screen, ConfirmScreen)
            await pilot.press("y")
            assert (await asyncio.wait_for(done, TIMEOUT)).to_dict()["status"] == "stopped"
            await pilot.press("q")
        watcher.request_stop()
        watcher_thread.join(timeout=30)
        assert proc.wait(timeout=TIMEOUT) == 0
        kinds = [e["type"] for e in read_events(out)]
        assert kinds[-1] == "done" and "pause" in kinds and "resume" in kinds
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_attached_to_a_finished_run_the_dashboard_is_read_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert scu("--headless", "--preset", "demo", "--max-steps", "5", "--output-dir", str(out))
    app = attach_app(out)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(app, lambda: app.state.done is not None)
        assert app.state.step == 5 and app.state.done.status == "completed"
        await pilot.press("p")  # nothing to pause: the dashboard says so, nothing is sent
        await app.drains(1)
        assert not app.state.paused
        await pilot.press("q")
        await asyncio.wait_for(app.workers.wait_for_complete(), TIMEOUT)
    assert app.return_code == 0


@pytest.mark.slow
def test_attach_command_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = scu("attach", str(tmp_path))
    assert result.returncode == 2
    assert "not a scu-tui run" in result.stderr and "Traceback" not in result.stderr
    result = scu("attach", str(tmp_path / "missing"))
    assert result.returncode == 2 and "no such directory" in result.stderr


@pytest.mark.slow
def test_attach_without_dir_finds_the_one_live_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match="no live run"):
        find_live_run(runs)
    first = start_headless(runs / "first")
    try:
        assert find_live_run(runs) == runs / "first"
        second = start_headless(runs / "second")
        try:
            with pytest.raises(UserError, match=r"2 runs are live .*first.*second"):
                find_live_run(runs)
            # at a terminal the person picks one
            assert find_live_run(runs, lambda live: live[-1]) == runs / "second"
        finally:
            second.kill()
            second.wait()
        assert find_live_run(runs) == runs / "first"  # a killed run is no longer live
    finally:
        first.kill()
        first.wait()
    with pytest.raises(UserError, match="no live run"):
        find_live_run(runs)
