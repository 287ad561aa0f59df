"""Events and commands live in :mod:`scu_tui.protocol`; import them from there.

This module only re-exports them for code not yet moved over (the app), and goes once
nothing imports it.
"""

from __future__ import annotations

from scu_tui.protocol import (
    EVENT_TYPES,
    FIELD_TYPES,
    AnalysisEvent,
    CheckpointEvent,
    Command,
    DecisionEvent,
    DoneEvent,
    EvalEvent,
    Event,
    EventLines,
    KnobEvent,
    KnobSetting,
    MessageEvent,
    ModeEvent,
    PauseEvent,
    ProposalEvent,
    ResumeEvent,
    RollbackEvent,
    StartEvent,
    StepEvent,
    event_from_dict,
    parse_event_line,
    read_events,
)

__all__ = [
    "EVENT_TYPES",
    "FIELD_TYPES",
    "AnalysisEvent",
    "CheckpointEvent",
    "Command",
    "DecisionEvent",
    "DoneEvent",
    "EvalEvent",
    "Event",
    "EventLines",
    "KnobEvent",
    "KnobSetting",
    "MessageEvent",
    "ModeEvent",
    "PauseEvent",
    "ProposalEvent",
    "ResumeEvent",
    "RollbackEvent",
    "StartEvent",
    "StepEvent",
    "event_from_dict",
    "parse_event_line",
    "read_events",
]
