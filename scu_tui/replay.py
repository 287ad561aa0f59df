"""``scu-tui replay DIR``: run the S-SCU over a finished run's events, offline.

Every proposal is treated as observed (nothing was applied), so the output shows what
the controller would have proposed on that history: shadow-mode evidence, and a way to
tune ``[scu]`` settings with ``--set`` without training again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from scu_tui.config import Settings
from scu_tui.control.controller import Controller
from scu_tui.control.policy import ROLLBACK, Proposal
from scu_tui.control.trial import TrialVerdict
from scu_tui.errors import UserError
from scu_tui.protocol import (
    DoneEvent,
    EvalEvent,
    Event,
    Knob,
    KnobEvent,
    Outcome,
    RollbackEvent,
    RunFile,
    StartEvent,
    StepEvent,
    TrialEvent,
    TrialStartEvent,
    event_from_dict,
    read_events,
)

#: The event types a replay reads (a damaged line of one of them is counted).
READ = ("knob", "eval", "step", "rollback", "trial_start", "trial")


def replay(run_dir: Path, settings: Settings) -> tuple[list[Proposal], int]:
    """The proposals the controller makes over the run's step and eval history, and how
    many lines of ``events.jsonl`` were skipped as damaged (not events of known shape)."""
    path = run_dir / RunFile.EVENTS
    if not path.is_file():
        raise UserError(f"replay {run_dir}: not a scu-tui run (no {RunFile.EVENTS})")
    controller = Controller(
        settings.scu, settings.training, dropout=settings.lora.type != "full"
    )
    controller.snapshot_taken(0)  # as the run keeps its start (its states, by step only)
    knobs: dict[str, float] = {Knob.LR_MULTIPLIER: 1.0}
    proposals: list[Proposal] = []
    lines = read_events(path)
    malformed = 0
    events: list[Event] = []
    for data in lines:
        event = event_from_dict(data)
        if event is None:
            if data.get("type") in READ:
                malformed += 1
            continue
        events.append(event)
    good = len(events)
    held: list[StepEvent] | None = None  # a trial's steps, both branches, until its verdict
    for event in _as_the_run_saw_them(events):
        if isinstance(event, TrialStartEvent):
            held = []
            continue
        if held is not None and isinstance(event, StepEvent):
            held.append(event)  # the live controller saw none of them as they ran
            continue
        if isinstance(event, (StartEvent, DoneEvent)):
            held = None  # a run stopped inside a trial went back to its start: none seen
        if isinstance(event, TrialEvent):
            proposal = _trial_seen(controller, event, held or [], knobs)
            held = None
            if proposal is not None:
                controller.record_outcome(proposal.id, Outcome.OBSERVED)
                proposals.append(proposal)
        elif isinstance(event, KnobEvent):
            knobs[event.knob] = event.after
        elif isinstance(event, EvalEvent) and event.step > 0:
            controller.observe_eval(event.step, event.val_loss)
        elif isinstance(event, RollbackEvent):  # one timeline: the abandoned branch goes
            controller.notify_rollback(event.to_step)
            proposals = [p for p in proposals if p.step <= event.to_step or _led_to(p, event)]
        elif isinstance(event, StepEvent):
            controller.observe(
                event.step,
                event.loss,
                event.grad_norm,
                event.lr,
                skipped=event.skipped,
                alignment=event.alignment,
            )
            knobs["lr"] = event.lr
            knobs[Knob.WEIGHT_DECAY] = event.weight_decay
            knobs[Knob.DROPOUT] = event.dropout
            knobs[Knob.ACCUMULATION] = float(event.accumulation)
            proposal, _ = controller.propose(event.step, knobs)  # as the run does
            if proposal is not None:
                controller.record_outcome(proposal.id, Outcome.OBSERVED)
                proposals.append(proposal)
            if controller.snapshot_due(event.step):
                controller.snapshot_taken(event.step)
    skipped = lines.skipped + malformed
    if skipped and not good:
        raise UserError(f"{path}: none of its {skipped} lines is an event; not a run's events")
    return proposals, skipped


def _trial_seen(
    controller: Controller, event: TrialEvent, branches: list[StepEvent], knobs: dict[str, float]
) -> Proposal | None:
    """What the live controller saw of a trial: the winning branch's steps, numbered as
    the trial's last ones, then the verdict (the lower LR's move when it won)."""
    ran = {e.step: e for e in branches if event.first < e.step <= event.step}  # newest copy
    for n, e in event.one_timeline(ran.items()):
        controller.observe(n, e.loss, e.grad_norm, e.lr, e.skipped, e.alignment)
    knobs["lr"] = event.lr
    verdict = TrialVerdict(
        event.tried_wins, event.ratio, event.t, event.current_loss, event.tried_loss
    )
    return controller.trial_done(event.first, event.step, verdict, knobs)


def _as_the_run_saw_them(events: list[Event]) -> list[Event]:
    """The events in the order the live controller saw them: a step's validation pass is
    written after its step but reaches the controller before it (the pass runs between
    the update and the S-SCU's look at the step)."""
    ordered: list[Event] = []
    newest: tuple[int, int] | None = None  # the newest step and its place in ordered
    for event in events:
        if isinstance(event, StepEvent):
            newest = (event.step, len(ordered))
        elif isinstance(event, EvalEvent) and newest is not None and event.step == newest[0]:
            ordered.insert(newest[1], event)
            newest = None
            continue
        elif isinstance(event, (RollbackEvent, TrialEvent)):  # a pass after it came after it
            newest = None
        ordered.append(event)
    return ordered


def _led_to(proposal: Proposal, event: RollbackEvent) -> bool:
    """The rollback proposal that went back to this event's step (or before): proposed
    on the branch it left, it belongs to the timeline that goes on."""
    to_step = proposal.evidence.get("to_step")
    return proposal.knob == ROLLBACK and isinstance(to_step, int) and to_step <= event.to_step


def _recorded_proposals(run_dir: Path) -> int | None:
    """How many actions the run recorded, or None when its metrics file is missing or bad."""
    metrics = run_dir / RunFile.METRICS
    try:
        recorded = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return len(recorded) if isinstance(recorded, list) else None


def print_replay(run_dir: Path, settings: Settings, out: TextIO, err: TextIO = sys.stderr) -> int:
    """Each proposal on ``out``; a note on ``err`` when damaged lines were skipped."""
    proposals, skipped = replay(run_dir, settings)
    if skipped:
        lines = "line was" if skipped == 1 else "lines were"
        print(
            f"scu-tui: note: {skipped} {lines} not events and skipped ({run_dir / RunFile.EVENTS})",
            file=err,
        )
    for p in proposals:
        print(f"SCU Step {p.step}: {p.reason} [{p.action}; rule {p.rule}, {p.diagnosis}]", file=out)
    recorded = _recorded_proposals(run_dir)
    tail = "" if recorded is None else f"; the run itself recorded {recorded}"
    print(f"{len(proposals)} proposals on replay (nothing applied){tail}.", file=out)
    return 0
