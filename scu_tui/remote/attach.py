"""``scu-tui attach DIR``: the app's view of a run that lives in another process.

:class:`RemoteRun` stands where the app expects a :class:`scu_tui.run.Run`: it replays
the newest part of ``events.jsonl``, then follows the file as the run appends to it, and
forwards commands over the run's control socket. Detaching (or a dropped SSH session)
closes only this side; the run never notices.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scu_tui.errors import UserError
from scu_tui.events import Command, DoneEvent, Event, MessageEvent, ModeEvent, event_from_dict
from scu_tui.remote.control import ControlClient, is_live
from scu_tui.run import CONFIG_FILE, EVENTS_FILE, load_run_settings
from scu_tui.sinks import Sink

if TYPE_CHECKING:
    from scu_tui.app import ScuApp

HISTORY_LINES = 5000  # events replayed on attach; older ones are skipped
POLL_SECONDS = 0.1


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
        if not (run_dir / EVENTS_FILE).is_file() or not (run_dir / CONFIG_FILE).is_file():
            raise UserError(
                f"attach {run_dir}: not a scu-tui run (expected {EVENTS_FILE} and {CONFIG_FILE})"
            )
        self.output_dir = run_dir
        self.settings = load_run_settings(run_dir)
        self.history_lines = history_lines
        self.sinks: list[Sink] = []
        self.live = is_live(run_dir)
        self.mode = self.settings.scu.mode
        self.paused = False
        self.attached = True
        self._detach = threading.Event()
        self._outbox: queue.Queue[Command] = queue.Queue()
        self._client: ControlClient | None = None
        if self.live:
            threading.Thread(target=self._send_loop, name="scu-attach-send", daemon=True).start()

    # --- the Run surface the app uses -----------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def submit(self, command: Command) -> None:
        """Queue a command for the run; never blocks the caller."""
        if not self.live:
            self.emit(MessageEvent(0, level="warning", text="read-only: this run is not live"))
            return
        self._outbox.put(command)

    def request_stop(self, reason: str = "user") -> None:
        """Detach: stop following; the run itself goes on."""
        self._detach.set()

    def execute(self) -> int:
        """Replay then follow ``events.jsonl`` until the run is done or we detach."""
        path = self.output_dir / EVENTS_FILE
        lines, offset = tail_lines(path, self.history_lines)
        done = False
        for line in lines:
            done = self._emit_line(line) or done
        if not self.live and not done:
            self.emit(
                MessageEvent(0, level="info", text="the run is not listening: shown read-only")
            )
        pending = b""
        while not done and not self._detach.is_set():
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            if chunk:
                offset += len(chunk)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    done = self._emit_line(raw.decode("utf-8", errors="replace")) or done
            if not done:
                self._detach.wait(POLL_SECONDS)
                if self.live and not os.path.exists(self.output_dir / "control.json"):
                    self.live = False  # the run ended: its DoneEvent may still be arriving
        if self._client is not None:
            self._client.close()
        return 0

    # --- internals ------------------------------------------------------------------------

    def _emit_line(self, line: str) -> bool:
        if not line.strip():
            return False
        try:
            event = event_from_dict(json.loads(line))
        except json.JSONDecodeError:
            return False
        if event is None:
            return False
        if isinstance(event, ModeEvent):
            self.mode = event.mode
        self.paused = {"pause": True, "resume": False}.get(event.type, self.paused)
        self.emit(event)
        return isinstance(event, DoneEvent)

    def _send_loop(self) -> None:
        while True:
            command = self._outbox.get()
            try:
                if self._client is None:
                    self._client = ControlClient(self.output_dir)
                reply = self._client.request(command.kind, command.value)
            except (OSError, ValueError, ConnectionError) as exc:
                self._client = None
                self.emit(MessageEvent(0, level="error", text=f"command not sent: {exc}"))
                continue
            if not reply.get("ok"):
                self.emit(MessageEvent(0, level="error", text=str(reply.get("error"))))


def find_live_run(parent: Path) -> Path:
    """The one run under ``parent`` that is listening (``scu-tui attach`` with no DIR)."""
    candidates = sorted(p.parent for p in parent.glob(f"*/{CONFIG_FILE}"))
    live = [run for run in candidates if is_live(run)]
    if len(live) == 1:
        return live[0]
    if live:
        names = ", ".join(str(run) for run in live)
        raise UserError(f"{len(live)} runs are live ({names}); say which: scu-tui attach DIR")
    raise UserError(
        f"no live run under {parent}/ (started there with the default --output-dir); "
        "say which: scu-tui attach DIR"
    )


def attach_app(run_dir: Path, theme: str | None = None) -> ScuApp:
    """The dashboard on a run in its folder; raises :class:`UserError` if it is not a run."""
    remote = RemoteRun(run_dir)
    from scu_tui.app import make_app

    def follow(settings: Any, output_dir: Any = None, resume: Any = None) -> RemoteRun:
        return remote

    return make_app(
        remote.settings,
        output_dir=run_dir,
        run_factory=follow,
        theme=theme or remote.settings.ui.theme,
    )
