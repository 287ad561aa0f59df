"""``scu-tui attach DIR``: the app's view of a run that lives in another process.

:class:`RemoteRun` stands where the app expects a :class:`scu_tui.run.Run`: it replays
the newest part of ``events.jsonl``, then follows the file as the run appends to it, and
forwards commands over the run's control socket. Detaching (or a dropped SSH session)
closes only this side; the run never notices.

A run killed without a chance to say so (``kill -9``, a crash, a power cut) leaves no
``done`` event. The follower checks about once a second whether the run is still there
(its process, its socket) and, when it is gone, emits a ``done`` event of its own with
status ``RunStatus.LOST`` (never written to the run's files), so the dashboard stops
showing it as running.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from scu_tui.errors import UserError
from scu_tui.protocol import (
    NOT_RUNNING,
    Command,
    DoneEvent,
    Event,
    MessageEvent,
    MessageLevel,
    ModeEvent,
    PauseEvent,
    RefusedEvent,
    ResumeEvent,
    RunFile,
    RunStatus,
    event_from_dict,
    parse_event_line,
)
from scu_tui.remote.control import (
    COMMANDS,
    ControlClient,
    Liveness,
    is_live,
    read_control,
    run_liveness,
)
from scu_tui.runfolder import load_run_settings
from scu_tui.sinks import Sink

HISTORY_LINES = 5000  # events replayed on attach; older ones are skipped
POLL_SECONDS = 0.1
#: How often the follower checks that the run is still there (its process, its socket).
LIVENESS_SECONDS = 1.0
#: A run that stopped listening has this long for its done event to show up in the file
#: (a finished run writes it just before it removes ``control.json``).
ENDED_GRACE_SECONDS = 2.0


def lines_from(path: Path, start: int) -> tuple[list[str], int]:
    """The complete lines of a file from byte ``start`` on, and the offset after them."""
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8", errors="replace").splitlines(), start + end


def tail_lines(path: Path, limit: int) -> tuple[list[str], int]:
    """The last ``limit`` complete lines of a file and the offset just after them."""
    with open(path, "rb") as fh:
        data = fh.read()
    end = data.rfind(b"\n") + 1  # a partial last line is read later, when complete
    lines = deque(data[:end].decode("utf-8", errors="replace").splitlines(), maxlen=limit)
    return list(lines), end


class RemoteRun:
    """A run seen through its folder: events from the file, commands over the socket."""

    def __init__(self, run_dir: Path, history_lines: int = HISTORY_LINES) -> None:
        if not run_dir.is_dir():
            raise UserError(f"attach {run_dir}: no such directory")
        if not (run_dir / RunFile.EVENTS).is_file() or not (run_dir / RunFile.CONFIG).is_file():
            raise UserError(
                f"attach {run_dir}: not a scu-tui run "
                f"(expected {RunFile.EVENTS} and {RunFile.CONFIG})"
            )
        self.output_dir = run_dir
        self.settings = load_run_settings(run_dir)
        self.history_lines = history_lines
        self.sinks: list[Sink] = []
        self.live = is_live(run_dir)
        self.lost = ""  # why the run is gone without a done event; empty until then
        self.last_step = 0
        self.mode = self.settings.scu.mode
        self.paused = False
        self.attached = True
        self._detach = threading.Event()
        self._look_now = threading.Event()  # a command failed: check on the run at once
        self._outbox: queue.Queue[Command] = queue.Queue()
        self._client: ControlClient | None = None
        self._sender: threading.Thread | None = None
        self._replay_from: int | None = None  # set by older_history
        if self.live:
            self._start_sender()

    # --- the Run surface the app uses -----------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def submit(self, command: Command) -> None:
        """Queue a command for the run; never blocks the caller."""
        if self.lost:
            self._refuse(command, NOT_RUNNING, sent=False)
            return
        if command.kind not in COMMANDS:
            self._refuse(command, f"'{command.kind}' is not available to an attached app")
            return
        if not self.live:
            self._refuse(command, "read-only: this run is not live", sent=False)
            return
        self._outbox.put(command)

    def request_stop(self, reason: str = "user") -> None:
        """Detach: stop following; the run itself goes on."""
        self._detach.set()

    def older_history(self) -> Iterator[Event]:
        """The events before the newest ``history_lines`` (which :meth:`execute` replays):
        the dashboard folds them itself, so its plots show the whole surviving history while
        the replay through the feed stays short. Call it before :meth:`execute`."""
        data = (self.output_dir / RunFile.EVENTS).read_bytes()
        lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
        older = lines[: max(0, len(lines) - self.history_lines)]
        self._replay_from = sum(len(line) + 1 for line in older)
        for raw in older:
            data_ = parse_event_line(raw)
            event = event_from_dict(data_) if data_ is not None else None
            if event is not None and not isinstance(event, DoneEvent):
                yield event

    def execute(self) -> int:
        """Replay then follow ``events.jsonl`` until the run is done (or lost) or we detach."""
        path = self.output_dir / RunFile.EVENTS
        if self._replay_from is not None:  # the older part went through older_history
            lines, offset = lines_from(path, self._replay_from)
        else:
            lines, offset = tail_lines(path, self.history_lines)
        done = False
        for line in lines:
            done = self._emit_line(line) or done
        pending = b""
        next_look = 0.0
        quiet_since: float | None = None  # since when the run has been dead or gone
        said_read_only = False
        while not done and not self._detach.is_set():
            done, offset, pending = self._follow(path, offset, pending)
            now = time.monotonic()
            if done or (now < next_look and not self._look_now.is_set()):
                if not done:
                    self._detach.wait(POLL_SECONDS)
                continue
            self._look_now.clear()
            next_look = now + LIVENESS_SECONDS
            verdict = run_liveness(self.output_dir)
            self.live = verdict == "listening"
            if self.live:
                self._start_sender()
            if verdict not in ("dead", "ended"):
                quiet_since = None
                if not self.live and not said_read_only:
                    said_read_only = True
                    text = "the run is not listening: shown read-only"
                    self.emit(MessageEvent(self.last_step, level=MessageLevel.INFO, text=text))
                continue
            quiet_since = now if quiet_since is None else quiet_since
            if verdict == "dead" or now - quiet_since >= ENDED_GRACE_SECONDS:
                # a done event written just before the end still wins
                done, offset, pending = self._follow(path, offset, pending)
                if not done:
                    self._lose(verdict)
                    done = True
        if self._client is not None:
            self._client.close()
        return 0

    # --- internals ------------------------------------------------------------------------

    def _follow(self, path: Path, offset: int, pending: bytes) -> tuple[bool, int, bytes]:
        """Emit the complete lines appended since ``offset``; True once the done event came."""
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
        done = False
        if chunk:
            offset += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                done = self._emit_line(raw.decode("utf-8", errors="replace")) or done
        return done, offset, pending

    def _emit_line(self, line: str) -> bool:
        """Emit the event on one line (a line that is not one is skipped, as every reader of
        ``events.jsonl`` does); True when it is the done event."""
        data = parse_event_line(line) if line.strip() else None
        event = event_from_dict(data) if data is not None else None
        if event is None:
            return False
        if isinstance(event, ModeEvent):
            self.mode = event.mode
        if isinstance(event.step, int):
            self.last_step = event.step
        if isinstance(event, PauseEvent | ResumeEvent):
            self.paused = isinstance(event, PauseEvent)
        self.emit(event)
        return isinstance(event, DoneEvent)

    def _lose(self, verdict: Liveness) -> None:
        """The run is gone and said nothing: end the view with a LOST done event."""
        if verdict == "dead":
            info = read_control(self.output_dir) or {}
            who = f"its process {info.get('pid')}" if info.get("pid") else "its process"
            self.lost = f"{who} is gone without a done event (killed?)"
        else:
            self.lost = "it ended without a done event"
        self.live = False
        self.paused = False
        self.emit(DoneEvent(self.last_step, status=RunStatus.LOST, message=self.lost))

    def _start_sender(self) -> None:
        if self._sender is None:
            self._sender = threading.Thread(
                target=self._send_loop, name="scu-attach-send", daemon=True
            )
            self._sender.start()

    def _send_loop(self) -> None:
        while True:
            command = self._outbox.get()
            if self.lost:
                self._refuse(command, NOT_RUNNING, sent=False)
                continue
            try:
                if self._client is None:
                    self._client = ControlClient(self.output_dir)
                reply = self._client.request(command.kind, command.value)
            except (OSError, ValueError) as exc:
                if self._client is not None:
                    self._client.close()
                self._client = None
                self._look_now.set()  # the follower checks on the run at once
                gone = run_liveness(self.output_dir) in ("dead", "ended")
                self._refuse(command, NOT_RUNNING if gone else str(exc), sent=False)
                continue
            if not reply.get("ok"):
                self._refuse(command, str(reply.get("error")))

    def _refuse(self, command: Command, reason: str, sent: bool = True) -> None:
        """Say that a command did not take effect: never sent (``sent=False``: the run is
        gone, read-only, or the socket failed) or refused at the socket. Without a proposal
        id even for an answer: whether that proposal still waits, only the run can say."""
        self.emit(RefusedEvent(self.last_step, command=command.kind, reason=reason, sent=sent))


def live_runs(parent: Path) -> list[Path]:
    """The runs under ``parent`` that are listening, in name order."""
    candidates = sorted(p.parent for p in parent.glob(f"*/{RunFile.CONFIG}"))
    return [run for run in candidates if is_live(run)]


def find_live_run(parent: Path, choose: Callable[[list[Path]], Path | None] | None = None) -> Path:
    """The run under ``parent`` that is listening (``scu-tui attach`` with no DIR); with
    several, ``choose`` (a prompt in a terminal) picks one, else they are named."""
    live = live_runs(parent)
    if len(live) == 1:
        return live[0]
    if live and choose is not None:
        picked = choose(live)
        if picked is not None:
            return picked
    if live:
        names = ", ".join(str(run) for run in live)
        raise UserError(f"{len(live)} runs are live ({names}); say which: scu-tui attach DIR")
    raise UserError(
        f"no live run under {parent}/ (started there with the default --output-dir); "
        "say which: scu-tui attach DIR"
    )
