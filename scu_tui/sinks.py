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
    ComparisonEvent,
    DecisionEvent,
    DoneEvent,
    EvalEvent,
    Event,
    KnobEvent,
    MessageEvent,
    ModeEvent,
    PauseEvent,
    ProposalEvent,
    RefusedEvent,
    ResumeEvent,
    RollbackEvent,
    SamplesEvent,
    StartEvent,
    StepEvent,
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


def format_event(event: Event, report_every: int = 1) -> str | None:
    """One readable line for an event, or None when it is not worth a line."""
    if isinstance(event, StepEvent):
        last = event.step == event.max_steps
        if event.step % report_every and not last and not event.skipped:
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
    if isinstance(event, EvalEvent):
        best = "  (best)" if event.is_best else f"  (best {event.best_val_loss:.4f})"
        return f"eval {event.step:>6}  val_loss {event.val_loss:.4f}{best}  {event.seconds:.1f}s"
    if isinstance(event, CheckpointEvent):
        if event.reason == "best":  # the eval line already says "(best)"
            return None
        return f"save {event.step:>6}  {event.path}  ({event.reason})"
    if isinstance(event, ProposalEvent):
        return (
            f"SCU Step {event.step}: {event.reason} "
            f"[{event.knob} {event.before:.3g} -> {event.after:.3g}, {event.id}]"
        )
    if isinstance(event, DecisionEvent):
        return f"SCU Step {event.step}: {event.id} {event.outcome} (by {event.by})"
    if isinstance(event, KnobEvent):
        change = f"{event.knob} {event.before:.3g} -> {event.after:.3g}"
        return f"knob {event.step:>6}  {change} ({event.by})"
    if isinstance(event, RollbackEvent):
        return f"rollback {event.step} -> step {event.to_step}: {event.reason}"
    if isinstance(event, PauseEvent):
        return f"paused at step {event.step} (by {event.by})"
    if isinstance(event, ResumeEvent):
        return f"resumed at step {event.step} (by {event.by})"
    if isinstance(event, ModeEvent):
        return f"S-SCU mode -> {event.mode} (by {event.by})"
    if isinstance(event, MessageEvent):
        return f"{event.level}: {event.text}"
    if isinstance(event, RefusedEvent):
        return f"warning: {event.sentence}"
    if isinstance(event, StartEvent):
        verb = "resuming" if event.resumed else "training"
        return (
            f"{verb} {event.preset}: {event.model} on {event.data} -> {event.output_dir}\n"
            f"  {event.trainable_parameters:,} trainable of {event.total_parameters:,} parameters; "
            f"{event.train_examples} train / {event.valid_examples} valid examples; "
            f"{event.max_steps} steps; S-SCU {event.mode}"
        )
    if isinstance(event, DoneEvent):
        tail = f": {event.message}" if event.message else ""
        return "\n".join([f"done at step {event.step}: {event.status}{tail}", *farewell(event)])
    if isinstance(event, SamplesEvent):
        return "\n".join(
            f"sample {event.step:>6}  {s.get('prompt')} -> {_one_line(s.get('answer'))}"
            for s in event.samples
        )
    if isinstance(event, ComparisonEvent):
        return (
            f"compare {event.split} split ({event.rows} rows), base -> adapters: loss "
            f"{event.base_loss:.4f} -> {event.tuned_loss:.4f}; of "
            f"{len(event.examples)} sampled prompts {event.fixed} fixed, {event.broke} broke "
            "(comparison.json)"
        )
    return None


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
        self.report_every = report_every
        self.stream = stream or sys.stdout
        self.mode = ""
        self.output_dir = ""

    def emit(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self.mode, self.output_dir = str(event.mode), event.output_dir
        elif isinstance(event, ModeEvent):
            self.mode = str(event.mode)
        line = format_event(event, self.report_every)
        if line is not None:
            print(line, file=self.stream, flush=True)
        if isinstance(event, ProposalEvent) and self.mode == "ask" and event.rule != "rollback":
            print(
                f"  {event.id} waits for an answer (or expires): run 'scu-tui attach "
                f"{self.output_dir}' in another terminal and press a (accept) or v (veto)",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        pass
