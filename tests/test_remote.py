"""The control socket of a headless run, used from another process as `attach` does."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from helpers import read_events, scu_popen, wait_for_line

from scu_tui.protocol import RunFile
from scu_tui.remote.control import ControlClient, is_live

HOT = ["--set", "training.learning_rate=3e-2", "--set", "scu.lr_bounds=[1e-5, 1e-1]"]


def raw(run_dir: Path) -> socket.socket:
    path = json.loads((run_dir / RunFile.CONTROL).read_text())["socket"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


@pytest.mark.slow
def test_remote_pause_resume_veto_save_and_stop(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = scu_popen(
        "--headless",
        "--preset",
        "demo",
        "--max-steps",
        "2000",
        "--mode",
        "ask",
        "--output-dir",
        str(out),
        "--set",
        "training.report_every=1",
        *HOT,
    )
    wait_for_line(proc, "step      1/")
    sock_path = Path(json.loads((out / RunFile.CONTROL).read_text())["socket"])
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o700

    one, two = ControlClient(out), ControlClient(out)
    assert one.request("pause")["ok"]
    wait_for_line(proc, "paused at step")
    paused_at = one.request("status")["step"]
    assert two.request("status") == {**one.request("status"), "step": paused_at}
    assert two.request("status")["paused"] is True
    assert one.request("status")["step"] == paused_at  # no step while paused

    # garbage of every kind is refused and changes nothing
    for bad in (b"garbage\n", b"[1, 2]\n", b'{"cmd": "explode"}\n', b'{"cmd": "mode"}\n'):
        s = raw(out)
        s.sendall(bad)
        reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"] is False and reply["error"]
        s.close()
    s = raw(out)
    s.sendall(b"x" * (70 * 1024))  # too long, no newline
    assert json.loads(s.makefile("rb").readline())["error"] == "request too long"
    s.close()
    s = raw(out)
    s.sendall(b'{"cmd": "pa')  # the client drops mid-message
    s.close()
    assert one.request("status")["paused"] is True

    assert two.request("resume")["ok"]
    wait_for_line(proc, "resumed at step")
    # a proposal waits (ask mode); an urgent rollback before it acts at once and waits for
    # no one, so the line to wait for is the one that says a proposal waits
    waiting = wait_for_line(proc, "  p", contains="waits for an answer").split()[0]
    pending = one.request("status")["pending"]
    assert waiting in [p["id"] for p in pending]
    assert one.request("veto", waiting)["ok"]
    wait_for_line(proc, "SCU Step", contains="vetoed (by remote)")
    assert one.request("save")["ok"]
    saved = wait_for_line(proc, "save ")
    assert "(user)" in saved
    one.close()  # detaching never stops the run
    assert two.request("status")["status"] == "running"
    assert two.request("stop")["ok"]
    two.close()
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    events = read_events(out)
    decisions = [e for e in events if e["type"] == "decision"]
    assert any(d["outcome"] == "vetoed" and d["by"] == "remote" for d in decisions)
    assert events[-1]["type"] == "done" and events[-1]["status"] == "stopped"
    assert not (out / RunFile.CONTROL).exists() and not sock_path.exists()
    assert not is_live(out)


def test_finished_or_foreign_folder_is_not_live(tmp_path: Path) -> None:
    assert not is_live(tmp_path)
    (tmp_path / RunFile.CONTROL).write_text(json.dumps({"socket": str(tmp_path / "gone.sock")}))
    assert not is_live(tmp_path)
    assert os.path.exists(tmp_path / RunFile.CONTROL)
