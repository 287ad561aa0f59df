"""What the app's parts need of the app, as protocols.

The notices (:mod:`scu_tui.app.notices`) and the dashboard screen
(:mod:`scu_tui.app.screens.dashboard`) act on the app: its folded state, the keys in
flight, the run it drives. :class:`~scu_tui.app.app.ScuApp` imports them, so they name
the app by these protocols instead of importing it back.
"""

from __future__ import annotations

from typing import Protocol

from textual.notifications import SeverityLevel

from scu_tui.app.effects import InFlight
from scu_tui.app.feed import RunState
from scu_tui.protocol import Command, CommandKind
from scu_tui.sinks import Sink


class TrainingRun(Protocol):
    """What the app needs of a run: a :class:`~scu_tui.run.Run` in this process, or a
    :class:`~scu_tui.remote.attach.RemoteRun` that follows one in another (``attached``)."""

    attached: bool

    def add_sink(self, sink: Sink) -> None: ...
    def execute(self) -> int: ...
    def submit(self, command: Command) -> None: ...
    def request_stop(self, reason: str = ...) -> None: ...


class AppHost(Protocol):
    """The app as its notices and its dashboard see it (:class:`~scu_tui.app.app.ScuApp`)."""

    state: RunState
    in_flight: InFlight
    training_run: TrainingRun | None
    history_until: float
    quitting: bool
    setup_error_code: int | None
    picked: bool

    @property
    def attached(self) -> bool: ...
    def alert(self, text: str) -> None: ...
    def effect(self, kind: CommandKind, text: str) -> None: ...
    def show_word(self) -> None: ...
    def show_decisions(self) -> None: ...
    def refresh_bindings(self) -> None: ...
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None: ...
    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None: ...
