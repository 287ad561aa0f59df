"""The control channel of a run: a Unix socket only its owner can use.

Protocol: newline-delimited JSON. A client sends ``{"cmd": "pause"}`` (or ``resume``,
``save``, ``eval``, ``stop``, ``status``, ``{"cmd": "mode", "value": "auto"}``,
``{"cmd": "accept"|"veto", "value": "p0003"}`` where an empty value means the oldest
pending proposal) and gets one reply line: ``{"ok": true, ...status}`` or
``{"ok": false, "error": "..."}``. A malformed or unknown request changes nothing.

The socket lives in a private (0700) folder with 0600 permissions; its path is written
to ``control.json`` in the run folder, since run folders can be longer than a socket
path may be (108 bytes on Linux).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from scu_tui.config import MODES
from scu_tui.events import Command
from scu_tui.training.checkpoint import atomic_write_json

CONTROL_FILE = "control.json"
MAX_LINE = 64 * 1024  # bytes; a longer request is refused and the connection closed
MAX_CLIENTS = 16
COMMANDS = ("pause", "resume", "save", "eval", "stop", "mode", "accept", "veto", "status")


class Controllable(Protocol):
    """What the server needs from a run (plain reads; commands go through the queue)."""

    def submit(self, command: Command) -> None: ...

    def status_snapshot(self) -> dict[str, Any]: ...


def socket_path_for(run_dir: Path) -> Path:
    """A short socket path in a private per-user folder, unique to the run folder."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    folder = base / f"scu-tui-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return folder / f"{digest}.sock"


class BadRequest(ValueError):
    """A request the server refuses; the message goes back to the client."""


def parse_request(line: bytes) -> Command | None:
    """The command in one request line; None for ``status``. Raises BadRequest."""
    try:
        request = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("not valid JSON") from None
    if not isinstance(request, dict):
        raise BadRequest('expected a JSON object like {"cmd": "pause"}')
    cmd = request.get("cmd")
    if cmd not in COMMANDS:
        raise BadRequest(f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})")
    value = request.get("value")
    if cmd == "mode" and value not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}")
    if cmd in ("accept", "veto") and value is not None and not isinstance(value, str):
        raise BadRequest('a proposal id is a string like "p0003"')
    if cmd == "status":
        return None
    if cmd == "stop":
        value = None  # a remote stop is always the user's: it saves and exits normally
    return Command(cmd, value=value, by="remote")


class ControlServer:
    """Accepts owner-only connections and turns request lines into run commands."""

    def __init__(self, run: Controllable, run_dir: Path) -> None:
        self.run = run
        self.run_dir = run_dir
        self.path = socket_path_for(run_dir)
        self._sock: socket.socket | None = None
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self._closed = threading.Event()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(MAX_CLIENTS)
        self._sock = sock
        atomic_write_json(
            self.run_dir / CONTROL_FILE, {"socket": str(self.path), "pid": os.getpid()}
        )
        threading.Thread(target=self._accept_loop, name="scu-control", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / CONTROL_FILE).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if not self._clients.acquire(blocking=False):
                self._reply(conn, {"ok": False, "error": "too many clients"})
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn, conn.makefile("rb") as reader:
                while not self._closed.is_set():
                    line = reader.readline(MAX_LINE + 1)
                    if not line:
                        return  # the client went away (possibly mid-message): nothing to do
                    if len(line) > MAX_LINE and not line.endswith(b"\n"):
                        self._reply(conn, {"ok": False, "error": "request too long"})
                        return
                    if line.strip():
                        self._reply(conn, self._handle(line))
        except OSError:
            return
        finally:
            self._clients.release()

    def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            command = parse_request(line)
        except BadRequest as exc:
            return {"ok": False, "error": str(exc)}
        if command is not None:
            self.run.submit(command)
        return {"ok": True, **self.run.status_snapshot()}

    @staticmethod
    def _reply(conn: socket.socket, data: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(data).encode() + b"\n")


class ControlClient:
    """Talks to a run's control socket; one request, one reply."""

    def __init__(self, run_dir: Path, timeout: float = 5.0) -> None:
        info = json.loads((run_dir / CONTROL_FILE).read_text(encoding="utf-8"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(info["socket"]))
        self.reader = self.sock.makefile("rb")

    def request(self, cmd: str, value: Any = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"cmd": cmd}
        if value is not None:
            payload["value"] = value
        self.sock.sendall(json.dumps(payload).encode() + b"\n")
        line = self.reader.readline()
        if not line:
            raise ConnectionError("the run closed the control channel")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
            self.sock.close()


def is_live(run_dir: Path) -> bool:
    """Whether a run is listening for commands (a finished run is read-only)."""
    try:
        client = ControlClient(run_dir, timeout=2.0)
    except (OSError, ValueError, KeyError):
        return False
    client.close()
    return True
