"""The one vocabulary between the training side and everything that watches or steers it.

Events flow out of a run (to ``events.jsonl``, the console, the app, attach clients);
commands flow in. Both are small, plain-data dataclasses: no MLX, no Textual.
Every event serialises to one JSON object with at least ``type``, ``step`` and ``time``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin, get_type_hints

from scu_tui.errors import UserError


def _now() -> float:
    return round(time.time(), 3)


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


@dataclass(frozen=True)
class Event:
    """Base event; subclasses set ``type`` and add fields."""

    type: ClassVar[str] = "event"
    step: int
    time: float = field(default_factory=_now, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        data = {"type": self.type, **asdict(self)}
        return dict(_clean(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class StartEvent(Event):
    type: ClassVar[str] = "start"
    max_steps: int
    preset: str
    model: str
    data: str
    output_dir: str
    trainable_parameters: int
    total_parameters: int
    train_examples: int
    valid_examples: int
    truncated: int
    resumed: bool
    knobs: dict[str, float]
    mode: str


@dataclass(frozen=True)
class StepEvent(Event):
    type: ClassVar[str] = "step"
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    tokens_per_second: float
    peak_memory_gb: float
    step_seconds: float
    eta_seconds: float
    max_steps: int
    weight_decay: float
    dropout: float
    batch_size: int
    accumulation: int
    skipped: bool = False


@dataclass(frozen=True)
class EvalEvent(Event):
    type: ClassVar[str] = "eval"
    val_loss: float
    best_val_loss: float
    is_best: bool
    seconds: float


@dataclass(frozen=True)
class CheckpointEvent(Event):
    type: ClassVar[str] = "checkpoint"
    path: str
    reason: str  # "schedule", "user", "signal", "final", "best"


@dataclass(frozen=True)
class KnobEvent(Event):
    """A knob changed in the running optimizer or model."""

    type: ClassVar[str] = "knob"
    knob: str
    before: float
    after: float
    by: str


@dataclass(frozen=True)
class PauseEvent(Event):
    type: ClassVar[str] = "pause"
    by: str = "user"


@dataclass(frozen=True)
class ResumeEvent(Event):
    type: ClassVar[str] = "resume"
    by: str = "user"


@dataclass(frozen=True)
class ModeEvent(Event):
    type: ClassVar[str] = "mode"
    mode: str
    by: str = "user"


@dataclass(frozen=True)
class ProposalEvent(Event):
    type: ClassVar[str] = "proposal"
    id: str
    rule: str
    reason: str
    action: str
    knob: str
    before: float
    after: float
    evidence: dict[str, Any]
    diagnosis: str = ""
    #: the step of the ``analysis`` event it came from; -1: the per-step divergence guard
    analysis: int = -1


@dataclass(frozen=True)
class DecisionEvent(Event):
    type: ClassVar[str] = "decision"
    id: str
    outcome: str  # a protocol.Outcome: applied, accepted, vetoed, expired, ..., cancelled
    by: str  # a protocol.Decider: controller, user, remote, ttl, guard, resume, rollback


@dataclass(frozen=True)
class AnalysisEvent(Event):
    """What the S-SCU computed on a control step, exactly as it decided on it.

    ``trend``, ``gradients``, ``wavelet`` and ``validation`` are the signal families
    (see scu_tui.control.signals); ``rule`` and ``proposal`` name what fired (empty when
    nothing did) and ``why`` says, in words, why it did or why nothing did; ``effects``
    holds the effect checks judged on this step (proposal id, metric, before, after,
    change, verdict). Views render these; none recomputes them.
    """

    type: ClassVar[str] = "analysis"
    diagnosis: str
    why: str
    period: int
    window: int
    nonfinite: int
    trend: dict[str, Any]
    gradients: dict[str, Any]
    wavelet: dict[str, Any]
    validation: dict[str, Any]
    rule: str = ""
    proposal: str = ""
    effects: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RollbackEvent(Event):
    type: ClassVar[str] = "rollback"
    to_step: int
    reason: str


@dataclass(frozen=True)
class MessageEvent(Event):
    """A line for the person watching: a warning or a note."""

    type: ClassVar[str] = "message"
    level: str  # info | warning | error
    text: str


@dataclass(frozen=True)
class DoneEvent(Event):
    type: ClassVar[str] = "done"
    status: str  # completed | stopped | interrupted | failed
    message: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        StartEvent,
        StepEvent,
        EvalEvent,
        CheckpointEvent,
        KnobEvent,
        PauseEvent,
        ResumeEvent,
        ModeEvent,
        ProposalEvent,
        DecisionEvent,
        AnalysisEvent,
        RollbackEvent,
        MessageEvent,
        DoneEvent,
    )
}


_NON_FINITE = ("nan", "inf", "-inf")
_BAD = object()


def _field_types(cls: type[Event]) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


#: event type -> {field: its annotation}, to check what a file says against it
FIELD_TYPES: dict[str, dict[str, Any]] = {t: _field_types(c) for t, c in EVENT_TYPES.items()}


def _typed(hint: Any, value: Any) -> Any:
    """``value`` as ``hint`` says (non-finite floats come back from their strings), or _BAD."""
    if hint is Any:
        return value
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool):
        return _BAD
    if hint is int:
        return value if isinstance(value, int) else _BAD
    if hint is float:
        if isinstance(value, float):
            return value
        if isinstance(value, int):
            return float(value) if abs(value) < 2**1023 else _BAD
        return float(value) if value in _NON_FINITE else _BAD
    if hint is str:
        return value if isinstance(value, str) else _BAD
    if get_origin(hint) is list:
        (item_hint,) = get_args(hint)
        if not isinstance(value, list):
            return _BAD
        items = [_typed(item_hint, v) for v in value]
        return _BAD if any(v is _BAD for v in items) else items
    if get_origin(hint) is dict:
        _, value_hint = get_args(hint)
        if not isinstance(value, dict):
            return _BAD
        out = {k: _typed(value_hint, v) for k, v in value.items()}
        if any(not isinstance(k, str) or v is _BAD for k, v in out.items()):
            return _BAD
        return out
    return _BAD


def event_from_dict(data: Any) -> Event | None:
    """Rebuild an event from its JSON form; None for unknown types (newer writers) and for
    anything that is not one: a missing field, or a field of the wrong type."""
    if not isinstance(data, dict):
        return None
    cls = EVENT_TYPES.get(data["type"]) if isinstance(data.get("type"), str) else None
    if cls is None:
        return None
    kwargs: dict[str, Any] = {}
    for name, hint in FIELD_TYPES[cls.type].items():
        if name in data:
            value = _typed(hint, data[name])
            if value is _BAD:
                return None
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError:  # a required field is missing
        return None


# --- reading events.jsonl ---------------------------------------------------------------


def parse_event_line(line: str | bytes) -> dict[str, Any] | None:
    """The event object on one line of ``events.jsonl``, or None when the line is not one:
    not JSON, not an object, or without a string ``type`` and an integer ``step``."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return None
    step = data.get("step")
    return data if isinstance(step, int) and not isinstance(step, bool) else None


