"""A run that dies without a word (``kill -9``) is seen as gone, never as still running."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Inbox, scu, scu_popen, start_headless, until, wait_for_line

from scu_tui.app import ScuApp, attach_app
from scu_tui.app.widgets import Readout
from scu_tui.errors import UserError
from scu_tui.protocol import Command, RefusedEvent, RunFile, RunStatus
from scu_tui.remote.attach import RemoteRun, find_live_run
from scu_tui.remote.control import (
    ControlClient,
    ControlServer,
    run_liveness,
)

TIMEOUT = 120.0
#: "Within a few seconds", with room for a busy machine.
NOTICE_SECONDS = 15.0


class Recorder:
    """A stand-in for the run behind an in-process control server."""

    def submit(self, command: Command) -> None:
        pass

    def status_snapshot(self) -> dict[str, Any]:
        return {"status": "running"}


def kill_9(proc: subprocess.Popen[str]) -> None:
    proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    proc.wait(timeout=TIMEOUT)


def word(app: ScuApp) -> str:
    return str(app.dashboard.query_one("#status-word", Readout)._shown)


def numbers(app: ScuApp) -> str:
    return str(app.dashboard.query_one("#status-numbers", Readout)._shown)


def reaped_pid() -> int:
    """The pid of a process that has come and gone."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow
