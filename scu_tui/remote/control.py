"""The control channel of a run: a Unix socket only its owner can use.

Protocol: newline-delimited JSON. A client sends ``{"cmd": "pause"}`` (or ``resume``,
``save``, ``eval``, ``stop``, ``status``, ``{"cmd": "mode", "value": "auto"}``,
``{"cmd": "accept"|"veto", "value": "p0003"}`` where an empty value means the oldest
pending proposal) and gets one reply line: ``{"ok": true, ...status}`` or
``{"ok": false, "error": "..."}``. A malformed, unknown, huge or deeply nested request
changes nothing and gets ``ok: false``.

Trust: a shared temp folder is never trusted. The socket lives in a private folder
that is checked without following links (a real directory, ours, no group or other
bits) or else made fresh; the socket itself is 0600. Both ends check the other's uid
(``SO_PEERCRED`` on Linux, ``getpeereid`` elsewhere), so a socket planted or swapped by
another local user can neither steer a run nor answer for one. A client that sends
nothing (or half a line) is dropped after :data:`IDLE_TIMEOUT`, so idle connections
cannot hold every slot.

``control.json`` in the run folder names the socket (run folders can be longer than a
socket path may be) and the run's process (pid, host, start time), so watchers can tell
a live run from a killed one.

The entry points start the server for a run they create (:func:`listening_run`, or
``Run(..., listen=serve)``); the run itself never imports this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from scu_tui.protocol import Command, CommandKind, Decider, Mode, RunFile
from scu_tui.training.checkpoint import atomic_write_json

if TYPE_CHECKING:
    from scu_tui.config import Settings
    from scu_tui.control.controller import Controller
    from scu_tui.run import Run
    from scu_tui.training.loader import Loader

MAX_LINE = 64 * 1024  # bytes; a longer request is refused and the connection closed
MAX_REPLY = 1024 * 1024  # bytes; a status reply is a few kilobytes
MAX_CLIENTS = 16
#: Connections the kernel queues before the server accepts them: a burst larger than
#: MAX_CLIENTS is accepted and turned away with a reply rather than left hanging.
BACKLOG = 128
#: Seconds a connection may take to send one request line (or wait idle between two).
IDLE_TIMEOUT = 10.0
#: ``sun_path`` holds 104 bytes on macOS and the BSDs, 108 on Linux (with the final NUL).
SUN_PATH_MAX = 108 if sys.platform.startswith("linux") else 104
#: What a client may send: every command but ``set``, and ``status``.
STATUS = "status"
COMMANDS = (*(kind.value for kind in CommandKind if kind != CommandKind.SET), STATUS)
MODES = tuple(mode.value for mode in Mode)

#: What a watcher can tell about a run from its folder (see :func:`run_liveness`).
Liveness = Literal["listening", "unreachable", "dead", "ended", "unknown"]


class Controllable(Protocol):
    """What the server needs from a run (plain reads; commands go through the queue)."""

    def submit(self, command: Command) -> None: ...

    def status_snapshot(self) -> dict[str, Any]: ...


class Listenable(Controllable, Protocol):
    """A run that names its folder: what :func:`serve` needs."""

    @property
    def output_dir(self) -> Path: ...


def serve(run: Listenable) -> ControlServer:
    """Start the control socket of a run whose folder it has claimed (``Run``'s
    ``listen`` hook). Raises OSError when it cannot; the run trains on without it."""
    server = ControlServer(run, run.output_dir)
    server.start()
    return server


def listening_run(
    settings: Settings,
    output_dir: Path | None = None,
    resume: Path | None = None,
    controller: Controller | None = None,
    loader: Loader | None = None,
) -> Run:
    """A run that serves its control socket: what the command line and the app start."""
    from scu_tui.run import Run

    return Run(settings, output_dir, resume, controller, loader=loader, listen=serve)


# --- whom to trust ------------------------------------------------------------------------


def owner_uid() -> int:
    """The one uid allowed at either end of the socket; one place so tests can stand in."""
    return os.getuid()


def is_private_dir(path: Path, uid: int) -> bool:
    """A real directory (not a link), owned by ``uid``, with no group or other bits."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == uid and info.st_mode & 0o077 == 0


