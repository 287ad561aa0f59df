"""Between the training thread and the dashboard: a bounded buffer and a plain-numbers model.

The run calls :meth:`EventFeed.emit` on its own thread; the app calls
:meth:`EventFeed.drain` on a timer and folds what it gets into a :class:`RunState`.
Nothing here imports Textual or MLX, so it is testable on its own and reusable by an
attach client that reads ``events.jsonl`` instead.

Per-step metrics may be coalesced when the app falls behind (only the newest
``max_buffered_steps`` are kept); every other event (proposals, decisions, evals,
checkpoints, messages, done) is kept, in order.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from scu_tui.control.policy import HIGH_VARIABILITY
from scu_tui.control.signals import trend_change
from scu_tui.protocol import (
    AnalysisEvent,
    CheckpointEvent,
    CheckpointReason,
    ComparisonEvent,
    Decider,
    DecisionEvent,
    DoneEvent,
    EvalEvent,
    Event,
    EventHandlers,
    KnobEvent,
    MessageEvent,
    MessageLevel,
    ModeEvent,
    Outcome,
    PauseEvent,
    ProposalEvent,
    ResumeEvent,
    RollbackEvent,
    RunStatus,
    SamplesEvent,
    StartEvent,
    StepEvent,
    TrialEvent,
    handles,
)

#: Points shown by a sparkline: it rescans its whole data on every render.
SPARK_POINTS = 120
#: Points kept per curve for the plot screen; older ones are thinned, never the whole run lost.
HISTORY_POINTS = 4096
#: Decisions kept in the log.
DECISION_LINES = 200
#: Steps averaged for the tokens/s figure (one step's rate jitters too much to read).
THROUGHPUT_STEPS = 20
#: Steps whose wall-clock times give the ETA: long enough to include the evaluations and
#: checkpoints of a period, so the estimate does not swing with each batch's length.
ETA_STEPS = 200
#: Decision and rollback markers kept for the plots.
MARKERS = 1000
#: Evaluations whose sample answers are kept.
SAMPLE_EVALS = 20

#: What a proposal in the log is before the run decides it, and after a run ended without
#: deciding it (neither is an :class:`~scu_tui.protocol.Outcome`: the run never says them).
PENDING, UNANSWERED = "pending", "unanswered"


class EventFeed:
    """A :class:`~scu_tui.sinks.Sink` the app drains: thread-safe, bounded, never blocks.

    Why two buffers: a run can emit tens of steps a second while the app draws a few
    frames, and a stalled terminal must not grow memory without bound, but a proposal or
    a decision must never be lost. Events carry a sequence number so a drain returns them
    in the order they were emitted.
    """

    def __init__(self, max_buffered_steps: int = 2048) -> None:
        self._lock = threading.Lock()
        self._steps: deque[tuple[int, Event]] = deque(maxlen=max_buffered_steps)
        self._others: deque[tuple[int, Event]] = deque()
        self._seq = 0
        self.coalesced_steps = 0
        #: Set on the training thread when the run's DoneEvent passes, for code that has
        #: no event loop to wait with (the CLI after the app has gone).
        self.done = threading.Event()
        self.done_event: DoneEvent | None = None

    def emit(self, event: Event) -> None:
        with self._lock:
            self._seq += 1
            if isinstance(event, StepEvent):
                if len(self._steps) == self._steps.maxlen:
                    self.coalesced_steps += 1
                self._steps.append((self._seq, event))
            else:
                self._others.append((self._seq, event))
        if isinstance(event, DoneEvent):
            self.done_event = event
            self.done.set()

    def close(self) -> None:
        """The run closes its sinks after the DoneEvent; what is buffered stays to drain."""

    def drain(self) -> list[Event]:
        """Everything emitted since the last drain, oldest first."""
        with self._lock:
            steps, others = list(self._steps), list(self._others)
            self._steps.clear()
            self._others.clear()
        return [event for _, event in heapq.merge(steps, others, key=lambda item: item[0])]


class History:
    """A bounded ``(step, value)`` series that keeps the whole run by thinning it.

    When full, every other point is dropped and only every ``stride``-th new point is
    kept, so a 100k-step run still plots from start to end in ``capacity`` points.
    """

    def __init__(self, capacity: int = HISTORY_POINTS) -> None:
        self.capacity = max(2, capacity)
        self.stride = 1
        self._count = 0
        self.steps: list[int] = []
        self.values: list[float] = []

    def append(self, step: int, value: float) -> None:
        self._count += 1
        if (self._count - 1) % self.stride:
            return
        self.steps.append(step)
        self.values.append(value)
        if len(self.steps) >= self.capacity:
            self.steps = self.steps[::2]
            self.values = self.values[::2]
            self.stride *= 2

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        return iter(zip(self.steps, self.values, strict=True))

    def cut_after(self, step: int) -> None:
        """Drop the points after ``step``: a rollback abandoned them."""
        keep = 0
        while keep < len(self.steps) and self.steps[keep] <= step:
            keep += 1
        del self.steps[keep:], self.values[keep:]

    def keep_branch(self, trial: TrialEvent) -> None:
        """An LR trial trained the same batches twice: keep the winner's points only."""
        kept = trial.one_timeline(list(self))
        self.steps, self.values = [s for s, _ in kept], [v for _, v in kept]


