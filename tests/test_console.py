"""What the headless console prints for an event, without a run."""

from __future__ import annotations

from scu_tui.protocol import CommandKind, RefusedEvent
from scu_tui.sinks import format_event


def test_the_console_prints_a_refused_answer_in_the_words_the_socket_uses() -> None:
    refused = RefusedEvent(42, command=CommandKind.ACCEPT, reason="it was vetoed", id="p0003")
    line = format_event(refused)
    assert line == "warning: proposal p0003 is no longer pending (it was vetoed); nothing done"
    assert line == f"warning: {refused.sentence}"