class EventLines:
    """The events of an ``events.jsonl``, read tolerantly; iterate it once or more.

    A run killed mid-write leaves a partial last line, and a resumed run ends it with a
    newline, so a damaged line can sit anywhere: such lines are skipped and counted in
    :attr:`skipped`, bytes that are not UTF-8 are replaced, and an unterminated last line
    that does not parse is a write in progress (neither read nor counted).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise UserError(f"{self.path}: cannot be read: {exc.strerror or exc}") from None
        self.skipped = 0
        lines = data.split(b"\n")
        last = len(lines) - 1  # the text after the final newline ("" when it ends with one)
        for number, raw in enumerate(lines):
            if not raw.strip():
                continue
            event = parse_event_line(raw)
            if event is not None:
                yield event
            elif number != last:
                self.skipped += 1


def read_events(path: Path) -> EventLines:
    """Every event in a run's ``events.jsonl`` as a dict, skipping lines that are not events.

    Raises :class:`UserError` only when the file cannot be read at all.
    """
    return EventLines(path)


# --- commands ---------------------------------------------------------------------------

COMMAND_KINDS = ("pause", "resume", "save", "eval", "stop", "mode", "accept", "veto", "set")


@dataclass(frozen=True)
class Command:
    """A request to a run, carried out between two steps.

    ``kind`` is one of :data:`COMMAND_KINDS`; ``value`` carries the mode name for
    ``mode``, a proposal id for ``accept``/``veto`` (empty = the pending one), and
    ``{"knob": name, "value": x}`` for ``set``.
    """

    kind: str
    value: Any = None
    by: str = "user"

    def __post_init__(self) -> None:
        if self.kind not in COMMAND_KINDS:
            raise ValueError(f"unknown command '{self.kind}' (known: {', '.join(COMMAND_KINDS)})")