@dataclass
class DecisionRecord:
    """One line of the S-SCU log: a proposal, what the S-SCU saw, what became of it."""

    id: str
    step: int
    reason: str
    action: str
    knob: str
    outcome: str = PENDING  # an Outcome once decided
    by: str = ""  # a Decider once decided
    decided_step: int | None = None
    rule: str = ""
    diagnosis: str = ""
    before: float = math.nan
    after: float = math.nan
    evidence: dict[str, Any] = field(default_factory=dict)
    lr: float = math.nan  # the effective learning rate when it was proposed
    analysis: AnalysisEvent | None = None  # what the S-SCU saw when it proposed this
    effect: dict[str, Any] | None = None  # the effect check's verdict, once known


@dataclass
class HoldRecord:
    """One line of the S-SCU log for a control step that changed nothing, and why (so a
    person watching sees the S-SCU at work while it holds)."""

    id: str
    step: int
    diagnosis: str
    why: str


#: A line of the S-SCU log: a proposal and its outcome, or a period that changed nothing.
LogRecord = DecisionRecord | HoldRecord


@dataclass
class RunState(EventHandlers):
    """The run as plain numbers, folded from events; the widgets draw from this only."""

    window: int = 256
    preset: str = ""
    model: str = ""
    data: str = ""
    output_dir: str = ""
    trainable_parameters: int = 0
    world_size: int = 1  # ranks training together (MLX distributed)
    step: int = 0
    max_steps: int = 0
    loss: float = math.nan
    val_loss: float = math.nan
    best_val_loss: float = math.nan
    best_train_loss: float = math.nan
    grad_norm: float = math.nan
    lr: float = math.nan
    knobs: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0
    tokens_per_second: float = math.nan
    peak_memory_gb: float = math.nan
    rss_gb: float = math.nan  # the system's figure for the run (footprint on macOS)
    rss_label: str = "rss"  # "footprint" on macOS
    swap_gb: float = math.nan  # the run's pages in swap (Linux)
    system_swap_gb: float = math.nan
    system_swap_start_gb: float = math.nan  # the machine's swap at the first step seen
    eta_seconds: float = math.nan  # the run's own estimate (its recent step times only)
    mode: str = ""
    paused: bool = False
    status: str = "starting"  # starting | running | paused | <DoneEvent status> | lost
    message: str = ""  # the failure, for the status panel
    last_checkpoint: str = ""
    skipped_steps: int = 0
    rollbacks: int = 0
    done: DoneEvent | None = None
    version: int = 0  # bumped by every fold: widgets redraw only when it moved
    decisions_version: int = 0  # bumped when the S-SCU log or the pending set changes
    losses: deque[tuple[int, float]] = field(init=False)  # (step, value), as the others
    grad_norms: deque[tuple[int, float]] = field(init=False)
    val_losses: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=SPARK_POINTS))
    analysis: AnalysisEvent | None = None  # the S-SCU's newest analysis
    #: the adapters' answers to the sample prompts, one event per evaluation (newest last)
    samples: deque[SamplesEvent] = field(default_factory=lambda: deque(maxlen=SAMPLE_EVALS))
    comparison: ComparisonEvent | None = None  # base vs adapters, at the end of the run
    loss_history: History = field(default_factory=History)
    val_history: History = field(default_factory=History)
    lr_history: History = field(default_factory=History)
    grad_history: History = field(default_factory=History)
    weight_decay_history: History = field(default_factory=History)
    dropout_history: History = field(default_factory=History)
    accumulation_history: History = field(default_factory=History)
    #: (step, kind) for the plots: "decision" where a knob changed, "rollback" where
    #: training went back to
    markers: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=MARKERS))
    _step_times: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=ETA_STEPS))
    pending: dict[str, ProposalEvent] = field(default_factory=dict)
    decisions: deque[DecisionRecord] = field(default_factory=lambda: deque(maxlen=DECISION_LINES))
    #: the S-SCU log in order: the decisions, and each analysis that proposed nothing
    log: deque[LogRecord] = field(default_factory=lambda: deque(maxlen=DECISION_LINES))
    holds: int = 0  # analyses that proposed nothing (numbers their log lines)
    _throughput: deque[tuple[int, float]] = field(
        default_factory=lambda: deque(maxlen=THROUGHPUT_STEPS)
    )

    def __post_init__(self) -> None:
        self.losses = deque(maxlen=max(self.window, SPARK_POINTS))
        self.grad_norms = deque(maxlen=max(self.window, SPARK_POINTS))

    # --- reading ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.done is None and self.status != "starting"

    @property
    def lost(self) -> bool:
        """The run vanished without a done event (seen from an attached follower)."""
        return self.done is not None and self.done.status == RunStatus.LOST

    @property
    def exit_code(self) -> int | None:
        """The exit code the run ended with (None while it runs)."""
        if self.done is None:
            return None
        return int(self.done.status.exit_code)

    @property
    def eta(self) -> float:
        """Seconds to ``max_steps`` at the wall-clock pace of the newest steps (evaluations
        and checkpoints included, pauses not); nan until a few steps have been timed."""
        if len(self._step_times) < 5 or self.done is not None:
            return math.nan
        (s0, t0), (s1, t1) = self._step_times[0], self._step_times[-1]
        if s1 <= s0 or t1 <= t0:
            return math.nan
        return max(self.max_steps - self.step, 0) * (t1 - t0) / (s1 - s0)

    @property
    def oldest_pending(self) -> ProposalEvent | None:
        return next(iter(self.pending.values()), None)

    def recent(self, series: deque[tuple[int, float]], points: int = SPARK_POINTS) -> list[float]:
        """The newest finite values of a series, as a fresh list (a sparkline keeps it)."""
        return [v for _, v in list(series)[-points:] if math.isfinite(v)]

    @staticmethod
    def span(series: deque[tuple[int, float]], points: int = SPARK_POINTS) -> tuple[int, int]:
        """The first and last step a sparkline of ``series`` shows ((0, 0) when empty)."""
        tail = list(series)[-points:]
        return (tail[0][0], tail[-1][0]) if tail else (0, 0)

    def record(self, proposal_id: str) -> DecisionRecord | None:
        for record in reversed(self.decisions):
            if record.id == proposal_id:
                return record
        return None

    # --- folding ------------------------------------------------------------------------

    def fold(self, event: Event) -> None:
        """Take one event into the state."""
        self.version += 1
        self.handle(event)

    def load_history(self, events: Iterable[Event], resumed: bool = True) -> None:
        """Fold a run's past into the state: the plots then show its whole surviving
        history. A resumed run's past ended (its end is no end of this run, and its
        unanswered proposals lapsed with the process that made them); an attached run's
        past (``resumed=False``) goes on."""
        for event in events:
            if not isinstance(event, DoneEvent):
                self.fold(event)
        if not resumed:
            return
        for pid in list(self.pending):
            record = self.record(pid)
            if record is not None and record.outcome == PENDING:
                record.outcome, record.by = Outcome.EXPIRED, Decider.RESUME
        self.pending.clear()
        self.paused = False
        self._step_times.clear()

    @handles
    def _on_start(self, e: StartEvent) -> None:
        if e.resumed:  # the steps a killed process trained past its checkpoint are gone
            self._cut_after(e.step)
        self.preset, self.model, self.data = e.preset, e.model, e.data
        self.world_size = e.world_size
        self.output_dir = e.output_dir
        self.trainable_parameters = e.trainable_parameters
        self.step, self.max_steps = e.step, e.max_steps
        self.knobs.update(e.knobs)
        self.lr = float(e.knobs.get("lr", math.nan))
        self.mode = e.mode
        self.status = RunStatus.RUNNING

    @handles
    def _on_step(self, e: StepEvent) -> None:
        if self.losses and e.step <= self.losses[-1][0]:  # a rewind the file did not name
            self._cut_after(e.step - 1)
        self.step, self.max_steps = e.step, e.max_steps
        self.loss, self.grad_norm, self.lr = e.loss, e.grad_norm, e.lr
        self.losses.append((e.step, e.loss))
        self.grad_norms.append((e.step, e.grad_norm))
        if math.isfinite(e.loss):
            self.loss_history.append(e.step, e.loss)
            if not e.loss >= self.best_train_loss:  # also true while best is nan
                self.best_train_loss = e.loss
        if math.isfinite(e.grad_norm):
            self.grad_history.append(e.step, e.grad_norm)
        self.lr_history.append(e.step, e.lr)
        self.weight_decay_history.append(e.step, e.weight_decay)
        self.dropout_history.append(e.step, e.dropout)
        self.accumulation_history.append(e.step, float(e.accumulation))
        self._step_times.append((e.step, e.time))
        self.knobs.update(
            lr=e.lr, weight_decay=e.weight_decay, dropout=e.dropout, accumulation=e.accumulation
        )
        self.batch_size = e.batch_size
        self.peak_memory_gb, self.eta_seconds = e.peak_memory_gb, e.eta_seconds
        self.rss_gb, self.swap_gb, self.system_swap_gb = e.rss_gb, e.swap_gb, e.system_swap_gb
        self.rss_label = "footprint" if e.rss_source == "phys_footprint" else "rss"
        if math.isnan(self.system_swap_start_gb):
            self.system_swap_start_gb = e.system_swap_gb
        self._throughput.append((e.tokens, e.step_seconds))
        seconds = sum(s for _, s in self._throughput)
        if seconds > 0:
            self.tokens_per_second = sum(t for t, _ in self._throughput) / seconds
        self.skipped_steps += int(e.skipped)

    @handles
    def _on_eval(self, e: EvalEvent) -> None:
        self.val_loss, self.best_val_loss = e.val_loss, e.best_val_loss
        self.val_losses.append((e.step, e.val_loss))
        if math.isfinite(e.val_loss):
            self.val_history.append(e.step, e.val_loss)

    @handles
    def _on_checkpoint(self, e: CheckpointEvent) -> None:
        if e.reason != CheckpointReason.BEST:
            self.last_checkpoint = e.path

    @handles
    def _on_knob(self, e: KnobEvent) -> None:
        self.knobs[e.knob] = e.after
        self.markers.append((e.step, "decision"))

    @handles
    def _on_pause(self, e: PauseEvent) -> None:
        self.paused, self.status = True, "paused"

    @handles
    def _on_resume(self, e: ResumeEvent) -> None:
        self.paused, self.status = False, RunStatus.RUNNING
        self._step_times.clear()  # the pause is no part of the pace

    @handles
    def _on_mode(self, e: ModeEvent) -> None:
        self.mode = e.mode

    @handles
    def _on_analysis(self, e: AnalysisEvent) -> None:
        self.analysis = e
        if not e.proposal:
            self.holds += 1
            self.log.append(HoldRecord(f"hold{self.holds}", e.step, e.diagnosis, e.why))
        if e.effects or not e.proposal:
            self.decisions_version += 1
        for effect in e.effects:
            record = self.record(str(effect.get("id", "")))
            if record is not None:
                record.effect = effect

    @handles
    def _on_trial(self, e: TrialEvent) -> None:
        """An LR trial that kept the LR is a hold, with its figures (one the lower LR won
        is the line of its proposal). The last step event was the tried branch's: the LR
        the run goes on from is the trial's own (a half that won comes as its move)."""
        self.lr = self.knobs["lr"] = e.lr
        self._keep_branch(e)
        if e.tried_wins:
            return
        self.holds += 1
        why = (
            f"LR trial: LR {e.tried_lr:.3g} not clearly better than {e.lr:.3g} on the same "
            f"batches (mean loss {e.tried_loss:.4g} against {e.current_loss:.4g})"
        )
        self.log.append(HoldRecord(f"hold{self.holds}", e.step, "", why))
        self.decisions_version += 1

    @handles
    def _on_proposal(self, e: ProposalEvent) -> None:
        self.decisions_version += 1
        self.pending[e.id] = e
        seen = self.analysis if self.analysis and self.analysis.step == e.analysis else None
        self._log(
            DecisionRecord(
                e.id,
                e.step,
                e.reason,
                e.action,
                e.knob,
                rule=e.rule,
                diagnosis=e.diagnosis,
                before=e.before,
                after=e.after,
                evidence=dict(e.evidence),
                lr=self.lr,
                analysis=seen,
            )
        )

    @handles
    def _on_decision(self, e: DecisionEvent) -> None:
        self.decisions_version += 1
        self.pending.pop(e.id, None)
        record = self.record(e.id)
        if record is None:  # proposed before we were watching
            record = DecisionRecord(e.id, e.step, "", "", "")
            self._log(record)
        record.outcome, record.by, record.decided_step = e.outcome, e.by, e.step

    def _log(self, record: DecisionRecord) -> None:
        self.decisions.append(record)
        self.log.append(record)

    @handles
    def _on_rollback(self, e: RollbackEvent) -> None:
        """One timeline: what the abandoned branch trained is gone from every view (its
        proposals stay in the log, where the run marks them cancelled)."""
        self.rollbacks += 1
        self._cut_after(e.to_step)
        self.markers.append((e.to_step, "rollback"))

    def _step_histories(self) -> tuple[History, ...]:
        """The plots' series with a point per training step."""
        return (
            self.loss_history,
            self.lr_history,
            self.grad_history,
            self.weight_decay_history,
            self.dropout_history,
            self.accumulation_history,
        )

    def _keep_branch(self, trial: TrialEvent) -> None:
        """One timeline after an LR trial, as after a rollback: the losing branch's points
        go from every view, the winner's stand at the steps the run numbers them (the
        trial's last ones; the steps before them were spent on the other branch)."""
        for series in (self.losses, self.grad_norms):
            kept = trial.one_timeline(list(series))
            series.clear()
            series.extend(kept)
        for history in self._step_histories():
            history.keep_branch(trial)
        self.best_train_loss = min(self.loss_history.values, default=math.nan)
        self.loss = self.losses[-1][1] if self.losses else math.nan

    def _cut_after(self, to_step: int) -> None:
        """Drop every point after ``to_step``: a rollback, or a resume from a checkpoint
        older than the last step a killed process wrote."""
        self.step = to_step
        for series in (self.losses, self.grad_norms, self.val_losses):
            kept = [(s, v) for s, v in series if s <= to_step]
            series.clear()
            series.extend(kept)
        for history in (*self._step_histories(), self.val_history):
            history.cut_after(to_step)
        marks = [m for m in self.markers if m[0] <= to_step]
        self.markers.clear()
        self.markers.extend(marks)
        self._step_times.clear()
        self.best_train_loss = min(self.loss_history.values, default=math.nan)
        self.best_val_loss = min(self.val_history.values, default=math.nan)
        self.loss = self.losses[-1][1] if self.losses else math.nan
        self.val_loss = self.val_losses[-1][1] if self.val_losses else math.nan
        if self.analysis is not None and self.analysis.step > to_step:
            self.analysis = None
        kept_samples = [e for e in self.samples if e.step <= to_step]
        self.samples.clear()
        self.samples.extend(kept_samples)

    @handles
    def _on_samples(self, e: SamplesEvent) -> None:
        self.samples.append(e)

    @handles
    def _on_comparison(self, e: ComparisonEvent) -> None:
        self.comparison = e

    @handles
    def _on_message(self, e: MessageEvent) -> None:
        # once the run has ended, its message says why (a failure, a lost process); a later
        # error (a key pressed at a dead run) is a notification, not the run's story
        if e.level == MessageLevel.ERROR and self.done is None:
            self.message = e.text

    @handles
    def _on_done(self, e: DoneEvent) -> None:
        self.done = e
        self.status = e.status
        self.paused = False
        if e.message:
            self.message = e.message
        self.decisions_version += 1
        self.pending.clear()  # nobody can answer them any more
        for record in self.decisions:
            if record.outcome == PENDING:
                record.outcome = UNANSWERED


