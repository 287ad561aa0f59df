"""What keys asked of the run that it has not confirmed yet.

A key shows its effect at once ("pausing…", "accepting… s0003") and the event that
confirms it clears it; a refusal clears what it refused. This is the only state the app
keeps beside the one it folds from events (:class:`~scu_tui.app.feed.RunState`), so an
attached app and an in-process one show the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scu_tui.protocol import CommandKind, Mode


@dataclass
class InFlight:
    """Keys pressed and not yet confirmed: their words on the status line, the pause and
    mode they asked for, and the proposals being answered (id -> "accepting… s0003")."""

    effects: dict[CommandKind, str] = field(default_factory=dict)
    pause_target: bool | None = None
    mode_target: Mode | None = None
    answering: dict[str, str] = field(default_factory=dict)

    def show(self, kind: CommandKind, text: str) -> None:
        self.effects[kind] = text

    def confirmed(self, kind: CommandKind) -> None:
        """The run did what the key asked (or the key asked nothing new)."""
        self.effects.pop(kind, None)
        if kind in (CommandKind.PAUSE, CommandKind.RESUME):
            self.pause_target = None
        elif kind == CommandKind.MODE:
            self.mode_target = None

    def answered(self, proposal_id: str) -> bool:
        """The run decided (or refused to answer) a proposal; True if a key was answering it."""
        return self.answering.pop(proposal_id, None) is not None

    def forget(self) -> None:
        """Drop every effect: the run ended, or a command never reached it."""
        self.effects.clear()
        self.answering.clear()
        self.pause_target = None
        self.mode_target = None

    @property
    def text(self) -> str:
        """The words the status line shows for them."""
        return " ".join(self.effects.values())
