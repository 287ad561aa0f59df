"""The one vocabulary between the training side and everything that watches or steers it.

Events flow out of a run (to ``events.jsonl``, the console, the app, attach clients);
commands flow in. Both are small, plain-data dataclasses: no MLX, no Textual.
Every event serialises to one JSON object with at least ``type``, ``step`` and ``time``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


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


@dataclass(frozen=True)
class DecisionEvent(Event):
    type: ClassVar[str] = "decision"
    id: str
    outcome: str  # applied | accepted | vetoed | expired | reverted | observed
    by: str  # controller | user | ttl | guard


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
        RollbackEvent,
        MessageEvent,
        DoneEvent,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """Rebuild an event from its JSON form; None for unknown types (newer writers)."""
    cls = EVENT_TYPES.get(str(data.get("type")))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    for k, v in kwargs.items():
        if isinstance(v, str) and v in ("nan", "inf", "-inf") and k not in ("id", "text"):
            kwargs[k] = float(v)
    try:
        return cls(**kwargs)
    except TypeError:
        return None


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
