"""The control socket never trusts a shared folder, another user, or an idle client."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import scu, scu_popen, wait_for_line

from scu_tui.protocol import Command, RunFile
from scu_tui.remote import control
from scu_tui.remote.control import (
    ControlClient,
    ControlServer,
    is_private_dir,
    peer_uid,
)

UID = os.getuid()
BOUND = 30.0  # seconds: a generous bound for anything that should take well under one


class Recorder:
    """A stand-in for the run: records the commands the socket hands it."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def submit(self, command: Command) -> None:
        self.commands.append(command)

    def status_snapshot(self) -> dict[str, Any]:
        return {"status": "running", "step": 3, "paused": False}


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A world-writable, sticky temp folder like /tmp, short enough for socket paths."""
    folder = Path(tempfile.mkdtemp(prefix="scu-t-", dir="/tmp"))
    folder.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield folder
    shutil.rmtree(folder)


def serve(run_dir: Path, **kwargs: Any) -> tuple[ControlServer, Recorder]:
    run_dir.mkdir(parents=True, exist_ok=True)
    recorder = Recorder()
    server = ControlServer(recorder, run_dir, **kwargs)
    server.start()
    return server, recorder


def socket_of(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / RunFile.CONTROL).read_text())["socket"])


def raw(run_dir: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(BOUND)
    sock.connect(str(socket_of(run_dir)))
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes; only a "too many clients" reply may come first."""
    try:
        data = sock.recv(4096)
        while b"too many clients" in data:
            data = sock.recv(4096)
    except ConnectionResetError:  # closed with our unread half line still queued
        return True
    return data == b""


def ask(sock: socket.socket, line: bytes) -> dict[str, Any]:
    sock.sendall(line)
    reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
    return reply


# --- where the socket lives -----------------------------------------------------------------


def test_the_per_user_folder_is_private_and_shared_by_runs(shared: Path, tmp_path: Path) -> None:
    one, _ = serve(tmp_path / "one")
    two, _ = serve(tmp_path / "two")
    try:
        folder = shared / f"scu-tui-{UID}"
        assert socket_of(tmp_path / "one").parent == folder == socket_of(tmp_path / "two").parent
        assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
        assert stat.S_IMODE(os.lstat(socket_of(tmp_path / "one")).st_mode) == 0o600
        assert ControlClient(tmp_path / "one").request("status")["ok"]
    finally:
        one.close()
        two.close()
    assert folder.is_dir() and not any(folder.iterdir())  # sockets gone, folder kept


def test_a_planted_symlink_is_neither_followed_nor_chmodded(shared: Path, tmp_path: Path) -> None:
    victim = shared / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    link = shared / f"scu-tui-{UID}"
    link.symlink_to(victim)
    server, recorder = serve(tmp_path / "run")
    folder = socket_of(tmp_path / "run").parent
    try:
        assert folder.parent == shared and folder.name.startswith(f"scu-tui-{UID}-")
        assert is_private_dir(folder, UID)
        assert ControlClient(tmp_path / "run").request("pause")["ok"]
        assert [c.kind for c in recorder.commands] == ["pause"]
    finally:
        server.close()
    assert link.is_symlink() and os.readlink(link) == str(victim)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and not any(victim.iterdir())
    assert not folder.exists()  # the fresh folder goes with the run


def test_a_folder_open_to_others_is_not_used_and_not_chmodded(
    shared: Path, tmp_path: Path
) -> None:
    planted = shared / f"scu-tui-{UID}"
    planted.mkdir()
    planted.chmod(0o777)
    server, _ = serve(tmp_path / "run")
    try:
        assert socket_of(tmp_path / "run").parent != planted
        assert stat.S_IMODE(planted.stat().st_mode) == 0o777 and not any(planted.iterdir())
    finally:
        server.close()