async def test_a_killed_run_shows_lost_in_the_attached_app(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start_headless(out, "--set", "ui.refresh_hz=20.0")
    try:
        info = json.loads((out / RunFile.CONTROL).read_text())
        assert info["pid"] == proc.pid and info["host"] == socket.gethostname()
        app = attach_app(out)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await until(app, lambda: app.state.step > 0)
            assert word(app) == "RUNNING" and "ETA" in numbers(app)
            kill_9(proc)
            killed_at = time.monotonic()
            await pilot.press("p")  # a key sent to the dead run must not stay "pausing…"
            await until(app, lambda: app.state.lost, timeout=TIMEOUT)
            assert time.monotonic() - killed_at < NOTICE_SECONDS
            await app.drains(2)
            assert word(app) == "LOST" and app.state.status == RunStatus.LOST
            assert numbers(app).startswith("lost at step") and "ETA" not in numbers(app)
            assert str(proc.pid) in app.state.message
            assert app.in_flight.text == ""
            await pilot.press("p")
            await app.drains(1)
            shown = [f"{n.title} {n.message}" for n in app._notifications]
            assert any("not running (lost)" in text for text in shown), shown
            assert not any("refused" in text.lower() for text in shown), shown
            await pilot.press("q")
            await asyncio.wait_for(app.workers.wait_for_complete(), TIMEOUT)
        assert app.return_code == 0
    finally:
        if proc.poll() is None:
            kill_9(proc)


@pytest.mark.slow
def test_after_a_kill_attach_sees_lost_and_find_skips_it_until_resumed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    out = runs / "long"
    proc = scu_popen(
        "--headless",
        "--preset",
        "demo",
        "--max-steps",
        "20000",
        "--output-dir",
        str(out),
        "--set",
        "training.save_every=5",
    )
    resumed: subprocess.Popen[str] | None = None
    try:
        wait_for_line(proc, "save ")  # a checkpoint to resume from
        stale_socket = Path(json.loads((out / RunFile.CONTROL).read_text())["socket"])
        kill_9(proc)
        proc.communicate()
        assert (out / RunFile.CONTROL).exists() and stale_socket.exists()  # what kill -9 leaves
        assert run_liveness(out) == "dead"
        with pytest.raises(UserError, match="no live run"):
            find_live_run(runs)

        remote = RemoteRun(out)
        assert not remote.live
        inbox = Inbox()
        remote.add_sink(inbox)
        thread = threading.Thread(target=remote.execute, daemon=True)
        started = time.monotonic()
        thread.start()
        done = inbox.wait_for("done").to_dict()
        assert time.monotonic() - started < NOTICE_SECONDS
        assert done["status"] == RunStatus.LOST and str(proc.pid) in done["message"]
        thread.join(timeout=TIMEOUT)
        assert not thread.is_alive()
        remote.submit(Command("pause"))
        refused = inbox.wait_for("refused")
        assert isinstance(refused, RefusedEvent) and not refused.sent
        assert "not running (lost)" in refused.sentence

        resumed = scu_popen("--headless", "--resume", str(out))
        wait_for_line(resumed, "step")
        info = json.loads((out / RunFile.CONTROL).read_text())
        assert info["pid"] == resumed.pid  # the stale file is replaced
        assert find_live_run(runs) == out
        client = ControlClient(out)
        assert client.request("stop")["ok"]
        client.close()
        resumed.communicate(timeout=TIMEOUT)
        assert resumed.returncode == 0
        assert not (out / RunFile.CONTROL).exists() and not stale_socket.exists()
    finally:
        for p in (proc, resumed):
            if p is not None and p.poll() is None:
                kill_9(p)


@pytest.mark.slow
async def test_events_cut_mid_line_without_a_done_event_are_not_running(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = scu("--headless", "--preset", "demo", "--max-steps", "5", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    path = out / "events.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "done"
    path.write_text("".join(lines[:-1]) + '{"type": "step", "step": 6, "lo', encoding="utf-8")
    app = attach_app(out)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(app, lambda: app.state.done is not None)
        await app.drains(1)
        assert app.state.lost and word(app) == "LOST"
        assert "ended without a done event" in app.state.message
        assert app.state.step == 5 and "ETA" not in numbers(app)
        await pilot.press("q")
        await asyncio.wait_for(app.workers.wait_for_complete(), TIMEOUT)
    assert app.return_code == 0


def test_the_process_in_control_json_decides_before_the_socket(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run_dir = runs / "a"
    run_dir.mkdir(parents=True)
    (run_dir / RunFile.CONFIG).write_text("{}")  # all find_live_run looks for
    server = ControlServer(Recorder(), run_dir)
    server.start()
    try:
        info = json.loads((run_dir / RunFile.CONTROL).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert run_liveness(run_dir) == "listening"
        assert find_live_run(runs) == run_dir

        def rewrite(**changes: Any) -> None:
            (run_dir / RunFile.CONTROL).write_text(json.dumps({**info, **changes}))

        rewrite(pid=reaped_pid())  # its socket answers, but not for the process named
        assert run_liveness(run_dir) == "dead"
        with pytest.raises(UserError, match="no live run"):
            find_live_run(runs)
        if "process_start" in info:  # Linux: a reused pid is told apart by its start time
            rewrite(process_start=str(int(info["process_start"]) + 1))
            assert run_liveness(run_dir) == "dead"
        rewrite(pid=reaped_pid(), host="another-host")  # cannot tell: the socket decides
        assert run_liveness(run_dir) == "listening"
        rewrite()
    finally:
        server.close()
    assert run_liveness(run_dir) == "ended"


def test_a_new_server_clears_a_killed_runs_files_but_never_a_live_ones(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    uid = os.getuid()
    old_folder = Path(tempfile.mkdtemp(prefix=f"scu-tui-{uid}-", dir="/tmp"))
    old_socket = old_folder / "old.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(old_socket))  # bound, never accepting again: what a kill leaves
    stale = {"socket": str(old_socket), "pid": reaped_pid(), "host": socket.gethostname()}
    (run_dir / RunFile.CONTROL).write_text(json.dumps(stale))

    first = ControlServer(Recorder(), run_dir)
    first.start()
    try:
        assert not old_socket.exists() and not old_folder.exists()
        assert json.loads((run_dir / RunFile.CONTROL).read_text())["pid"] == os.getpid()
        second = ControlServer(Recorder(), run_dir)
        with pytest.raises(OSError, match="another process listens"):
            second.start()
        assert run_liveness(run_dir) == "listening"  # the live one is untouched
    finally:
        first.close()