def _usable_folder(folder: Path, uid: int) -> bool:
    """Make ``folder`` 0700 if absent; either way, use it only if it checks out.

    No chmod and no following: whatever is there already (a link, a file, a folder of
    someone else or open to others) is left alone and simply not used. A folder made by
    a concurrent run between our two calls is checked like any other.
    """
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    return is_private_dir(folder, uid)


def socket_folder() -> tuple[Path, bool]:
    """A private folder for sockets and whether it is a fresh one (to remove at the end).

    ``$XDG_RUNTIME_DIR/scu-tui-<uid>`` when the runtime dir itself is private, else
    ``$TMPDIR/scu-tui-<uid>``, else a fresh ``mkdtemp`` folder. Raises OSError when not
    even that can be made.
    """
    uid = owner_uid()
    name = f"scu-tui-{uid}"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and is_private_dir(Path(runtime), uid):
        folder = Path(runtime) / name
        if _usable_folder(folder, uid):
            return folder, False
    folder = Path(tempfile.gettempdir()) / name
    if _usable_folder(folder, uid):
        return folder, False
    return Path(tempfile.mkdtemp(prefix=f"{name}-")), True


def socket_name(run_dir: Path) -> str:
    """A short file name unique to the run folder (its path may be too long for a socket)."""
    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16] + ".sock"


def _libc_getpeereid() -> Callable[..., int] | None:
    if sys.platform.startswith("linux") or sys.platform == "win32":
        return None
    with contextlib.suppress(OSError, AttributeError):
        function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).getpeereid
        return function
    return None


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket; None where the OS cannot
    say (then the 0700 folder and the 0600 socket are the only guard). Raises OSError."""
    if hasattr(socket, "SO_PEERCRED"):
        size = struct.calcsize("3i")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    getpeereid = _libc_getpeereid()
    if getpeereid is None:
        return None
    uid_, gid_ = ctypes.c_uint32(), ctypes.c_uint32()
    if getpeereid(sock.fileno(), ctypes.byref(uid_), ctypes.byref(gid_)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"getpeereid: {os.strerror(code)}")
    return int(uid_.value)


def check_socket_path(path: Path, uid: int) -> None:
    """Refuse (PermissionError) a socket that is a link, not ours, or in a folder others
    could swap it in."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"no control socket at {path}") from None
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != uid:
        raise PermissionError(errno.EACCES, f"{path} is not a socket of this user: not trusted")
    if not is_private_dir(path.parent, uid):
        raise PermissionError(errno.EACCES, f"{path.parent} is not a private folder: not trusted")


# --- requests -----------------------------------------------------------------------------


class BadRequest(ValueError):
    """A request the server refuses; the message goes back to the client."""


def parse_request(line: bytes) -> Command | None:
    """The command in one request line; None for ``status``. Raises BadRequest."""
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise BadRequest("not valid JSON") from None
    except RecursionError:
        raise BadRequest("request nested too deeply") from None
    if not isinstance(request, dict):
        raise BadRequest('expected a JSON object like {"cmd": "pause"}')
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        shown = repr(cmd) if isinstance(cmd, str | int | float | bool | None) else "of that type"
        raise BadRequest(f"unknown command {shown[:80]} (known: {', '.join(COMMANDS)})")
    if cmd == STATUS:
        return None
    kind = CommandKind(cmd)
    value = request.get("value")
    if kind == CommandKind.MODE:
        if not isinstance(value, str) or value not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}")
        return Command(kind, value=Mode(value), by=Decider.REMOTE)
    if kind in (CommandKind.ACCEPT, CommandKind.VETO):
        if value is not None and not isinstance(value, str):
            raise BadRequest('a proposal id is a string like "p0003"')
        return Command(kind, value=value, by=Decider.REMOTE)
    # the rest carry nothing: a remote stop is always the user's (it saves and exits 0)
    return Command(kind, by=Decider.REMOTE)


class _Dropped(Exception):
    """The client went away, or sent nothing for too long: close without a reply."""


# --- the server -----------------------------------------------------------------------------