def gradient_status(analysis: AnalysisEvent | None) -> str:
    """One word for the gradients, from the S-SCU's analysis: stable, noisy, spiky or
    non-finite (the policy's own threshold for noisy)."""
    if analysis is None:
        return "waiting"
    g = analysis.gradients
    if analysis.nonfinite or g.get("nonfinite"):
        return "non-finite"
    if g.get("recent_spikes"):
        return "spiky"
    variability = g.get("variability")
    if isinstance(variability, int | float) and variability > HIGH_VARIABILITY:
        return "noisy"
    return "stable"


def trend_word(trend: dict[str, Any]) -> str:
    """falling / rising (significant), flat (a plateau), else drifting down or up."""
    if trend.get("improving"):
        return "falling"
    if trend.get("degrading"):
        return "rising"
    if trend.get("plateau"):
        return "flat"
    slope = trend.get("slope")
    return "drifting up" if isinstance(slope, int | float) and slope > 0 else "drifting down"


def trend_words(analysis: AnalysisEvent | None) -> str:
    """``falling -3.1%/50 steps`` — the S-SCU's trend in words and the change per period."""
    if analysis is None:
        return "trend: waiting for the S-SCU"
    change = trend_change(analysis.trend, analysis.period)
    rate = "--" if change is None else f"{100 * change:+.1f}%"
    if change is not None and abs(change) >= 0.1:  # 10 % and more: whole percents
        rate = f"{100 * change:+.0f}%"
    return f"{trend_word(analysis.trend)} {rate}/{analysis.period} steps"
