"""Consumers of the event stream: ``events.jsonl`` and the headless console."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Protocol, TextIO

from scu_tui.protocol import (
    CheckpointEvent,
    CheckpointReason,
    ComparisonEvent,
    DecisionEvent,
    DoneEvent,
    EvalEvent,
    Event,
    EventHandlers,
    KnobEvent,
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
    SamplesEvent,
    StartEvent,
    StepEvent,
    handles,
)


class Sink(Protocol):
    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON line per event and flushes it, so a reader (or a kill) sees whole lines."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._terminate_partial_line(path)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    @staticmethod
    def _terminate_partial_line(path: Path) -> None:
        """A run killed mid-write may leave a partial last line: end it so the next one parses."""
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb+") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")

    def emit(self, event: Event) -> None:
        try:
            self._fh.write(event.to_json() + "\n")
            self._fh.flush()
        except OSError as exc:  # a full disk: say which file (a bare write() error does not)
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a failed flush of a full disk: already reported
            self._fh.close()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class EventLines(EventHandlers):
    """The console's line for each event type (None: not worth a line)."""

    def __init__(self, report_every: int = 1) -> None:
        self.report_every = report_every

    def line(self, event: Event) -> str | None:
        text = self.handle(event)
        return text if isinstance(text, str) else None

    @handles
    def _step(self, event: StepEvent) -> str | None:
        last = event.step == event.max_steps
        if event.step % self.report_every and not last and not event.skipped:
            return None
        flag = "  SKIPPED (non-finite)" if event.skipped else ""
        if event.swap_gb >= 0.01:
            flag += f"  SWAPPING {event.swap_gb:.2f} GB"
        return (
            f"step {event.step:>6}/{event.max_steps}  loss {event.loss:.4f}  "
            f"grad {event.grad_norm:.3g}  lr {event.lr:.3g}  "
            f"tok/s {event.tokens_per_second:,.0f}  mem {event.peak_memory_gb:.2f} GB"
            f"{f' (rss {event.rss_gb:.2f})' if math.isfinite(event.rss_gb) else ''}  "
            f"eta {format_duration(event.eta_seconds)}{flag}"
        )

    @handles
    def _eval(self, event: EvalEvent) -> str:
        best = "  (best)" if event.is_best else f"  (best {event.best_val_loss:.4f})"
        return f"eval {event.step:>6}  val_loss {event.val_loss:.4f}{best}  {event.seconds:.1f}s"

    @handles
    def _checkpoint(self, event: CheckpointEvent) -> str | None:
        if event.reason == CheckpointReason.BEST:  # the eval line already says "(best)"
            return None
        return f"save {event.step:>6}  {event.path}  ({event.reason})"

    @handles
    def _proposal(self, event: ProposalEvent) -> str:
        return (
            f"SCU Step {event.step}: {event.reason} "
            f"[{event.knob} {event.before:.3g} -> {event.after:.3g}, {event.id}]"
        )

    @handles
    def _decision(self, event: DecisionEvent) -> str:
        return f"SCU Step {event.step}: {event.id} {event.outcome} (by {event.by})"

    @handles
    def _knob(self, event: KnobEvent) -> str:
        change = f"{event.knob} {event.before:.3g} -> {event.after:.3g}"
        return f"knob {event.step:>6}  {change} ({event.by})"

    @handles
    def _rollback(self, event: RollbackEvent) -> str:
        return f"rollback {event.step} -> step {event.to_step}: {event.reason}"

    @handles
    def _pause(self, event: PauseEvent) -> str:
        return f"paused at step {event.step} (by {event.by})"

    @handles
    def _resume(self, event: ResumeEvent) -> str:
        return f"resumed at step {event.step} (by {event.by})"

    @handles
    def _mode(self, event: ModeEvent) -> str:
        return f"S-SCU mode -> {event.mode} (by {event.by})"

    @handles
    def _message(self, event: MessageEvent) -> str:
        return f"{event.level}: {event.text}"

    @handles
    def _refused(self, event: RefusedEvent) -> str:
        level = MessageLevel.WARNING if event.id else MessageLevel.ERROR  # a late answer
        return f"{level}: {event.sentence}"

    @handles
    def _start(self, event: StartEvent) -> str:
        verb = "resuming" if event.resumed else "training"
        return (
            f"{verb} {event.preset}: {event.model} on {event.data} -> {event.output_dir}\n"
            f"  {event.trainable_parameters:,} trainable of {event.total_parameters:,} parameters; "
            f"{event.train_examples} train / {event.valid_examples} valid examples; "
            f"{event.max_steps} steps; S-SCU {event.mode}"
        )

    @handles
    def _done(self, event: DoneEvent) -> str:
        tail = f": {event.message}" if event.message else ""
        return "\n".join([f"done at step {event.step}: {event.status}{tail}", *farewell(event)])

    @handles
    def _samples(self, event: SamplesEvent) -> str:
        return "\n".join(
            f"sample {event.step:>6}  {s.get('prompt')} -> {_one_line(s.get('answer'))}"
            for s in event.samples
        )

    @handles
    def _comparison(self, event: ComparisonEvent) -> str:
        return (
            f"compare {event.split} split ({event.rows} rows), base -> adapters: loss "
            f"{event.base_loss:.4f} -> {event.tuned_loss:.4f}; of "
            f"{len(event.examples)} sampled prompts {event.fixed} fixed, {event.broke} broke "
            "(comparison.json)"
        )