class ControlServer:
    """Accepts owner-only connections and turns request lines into run commands."""

    def __init__(
        self, run: Controllable, run_dir: Path, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        self.run = run
        self.run_dir = run_dir
        self.idle_timeout = idle_timeout
        self.path: Path | None = None  # chosen by start(): choosing may touch the disk
        self._fresh_folder = False
        self._sock: socket.socket | None = None
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self._closed = threading.Event()

    def start(self) -> None:
        """Listen, then name the socket and this process in ``control.json``.

        Raises only OSError (the run then trains on with attach off), also when another
        process already listens for this run folder.
        """
        if run_liveness(self.run_dir) == "listening":
            raise OSError(errno.EADDRINUSE, f"another process listens for {self.run_dir}")
        clear_stale(self.run_dir)
        folder, self._fresh_folder = socket_folder()
        self.path = folder / socket_name(self.run_dir)
        try:
            self._listen(self.path)
            self._write_info()
        except OSError:
            self.close()
            raise
        threading.Thread(target=self._accept_loop, name="scu-control", daemon=True).start()

    def _write_info(self) -> None:
        info: dict[str, Any] = {
            "socket": str(self.path),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": round(time.time(), 3),
            "uid": owner_uid(),
        }
        process_started = process_start(os.getpid())
        if process_started is not None:
            info["process_start"] = process_started
        atomic_write_json(self.run_dir / RunFile.CONTROL, info)

    def _listen(self, path: Path) -> None:
        if len(os.fsencode(path)) >= SUN_PATH_MAX:
            raise OSError(errno.ENAMETOOLONG, f"socket path too long ({path})")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a killed run's, in our own private folder
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            sock.bind(str(path))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        self._sock = sock

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
            with contextlib.suppress(OSError):
                self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / RunFile.CONTROL).unlink()
        self._remove_socket()

    def _remove_socket(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._fresh_folder:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.settimeout(self.idle_timeout)
            if not self._allowed(conn):
                self._reply(conn, {"ok": False, "error": "permission denied"})
                conn.close()
                continue
            if not self._clients.acquire(blocking=False):
                self._reply(conn, {"ok": False, "error": "too many clients"})
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _allowed(conn: socket.socket) -> bool:
        """Only the run's owner may steer it (the socket's mode is a second guard)."""
        try:
            uid = peer_uid(conn)
        except OSError:
            return False
        return uid is None or uid == owner_uid()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                buffer = b""
                while not self._closed.is_set():
                    try:
                        line, buffer = self._read_line(conn, buffer)
                    except BadRequest as exc:
                        self._reply(conn, {"ok": False, "error": str(exc)})
                        return
                    if line.strip():
                        self._reply(conn, self._handle(line))
        except (_Dropped, OSError):
            return
        finally:
            self._clients.release()

    def _read_line(self, conn: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
        """One request line within ``idle_timeout`` (trickling bytes does not extend it)."""
        deadline = time.monotonic() + self.idle_timeout
        while b"\n" not in buffer:
            if len(buffer) > MAX_LINE:
                raise BadRequest("request too long")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Dropped
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(MAX_LINE)
            except TimeoutError:
                raise _Dropped from None
            if not chunk:
                raise _Dropped  # the client went away (possibly mid-message): nothing to do
            buffer += chunk
        line, _, rest = buffer.partition(b"\n")
        if len(line) > MAX_LINE:
            raise BadRequest("request too long")
        return line, rest

    def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            command = parse_request(line)
            if command is not None:
                self.run.submit(command)
            return {"ok": True, **self.run.status_snapshot()}
        except BadRequest as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # never a traceback in the run's output for a request
            return {"ok": False, "error": f"request failed: {type(exc).__name__}: {exc}"}

    @staticmethod
    def _reply(conn: socket.socket, data: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, ValueError):
            conn.sendall(json.dumps(data).encode() + b"\n")


# --- the client -----------------------------------------------------------------------------


class ControlClient:
    """Talks to a run's control socket; one request, one reply.

    It trusts the socket only if it is ours: a socket (not a link) owned by this user in a
    private folder, and a peer process of this user. Raises OSError (PermissionError for
    a socket it does not trust) or ValueError for an unreadable ``control.json``.
    """

    def __init__(self, run_dir: Path, timeout: float = 5.0) -> None:
        info = read_control(run_dir)
        if info is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{run_dir}: no {RunFile.CONTROL}")
        self.path = Path(str(info["socket"]))
        self.timeout = timeout
        self.sock, self.reader = self._connect()
        self._used = False

    def _connect(self) -> tuple[socket.socket, Any]:
        uid = owner_uid()
        check_socket_path(self.path, uid)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    sock.connect(str(self.path))
                    break
                except BlockingIOError:  # the server's queue is full for a moment
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{self.path}: the run is not accepting") from None
                    time.sleep(0.01)
            peer = peer_uid(sock)
            if peer is not None and peer != uid:
                raise PermissionError(
                    errno.EACCES, f"{self.path} is served by uid {peer}, not by this user"
                )
        except OSError:
            sock.close()
            raise
        return sock, sock.makefile("rb")

    def request(self, cmd: str, value: Any = None) -> dict[str, Any]:
        """Send one command and return the reply.

        The run drops connections that stay idle; a reused connection it dropped is
        reconnected once (the request never reached the run, so nothing happens twice).
        """
        payload: dict[str, Any] = {"cmd": cmd}
        if value is not None:
            payload["value"] = value
        data = json.dumps(payload).encode() + b"\n"
        reused, self._used = self._used, True
        try:
            return self._exchange(data)
        except ConnectionError:
            if not reused:
                raise
        self.close()
        self.sock, self.reader = self._connect()
        return self._exchange(data)

    def _exchange(self, data: bytes) -> dict[str, Any]:
        self.sock.sendall(data)
        line = self.reader.readline(MAX_REPLY)
        if not line:
            raise ConnectionError("the run closed the control channel")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ValueError("the run sent a reply that is not a JSON object")
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
        with contextlib.suppress(OSError):
            self.sock.close()


# --- watching a run from its folder ---------------------------------------------------------


def read_control(run_dir: Path) -> dict[str, Any] | None:
    """``control.json`` as a dict with a socket path; None when absent or unreadable."""
    try:
        info = json.loads((run_dir / RunFile.CONTROL).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("socket"), str):
        return None
    return info


def process_start(pid: int) -> str | None:
    """When a process started, in the kernel's words (Linux); tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def process_alive(info: dict[str, Any]) -> bool | None:
    """Whether the process named in ``control.json`` still runs; None when it cannot be
    told from here (another host, an older file without one)."""
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process has the pid now: our run is gone
    except OSError:
        return None
    recorded = info.get("process_start")
    if isinstance(recorded, str):
        now = process_start(pid)
        if now is not None and now != recorded:
            return False  # the pid was reused by a later process
    return True


def _answers(run_dir: Path) -> bool:
    try:
        client = ControlClient(run_dir, timeout=2.0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    client.close()
    return True


def folder_locked(run_dir: Path) -> bool:
    """Whether a process holds the run folder's lock: a run writing there, listening or not."""
    try:
        from scu_tui.runlock import is_locked
    except ImportError:  # pragma: no cover - a tree without run-folder locks
        return False
    return is_locked(run_dir)


def run_liveness(run_dir: Path) -> Liveness:
    """What a watcher can tell about the run in ``run_dir``.

    ``listening``: its socket answers. ``dead``: ``control.json`` names a process on this
    host that is gone (killed: a finished run removes the file). ``unreachable``: the
    process is there, or the folder is locked, but no socket answers (attach off).
    ``ended``: no ``control.json`` and no lock: finished, or killed before listening.
    ``unknown``: a socket that does not answer, of a process this host cannot see.
    """
    info = read_control(run_dir)
    if info is None:
        return "unreachable" if folder_locked(run_dir) else "ended"
    alive = process_alive(info)
    if alive is False:
        return "dead"
    if _answers(run_dir):
        return "listening"
    if alive or folder_locked(run_dir):
        return "unreachable"
    return "unknown"


def is_live(run_dir: Path) -> bool:
    """Whether a run is listening for commands (a finished run is read-only)."""
    return run_liveness(run_dir) == "listening"


def clear_stale(run_dir: Path) -> None:
    """Remove a killed run's ``control.json`` and its socket, when they are ours.

    Called by a later run in the same folder (``--resume``) before it listens; a live,
    listening run's files are left alone.
    """
    info = read_control(run_dir)
    if info is None:
        return
    if run_liveness(run_dir) == "listening":
        return
    uid = owner_uid()
    old = Path(str(info["socket"]))
    with contextlib.suppress(OSError):
        st = os.lstat(old)
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == uid and is_private_dir(old.parent, uid):
            old.unlink()
            if old.parent.name.startswith(f"scu-tui-{uid}-"):  # a fresh folder of its own
                old.parent.rmdir()  # only if empty
    with contextlib.suppress(FileNotFoundError):
        (run_dir / RunFile.CONTROL).unlink()
