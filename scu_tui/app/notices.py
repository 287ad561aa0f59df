"""What an event means for the person watching, beyond the panels' numbers: a pop-up, the
bell, and the end of a key's pending effect.

The dashboard's :class:`~scu_tui.app.feed.RunState` folds every event into numbers; this
is the other consumer of the same stream, with one handler per event type (the protocol's
:class:`~scu_tui.protocol.EventHandlers`), so adding an event type touches one method here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.notifications import SeverityLevel

from scu_tui.protocol import (
    NOT_RUNNING,
    CheckpointEvent,
    CheckpointReason,
    CommandKind,
    ComparisonEvent,
    Decider,
    DecisionEvent,
    DoneEvent,
    EvalEvent,
    Event,
    EventHandlers,
    MessageEvent,
    MessageLevel,
    Mode,
    ModeEvent,
    PauseEvent,
    ProposalEvent,
    RefusedEvent,
    ResumeEvent,
    Rollback,
    RollbackEvent,
    RunStatus,
    StartEvent,
    handles,
)

if TYPE_CHECKING:
    from scu_tui.app.host import AppHost

#: A run's message levels as notification severities.
SEVERITY: dict[MessageLevel, SeverityLevel] = {
    MessageLevel.ERROR: "error",
    MessageLevel.WARNING: "warning",
    MessageLevel.INFO: "information",
}
#: Seconds a notice stays: an error until it is read, the rest briefly.
ERROR_SECONDS, NOTE_SECONDS, END_SECONDS = 30.0, 5.0, 60.0


class Notices(EventHandlers):
    """The app's reactions to events, one method per event type."""

    def __init__(self, app: AppHost) -> None:
        self.app = app

    def react(self, event: Event) -> None:
        """React to one drained event (replayed history on attach: only its end)."""
        if event.time < self.app.history_until and not isinstance(event, DoneEvent):
            return  # replayed on attach: the panels show it, a pop-up would be old news
        self.handle(event)

    @handles
    def _start(self, event: StartEvent) -> None:
        if self.app.in_flight.mode_target == event.mode:  # pressed while loading
            self.app.in_flight.confirmed(CommandKind.MODE)

    @handles
    def _proposal(self, event: ProposalEvent) -> None:
        if self.app.state.mode == Mode.ASK and event.rule != Rollback.ROLLBACK:
            self.app.alert(f"{event.id} waits for an answer: {event.reason}")  # (rollback: at once)

    @handles
    def _pause(self, event: PauseEvent | ResumeEvent) -> None:
        self.app.in_flight.confirmed(CommandKind.PAUSE)
        if event.by == Decider.GUARD:
            self.app.notify("Training paused by the divergence guard", severity="warning")

    @handles
    def _mode(self, event: ModeEvent) -> None:
        flight = self.app.in_flight
        if event.mode == flight.mode_target or flight.mode_target is None:
            flight.confirmed(CommandKind.MODE)
        self.app.notify(f"S-SCU mode: {event.mode}")

    @handles
    def _decision(self, event: DecisionEvent) -> None:
        self.app.in_flight.answered(event.id)

    @handles
    def _checkpoint(self, event: CheckpointEvent) -> None:
        if event.reason in (CheckpointReason.USER, CheckpointReason.SIGNAL):
            self.app.in_flight.confirmed(CommandKind.SAVE)
            self.app.notify(event.path, title=f"Checkpoint at step {event.step}")

    @handles
    def _eval(self, event: EvalEvent) -> None:
        if CommandKind.EVAL in self.app.in_flight.effects:
            self.app.in_flight.confirmed(CommandKind.EVAL)
            self.app.notify(
                f"val loss {event.val_loss:.4f}", title=f"Evaluation at step {event.step}"
            )

    @handles
    def _message(self, event: MessageEvent) -> None:
        timeout = ERROR_SECONDS if event.level == MessageLevel.ERROR else NOTE_SECONDS
        self.app.notify(event.text, severity=SEVERITY[event.level], timeout=timeout)

    @handles
    def _refused(self, event: RefusedEvent) -> None:
        """A command that did not take effect: its pending effect goes. A refused answer
        drops that proposal's "accepting…" only; any other refusal, every effect (the run
        never got the command, or turned it down: none of them will be confirmed)."""
        if event.id:
            self.app.in_flight.answered(event.id)
            self.app.show_decisions()
            self.app.notify(event.sentence, severity="warning", timeout=NOTE_SECONDS)
            return
        self.app.in_flight.forget()
        self.app.notify(event.sentence, severity="error", timeout=ERROR_SECONDS)

    @handles
    def _comparison(self, event: ComparisonEvent) -> None:
        self.app.notify(
            f"loss {event.base_loss:.3f} → {event.tuned_loss:.3f}; of {len(event.examples)} "
            f"sampled prompts {event.fixed} fixed, {event.broke} broke. Press c.",
            title="Base model vs adapters",
            timeout=ERROR_SECONDS,
        )

    @handles
    def _rollback(self, event: RollbackEvent) -> None:
        self.app.notify(
            event.reason, title=f"Rolled back to step {event.to_step}", severity="warning"
        )

    @handles
    def _done(self, event: DoneEvent) -> None:
        app = self.app
        app.in_flight.forget()
        app.refresh_bindings()  # the keys that steer the run leave the footer
        if not app.quitting:
            app.alert(f"training {event.status} at step {event.step}")
        if app.state.lost:
            app.notify(
                f"{event.message}\nPress q to leave.",
                title=NOT_RUNNING.capitalize(),
                severity="error",
                timeout=END_SECONDS,
            )
        elif event.status == RunStatus.FAILED and app.setup_error_code is not None:
            back = "Escape: back to the presets · " if app.picked else ""
            app.notify(
                f"{event.message}\n{back}q: quit",
                title="Could not start",
                severity="error",
                timeout=END_SECONDS,
            )
        elif event.status == RunStatus.FAILED:
            kept = "The last checkpoint is kept. " if app.state.last_checkpoint else ""
            app.notify(
                f"{event.message}\n{kept}Press q to quit.",
                title="Training failed",
                severity="error",
                timeout=END_SECONDS,
            )
        elif not app.quitting:
            app.notify(f"Training {event.status} at step {event.step}. Press q to quit.")