def test_a_file_in_place_of_the_folder_does_not_stop_the_run(shared: Path, tmp_path: Path) -> None:
    planted = shared / f"scu-tui-{UID}"
    planted.write_text("not a folder")
    server, _ = serve(tmp_path / "run")
    try:
        assert ControlClient(tmp_path / "run").request("status")["ok"]
    finally:
        server.close()
    assert planted.read_text() == "not a folder"


def test_the_runtime_dir_is_used_only_when_private(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = shared / "runtime"
    runtime.mkdir(mode=0o700)
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    server, _ = serve(tmp_path / "a")
    assert socket_of(tmp_path / "a").parent == runtime / f"scu-tui-{UID}"
    server.close()
    runtime.chmod(0o755)
    server, _ = serve(tmp_path / "b")
    assert socket_of(tmp_path / "b").parent == shared / f"scu-tui-{UID}"
    server.close()


def test_a_private_folder_is_a_real_directory_of_ours_closed_to_others(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir()
    private.chmod(0o700)
    assert is_private_dir(private, UID)
    assert not is_private_dir(private, UID + 1)
    (tmp_path / "link").symlink_to(private)
    assert not is_private_dir(tmp_path / "link", UID)
    private.chmod(0o750)
    assert not is_private_dir(private, UID)
    assert not is_private_dir(tmp_path / "missing", UID)


def test_start_raises_oserror_when_no_socket_can_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(OSError, match="too long"):
        ControlServer(Recorder(), run_dir).start()
    assert not (run_dir / RunFile.CONTROL).exists()


@pytest.mark.slow
def test_without_a_socket_the_run_trains_on_with_one_warning(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    out = tmp_path / "run"
    result = scu(
        "--headless",
        "--preset",
        "demo",
        "--max-steps",
        "3",
        "--output-dir",
        str(out),
        env={"TMPDIR": str(deep), "XDG_RUNTIME_DIR": ""},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("attach off") == 1 and "Traceback" not in output
    assert not (out / RunFile.CONTROL).exists()


# --- who may talk to it ---------------------------------------------------------------------


def test_peer_credentials_name_this_user() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_uid(left) == UID == peer_uid(right)


def test_another_users_connection_is_refused_and_changes_nothing(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, recorder = serve(tmp_path / "run")
    try:
        with monkeypatch.context() as patch:  # as if the run belonged to someone else
            patch.setattr(control, "owner_uid", lambda: UID + 1)
            with raw(tmp_path / "run") as sock:
                # the refusal comes on connecting, and the server closes without reading:
                # a command sent after it may meet the closed end, and is never read
                reply = json.loads(sock.makefile("rb").readline())
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b'{"cmd": "stop"}\n')
                assert closed_by_server(sock)
            assert reply == {"ok": False, "error": "permission denied"}
        assert recorder.commands == []
        assert ControlClient(tmp_path / "run").request("pause")["ok"]  # the owner is let in
        assert [(c.kind, c.by) for c in recorder.commands] == [("pause", "remote")]
    finally:
        server.close()


def test_the_client_trusts_only_a_socket_of_this_user(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, recorder = serve(tmp_path / "run")
    try:
        real = socket_of(tmp_path / "run")
        fake_dir = tmp_path / "fake"
        fake_dir.mkdir()

        def point_at(path: Path) -> None:
            (fake_dir / RunFile.CONTROL).write_text(json.dumps({"socket": str(path)}))

        link_folder = shared / "links"
        link_folder.mkdir(mode=0o700)
        (link_folder / "link.sock").symlink_to(real)  # a link, even to the real socket
        point_at(link_folder / "link.sock")
        with pytest.raises(PermissionError, match="not a socket of this user"):
            ControlClient(fake_dir)

        open_folder = shared / "open"
        open_folder.mkdir()
        open_folder.chmod(0o777)  # anyone could swap a socket in here
        impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        impostor.bind(str(open_folder / "x.sock"))
        impostor.listen(1)
        point_at(open_folder / "x.sock")
        with impostor, pytest.raises(PermissionError, match="not a private folder"):
            ControlClient(fake_dir)

        with monkeypatch.context() as patch:  # a peer of another uid, however it got there
            patch.setattr(control, "peer_uid", lambda sock: UID + 1)
            with pytest.raises(PermissionError, match=f"served by uid {UID + 1}"):
                ControlClient(tmp_path / "run")
        assert recorder.commands == []
    finally:
        server.close()


# --- clients that misbehave -----------------------------------------------------------------


def test_idle_clients_are_dropped_and_do_not_starve_a_real_request(
    shared: Path, tmp_path: Path
) -> None:
    server, recorder = serve(tmp_path / "run", idle_timeout=0.5)
    try:
        idle = [raw(tmp_path / "run") for _ in range(20)]
        for sock in idle[::2]:
            # half a line, never finished; a busy machine may have turned it away already
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b'{"cmd": "pa')
        started = time.monotonic()
        for sock in idle:  # each is dropped (or turned away when all slots were taken)
            assert closed_by_server(sock)
            sock.close()
        assert time.monotonic() - started < BOUND
        assert ControlClient(tmp_path / "run").request("pause")["ok"]
        assert [c.kind for c in recorder.commands] == ["pause"]
    finally:
        server.close()


def test_a_client_whose_idle_connection_was_dropped_reconnects_once(
    shared: Path, tmp_path: Path
) -> None:
    server, recorder = serve(tmp_path / "run", idle_timeout=0.3)
    client = ControlClient(tmp_path / "run")
    try:
        assert client.request("status")["ok"]
        assert client.sock.recv(1, socket.MSG_PEEK) == b""  # waits for the server's drop
        assert client.request("pause")["ok"]  # as an attached app does after a quiet spell
        assert [c.kind for c in recorder.commands] == ["pause"]  # sent once, not twice
    finally:
        client.close()
        server.close()


def test_trickling_bytes_does_not_keep_a_connection(shared: Path, tmp_path: Path) -> None:
    server, _ = serve(tmp_path / "run", idle_timeout=0.5)
    stop = threading.Event()
    try:
        sock = raw(tmp_path / "run")

        def trickle() -> None:
            while not stop.wait(0.05):  # a byte every 50 ms, never a newline
                try:
                    sock.send(b" ")
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        started = time.monotonic()
        assert closed_by_server(sock)  # dropped at the deadline, not kept alive by bytes
        assert time.monotonic() - started < 0.5 + 10
        stop.set()
        sock.close()
    finally:
        stop.set()
        server.close()


def test_nested_huge_and_odd_requests_get_ok_false_without_a_traceback(
    shared: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server, recorder = serve(tmp_path / "run")
    try:
        requests = {
            b"[" * 60_000 + b"\n": "nested too deeply",
            b'{"cmd": "pause", "value": ' + b"[" * 60_000 + b"\n": "nested too deeply",
            b'{"cmd": ["pause"]}\n': "unknown command",
            b'{"cmd": "mode", "value": {"a": 1}}\n': "mode must be",
            b"\xff\xfe\n": "not valid JSON",
            b'{"cmd": "pause"' + b" " * (70 * 1024) + b"}\n": "request too long",
        }
        for line, error in requests.items():
            with raw(tmp_path / "run") as sock:
                reply = ask(sock, line)
            assert reply["ok"] is False and error in reply["error"]
        assert recorder.commands == []
        assert ControlClient(tmp_path / "run").request("status")["ok"]  # still serving
    finally:
        server.close()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.slow
def test_a_running_run_refuses_bad_requests_without_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = scu_popen(
        "--headless", "--preset", "demo", "--max-steps", "20000", "--output-dir", str(out)
    )
    try:
        wait_for_line(proc, "step")
        for line in (b"[" * 60_000 + b"\n", b'{"cmd": ' * 20_000 + b"\n"):
            with raw(out) as sock:
                assert ask(sock, line)["ok"] is False
        client = ControlClient(out)
        assert client.request("stop")["ok"]
        client.close()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in stdout + stderr