def format_event(event: Event, report_every: int = 1) -> str | None:
    """One readable line for an event, or None when it is not worth a line."""
    return EventLines(report_every).line(event)


def _one_line(text: object) -> str:
    lines = str(text or "").strip().splitlines()
    return (lines[0] + (" …" if len(lines) > 1 else "")) if lines else "(nothing)"


def farewell(done: DoneEvent) -> list[str]:
    """Where a run went and how to use it: its folder, its best validation loss, where the
    adapters are, and commands that run as printed (try them, fuse them into a model)."""
    if not done.output_dir:
        return []
    lines = [f"run folder: {done.output_dir}"]
    if done.adapters:
        best = (
            f"best validation loss {done.best_val_loss:.4f}; "
            if math.isfinite(done.best_val_loss)
            else ""
        )
        lines.append(f"{best}adapters: {done.adapters}")
        lines.append(f"try them:   scu-tui generate {done.output_dir}")
    if done.command:
        lines.append(f"or with mlx-lm: {done.command}")
    if done.adapters:
        lines.append(f"as a model: scu-tui fuse {done.output_dir}")
    return lines


class ConsoleSink:
    """Headless output: one line per report, eval, checkpoint and S-SCU decision."""

    def __init__(self, report_every: int, stream: TextIO | None = None) -> None:
        self.lines = _ConsoleLines(report_every)
        self.stream = stream or sys.stdout

    def emit(self, event: Event) -> None:
        line = self.lines.line(event)
        if line is not None:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class _ConsoleLines(EventLines):
    """The console's lines, and what a headless run's reader needs besides: how to answer
    a proposal that waits (it knows the mode and the run's folder from earlier events)."""

    def __init__(self, report_every: int) -> None:
        super().__init__(report_every)
        self.mode: str = ""
        self.output_dir = ""

    @handles
    def _start(self, event: StartEvent) -> str:
        self.mode, self.output_dir = event.mode, event.output_dir
        return super()._start(event)

    @handles
    def _mode(self, event: ModeEvent) -> str:
        self.mode = event.mode
        return super()._mode(event)

    @handles
    def _proposal(self, event: ProposalEvent) -> str:
        line = super()._proposal(event)
        if self.mode != Mode.ASK or event.rule == Rollback.ROLLBACK:
            return line
        return (
            f"{line}\n  {event.id} waits for an answer (or expires): run 'scu-tui attach "
            f"{self.output_dir}' in another terminal and press a (accept) or v (veto)"
        )
