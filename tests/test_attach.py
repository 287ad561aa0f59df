"""Attaching to a headless run from another process: history, live events, commands."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest
from helpers import scu, scu_popen, wait_for_line

from scu_tui.errors import UserError
from scu_tui.events import Command, Event
from scu_tui.remote.attach import RemoteRun


class Inbox:
    """A sink handing events to the test thread through a queue (no polling, no sleeps)."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()

    def emit(self, event: Event) -> None:
        self.events.put(event)

    def close(self) -> None:
        pass

    def wait_for(self, kind: str, timeout: float = 120) -> Event:
        while True:
            event = self.events.get(timeout=timeout)
            if event.type == kind:
                return event


def attach(run_dir: Path) -> tuple[RemoteRun, Inbox, threading.Thread]:
    remote = RemoteRun(run_dir)
    inbox = Inbox()
    remote.add_sink(inbox)
    thread = threading.Thread(target=remote.execute, daemon=True)
    thread.start()
    return remote, inbox, thread


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
    assert "read-only" in inbox.wait_for("message").to_dict()["text"]


def test_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a scu-tui run"):
        RemoteRun(tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        RemoteRun(tmp_path / "missing")
