"""Properties over any input: settings load or fail with UserError; events read or fail cleanly.

Nothing a user can type or point to may end in a traceback: the CLI turns UserError into
exit code 2, so any other exception here is a crash a user would see.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scu_tui.config import Settings, all_keys, apply_assignments, load_file, merge
from scu_tui.errors import UserError
from scu_tui.protocol import EVENT_TYPES, Event, event_from_dict, read_events

#: Modest counts (the suite runs on two cores); no example database in the checkout.
EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KEYS = all_keys()

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.datetimes(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
#: Real keys (most of the time), misspelt ones and anything else.
key_names = st.one_of(
    st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k + "x"), st.text(max_size=12)
)


def nested(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``{"a.b": v}`` pairs as TOML tables, as a preset file would hold them."""
    doc: dict[str, Any] = {}
    for dotted, value in pairs:
        section, _, name = dotted.rpartition(".")
        table = doc.setdefault(section, {}) if section else doc
        if isinstance(table, dict):
            table[name] = value
    return doc


def check_settings_or_user_error(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        loaded = load_file(path)
    except UserError as exc:
        assert str(exc).strip() and "\n" not in str(exc)
        return
    assert isinstance(loaded, Settings)


@EXAMPLES
@given(st.text(max_size=200))
def test_any_toml_text_loads_or_is_a_user_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        check_settings_or_user_error(Path(folder) / "p.toml", text)


@EXAMPLES
@given(st.lists(st.tuples(key_names, toml_values), max_size=6))
def test_any_toml_document_loads_or_is_a_user_error(pairs: list[tuple[str, Any]]) -> None:
    try:
        text = tomli_w.dumps(nested(pairs))
    except (TypeError, ValueError):  # tomli-w refuses it (e.g. a key of odd characters)
        return
    with tempfile.TemporaryDirectory() as folder:
        check_settings_or_user_error(Path(folder) / "p.toml", text)


@EXAMPLES
@given(st.one_of(toml_values, st.lists(toml_values)))
def test_merge_of_any_value_loads_or_is_a_user_error(data: Any) -> None:
    try:
        merged = merge(Settings(), data, source="x")
    except UserError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(merged, Settings)


@EXAMPLES
@given(st.sampled_from(KEYS), st.text(max_size=40))
def test_any_set_string_applies_or_is_a_user_error(key: str, raw: str) -> None:
    for assignment in (f"{key}={raw}", raw):
        try:
            assert isinstance(apply_assignments(Settings(), [assignment]), Settings)
        except UserError as exc:
            assert "\n" not in str(exc).replace(assignment, "")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
event_like = st.fixed_dictionaries(
    {"type": st.sampled_from([*EVENT_TYPES, "other"]), "step": st.integers()},
    optional={
        name: json_values
        for name in ("loss", "time", "knobs", "evidence", "id", "text", "val_loss", "after")
    },
)


@EXAMPLES
@given(st.lists(st.one_of(st.binary(max_size=60), event_like.map(json.dumps).map(str.encode))))
def test_any_bytes_read_as_events_or_a_user_error(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        written = b"\n".join(chunks)
        path.write_bytes(written)
        events = read_events(path)
        for data in events:
            assert isinstance(data, dict) and isinstance(data["type"], str)
            assert isinstance(data["step"], int) and not isinstance(data["step"], bool)
            event = event_from_dict(data)
            assert event is None or isinstance(event, Event)
        assert 0 <= events.skipped <= written.count(b"\n")  # an unterminated last line: never


@EXAMPLES
@given(st.one_of(json_values, event_like, event_like.map(lambda d: {**d, "type": "step"})))
def test_event_from_dict_on_any_json_value_is_an_event_or_none(value: Any) -> None:
    event = event_from_dict(value)
    assert event is None or isinstance(event, Event)
    if event is not None:
        assert event_from_dict(json.loads(event.to_json())) == event or _has_nan(event)


def _has_nan(event: Event) -> bool:
    return "nan" in event.to_json()
