"""Reading events.jsonl written by a run that may have been killed, resumed or damaged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import start_event, step_event

from scu_tui.errors import UserError
from scu_tui.protocol import (
    EvalEvent,
    MessageEvent,
    ProposalEvent,
    StartEvent,
    event_from_dict,
    read_events,
)

STEP: dict[str, Any] = step_event(3, loss=1.5, grad=0.5, max_steps=10).to_dict()


def line(data: Any) -> bytes:
    return json.dumps(data).encode() + b"\n"


def test_every_kind_of_damaged_line_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = [{"type": "pause", "step": 1, "time": 1.0}, STEP, {"type": "future", "step": 9}]
    path.write_bytes(
        line(good[0])
        + b'{"type": "step", "step": 2, "loss": 1.\n'  # cut short by a kill, then resumed
        + line([1, 2])  # valid JSON, not an object
        + line("text")
        + line({"type": 3, "step": 1})  # type not a string
        + line({"type": "step", "step": "x"})  # step not an integer
        + line({"type": "step", "step": True})
        + b"\xff\xfe\x00garbage\n"  # not UTF-8
        + b"\n   \n"  # blank lines are nothing
        + line(good[1])
        + line(good[2])  # an unknown type from a newer writer is still an event
        + b'{"type": "step", "ste'  # a write in progress: neither read nor counted
    )
    events = read_events(path)
    assert list(events) == good
    assert events.skipped == 7
    assert list(events) == good and events.skipped == 7  # read again: the same


def test_non_utf8_bytes_inside_an_event_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"type": "message", "step": 4, "level": "info", "text": "caf\xe9"}\n')
    (data,) = list(read_events(path))
    assert data["text"] == "caf\ufffd" and isinstance(event_from_dict(data), MessageEvent)


def test_an_unterminated_last_line_that_is_whole_is_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line({"type": "pause", "step": 1}) + json.dumps(STEP).encode())
    events = read_events(path)
    assert [e["type"] for e in events] == ["pause", "step"] and events.skipped == 0


def test_an_unreadable_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"events\.jsonl: cannot be read"):
        list(read_events(tmp_path / "events.jsonl"))


@pytest.mark.parametrize(
    "change",
    [
        {"loss": "abc"},
        {"step": "x"},
        {"step": 2.5},
        {"loss": None},
        {"loss": True},
        {"tokens": 1.5},
        {"skipped": "no"},
        {"time": "now"},
        {"loss": 10**400},
    ],
)
def test_a_wrongly_typed_field_makes_no_event(change: dict[str, Any]) -> None:
    assert event_from_dict(STEP) is not None
    assert event_from_dict({**STEP, **change}) is None


def test_nested_fields_are_checked_too() -> None:
    proposal = {
        "type": "proposal",
        "step": 5,
        "id": "p1",
        "rule": "r",
        "reason": "why",
        "action": "lr x2",
        "knob": "lr_multiplier",
        "before": 1.0,
        "after": 2.0,
        "evidence": {"cv": 0.1, "note": "any JSON"},
    }
    assert isinstance(event_from_dict(proposal), ProposalEvent)
    assert event_from_dict({**proposal, "evidence": 3}) is None
    start = start_event(max_steps=10).to_dict()
    assert isinstance(event_from_dict(start), StartEvent)
    assert event_from_dict({**start, "knobs": {"lr": "fast"}}) is None
    assert event_from_dict({**start, "knobs": [1.0]}) is None


def test_non_finite_numbers_come_back_from_their_strings() -> None:
    data = {"type": "eval", "step": 2, "val_loss": "nan", "best_val_loss": "inf"}
    event = event_from_dict({**data, "is_best": False, "seconds": 1})
    assert isinstance(event, EvalEvent) and event.best_val_loss == float("inf")
    assert event.val_loss != event.val_loss  # nan
    text = {"type": "message", "step": 1, "level": "info", "text": "nan"}
    message = event_from_dict(text)
    assert isinstance(message, MessageEvent) and message.text == "nan"  # strings stay strings


@pytest.mark.parametrize("value", [None, 3, "step", [STEP], {"step": 1}, {"type": None}])
def test_anything_that_is_not_an_event_object_is_none(value: Any) -> None:
    assert event_from_dict(value) is None
