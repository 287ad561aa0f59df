"""The protocol every layer shares: the names (knobs, commands, modes, outcomes, deciders,
statuses, exit codes, run-folder files), the events that flow out of a run, the commands
that flow in, and the one tolerant reader of ``events.jsonl``.

The names are ``StrEnum`` (or ``IntEnum``) members, so each compares equal to the plain
string (or number) that goes into ``events.jsonl``, the control socket and the summaries,
while mypy follows it by type from a key press to the optimizer. Adding a knob means
adding it to :class:`Knob`, to the policy that may move it and to the trainer that
applies it.

Events and commands are small, frozen, plain-data dataclasses: no MLX, no Textual. Every
event serialises to one JSON object with at least ``type``, ``step`` and ``time``. An
event field that carries one of the names above is typed with its enum, and
:func:`event_from_dict` reads it back as the member, so every consumer compares members,
never string literals (``tests/test_protocol_names.py`` keeps literals out). A line with a
name this reader does not know is skipped like any other line that is not an event.

Consumers that treat each event type their own way subclass :class:`EventHandlers`: one
dispatch on the event's type, shared by the console, the dashboard's state and its
notices.
"""

from __future__ import annotations

import json
import math
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from scu_tui.errors import UserError


class Knob(StrEnum):
    """What the S-SCU (or a person) may change in a running fine-tune."""

    LR_MULTIPLIER = "lr_multiplier"  # a factor on the base learning-rate schedule
    WEIGHT_DECAY = "weight_decay"
    DROPOUT = "dropout"  # LoRA dropout
    ACCUMULATION = "accumulation"  # micro-batches per optimizer step


class Rollback(StrEnum):
    """The one thing a proposal may move that is not a knob: the run itself, back to its
    last good checkpoint (resuming with the lower LR multiplier the proposal names)."""

    ROLLBACK = "rollback"


#: What a proposal moves: a knob, or the run back to a checkpoint.
Target = Knob | Rollback


def target(name: str) -> Target:
    """The knob (or rollback) a name stands for; ValueError for a name that is neither."""
    if name == Rollback.ROLLBACK:
        return Rollback.ROLLBACK
    try:
        return Knob(name)
    except ValueError:
        known = ", ".join([*Knob, Rollback.ROLLBACK])
        raise ValueError(f"unknown knob '{name}' (known: {known})") from None


class Mode(StrEnum):
    """What the S-SCU does with a proposal."""

    AUTO = "auto"  # applies it
    ASK = "ask"  # waits for a person's answer (or the proposal expires)
    OBSERVE = "observe"  # only logs it


class CommandKind(StrEnum):
    """What a :class:`Command` asks of a run."""

    PAUSE = "pause"
    RESUME = "resume"
    SAVE = "save"
    EVAL = "eval"
    STOP = "stop"
    MODE = "mode"
    ACCEPT = "accept"
    VETO = "veto"
    SET = "set"


class Outcome(StrEnum):
    """What became of a proposal."""

    APPLIED = "applied"  # by the S-SCU in auto mode, or by the divergence guard
    ACCEPTED = "accepted"  # by a person, then applied
    VETOED = "vetoed"
    EXPIRED = "expired"  # unanswered for scu.proposal_ttl steps, or pending at a resume
    OBSERVED = "observed"  # logged only (observe mode)
    REVERTED = "reverted"  # undone by a later revert proposal after its effect check
    CANCELLED = "cancelled"  # its branch of training was rolled back


#: Outcomes that moved a knob.
TAKEN = (Outcome.APPLIED, Outcome.ACCEPTED)


class Decider(StrEnum):
    """Who decided a proposal's outcome (or changed a knob)."""

    CONTROLLER = "controller"
    USER = "user"  # a key in the app
    REMOTE = "remote"  # over the control socket (an attached app)
    TTL = "ttl"
    GUARD = "guard"  # the divergence guard
    RESUME = "resume"
    ROLLBACK = "rollback"
    SIGNAL = "signal"  # SIGINT, SIGTERM or SIGHUP: stop with a checkpoint


class RunStatus(StrEnum):
    """How a run stands or ended (the ``done`` event and the summary say it)."""

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"  # by a person; a checkpoint was saved
    INTERRUPTED = "interrupted"  # by a signal; a checkpoint was saved
    FAILED = "failed"
    #: stopped writing without saying so (``kill -9``, a crash): what an attached view and
    #: the runs list make of a run that vanished; the run itself never writes it
    LOST = "lost"

    @property
    def exit_code(self) -> ExitCode:
        """The exit status of a process whose run ended this way."""
        return _EXIT_CODES.get(self, ExitCode.FAILED)


class ExitCode(IntEnum):
    """The process's exit status, as ``scu-tui --help`` documents it."""

    OK = 0  # done, or stopped by a person
    FAILED = 1  # training failed
    BAD_INPUT = 2  # a bad flag, preset, model, data or folder
    INTERRUPTED = 130  # a signal; a checkpoint was saved first


_EXIT_CODES = {
    RunStatus.COMPLETED: ExitCode.OK,
    RunStatus.STOPPED: ExitCode.OK,
    RunStatus.INTERRUPTED: ExitCode.INTERRUPTED,
}


class MessageLevel(StrEnum):
    """How much a :class:`MessageEvent` matters to the person watching."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class CheckpointReason(StrEnum):
    """Why a checkpoint was saved."""

    START = "start"  # before the first step: the first rollback target
    ROLLBACK = "rollback"  # the state a rollback went back to (the branch the run is on)
    TRIAL = "trial"  # the state an LR trial went on from (the branch that won it)
    SCHEDULE = "schedule"  # every training.save_every steps
    MEMORY = "memory"  # before stopping a run that is about to run out of memory
    USER = "user"  # a key, or a stop by a person
    SIGNAL = "signal"  # SIGINT, SIGTERM or SIGHUP
    FINAL = "final"  # the end of the run
    BEST = "best"  # the best validation loss so far (into best/)


class RunFile(StrEnum):
    """The files and folders of a run's ``--output-dir``."""

    EVENTS = "events.jsonl"
    CONFIG = "simple_training_config.json"
    SUMMARY = "scu_training_summary.json"
    METRICS = "scu_training_metrics.json"
    CONTROL = "control.json"
    LOCK = ".lock"
    ADAPTERS = "adapters.safetensors"
    ADAPTER_CONFIG = "adapter_config.json"
    CHECKPOINTS = "checkpoints"
    BEST = "best"


#: What a view says when a run it follows is gone (killed, crashed) and a key asks it for
#: something.
NOT_RUNNING = "the run is not running (lost)"


# --- events ----------------------------------------------------------------------------


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


#: Whatever a timeline holds per step (a value, a CSV row, a step event).
_Item = TypeVar("_Item")


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
    knobs: dict[str, float]  # "lr" (the effective rate) and every Knob
    mode: Mode
    world_size: int = 1  # ranks training together (mlx.launch); 1 for a single process


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
    #: cos(gradient, Adam's first moment before the step): > 0 the new gradient still
    #: points along the last updates (see ``training.trainer.gradient_stats``).
    alignment: float = math.nan
    #: MLX's memory now: in use, and freed but kept for reuse (``peak_memory_gb`` is its
    #: high-water mark)
    active_memory_gb: float = math.nan
    cache_memory_gb: float = math.nan
    #: the operating system's side (``memory_readings``): the process's resident memory
    #: (``rss_source`` says which figure: ``VmRSS`` on Linux, ``phys_footprint`` on macOS,
    #: which counts Metal's buffers), its high-water mark, the process's pages in swap
    #: (Linux), the machine's swap in use and its available memory; NaN where unknown
    rss_gb: float = math.nan
    rss_peak_gb: float = math.nan
    rss_source: str = ""
    swap_gb: float = math.nan
    system_swap_gb: float = math.nan
    available_gb: float = math.nan


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
    reason: CheckpointReason


@dataclass(frozen=True)
class KnobEvent(Event):
    """A knob changed in the running optimizer or model."""

    type: ClassVar[str] = "knob"
    knob: Knob
    before: float
    after: float
    by: Decider


@dataclass(frozen=True)
class PauseEvent(Event):
    type: ClassVar[str] = "pause"
    by: Decider = Decider.USER


@dataclass(frozen=True)
class ResumeEvent(Event):
    type: ClassVar[str] = "resume"
    by: Decider = Decider.USER


@dataclass(frozen=True)
class ModeEvent(Event):
    type: ClassVar[str] = "mode"
    mode: Mode
    by: Decider = Decider.USER


@dataclass(frozen=True)
class ProposalEvent(Event):
    type: ClassVar[str] = "proposal"
    id: str
    rule: str
    reason: str
    action: str
    knob: Target
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
    outcome: Outcome
    by: Decider


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
class TrialStartEvent(Event):
    """An LR trial begins after ``step``: ``steps`` steps at ``lr``, then the same batches
    again from this step's state at ``tried_lr``. Its verdict is a :class:`TrialEvent`; a
    run stopped before it abandoned the trial, back to this step's state."""

    type: ClassVar[str] = "trial_start"
    lr: float
    tried_lr: float
    steps: int


@dataclass(frozen=True)
class TrialEvent(Event):
    """The LR trial is over at ``step``: from the state of step ``first``, the steps after
    it trained at ``lr``, then the same batches again from that state at ``tried_lr``
    (both branches' step events are in the log, in that order). The run goes on from the
    winner's last state (``tried_wins``: the lower LR's), and the controller saw that
    branch's steps as the trial's last ones. The figures are the verdict's
    (:class:`~scu_tui.control.trial.TrialVerdict`)."""

    type: ClassVar[str] = "trial"
    first: int
    lr: float
    tried_lr: float
    tried_wins: bool
    current_loss: float
    tried_loss: float
    ratio: float
    t: float

    def kept_step(self, step: int) -> int | None:
        """Where a step event logged before this verdict stands on the run's one timeline:
        a step outside the trial where it is, the winner's at the trial's last step
        numbers (as the run and its controller number them), the loser's nowhere (None)."""
        if not self.first < step <= self.step:
            return step
        mid = self.first + (self.step - self.first) // 2
        if (step > mid) != self.tried_wins:
            return None
        return step if self.tried_wins else step + (self.step - mid)

    def one_timeline(self, points: Iterable[tuple[int, _Item]]) -> list[tuple[int, _Item]]:
        """``(step, item)`` pairs logged before this verdict, as the run's one timeline:
        each at its :meth:`kept_step`, the losing branch's left out, in step order."""
        kept = ((self.kept_step(step), item) for step, item in points)
        return sorted(((n, item) for n, item in kept if n is not None), key=lambda pair: pair[0])


@dataclass(frozen=True)
class MessageEvent(Event):
    """A line for the person watching: a warning or a note."""

    type: ClassVar[str] = "message"
    level: MessageLevel
    text: str


@dataclass(frozen=True)
class RefusedEvent(Event):
    """A command that did not take effect, typed so that no consumer parses a sentence: the
    command's kind, the proposal it answered (``id``, empty when it answered none), and why.
    ``sent`` is false when the command never reached the run (an attached app whose run is
    gone, a socket error); ``sentence`` is what the console and the socket print."""

    type: ClassVar[str] = "refused"
    command: CommandKind
    reason: str
    id: str = ""
    sent: bool = True

    @property
    def sentence(self) -> str:
        if self.id:
            return f"proposal {self.id} is no longer pending ({self.reason}); nothing done"
        verb = "command refused" if self.sent else "command not sent"
        return f"{verb}: {self.reason}"


@dataclass(frozen=True)
class DoneEvent(Event):
    type: ClassVar[str] = "done"
    status: RunStatus  # never RUNNING; LOST only from a view of a vanished run
    message: str = ""
    #: where the run went and how to use it (empty when the run never trained)
    output_dir: str = ""
    best_val_loss: float = math.nan
    adapters: str = ""  # the folder with the adapters to use (best/, else the run's own)
    command: str = ""  # an mlx_lm.generate command line that runs as printed


@dataclass(frozen=True)
class SamplesEvent(Event):
    """Answers to a few fixed validation prompts at an evaluation, so a person sees the
    answers improve, not only a loss. ``samples``: ``{"prompt", "reference", "answer"}``."""

    type: ClassVar[str] = "samples"
    samples: list[dict[str, Any]]


@dataclass(frozen=True)
class ComparisonEvent(Event):
    """Did the fine-tune help: the base model and the adapters on the test split (see
    scu_tui.compare); ``examples`` as in ``comparison.json``."""

    type: ClassVar[str] = "comparison"
    split: str
    rows: int
    adapters: str
    base_loss: float
    tuned_loss: float
    fixed: int
    broke: int
    examples: list[dict[str, Any]]


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
        TrialStartEvent,
        TrialEvent,
        MessageEvent,
        RefusedEvent,
        DoneEvent,
        SamplesEvent,
        ComparisonEvent,
    )
}


# --- one dispatch on event type -------------------------------------------------------

_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def handles(method: _Handler) -> _Handler:
    """Marks a method of an :class:`EventHandlers` class as the handler of the event type
    its parameter is annotated with (a union of event types: of each of them)."""
    method.__handles_events__ = True  # type: ignore[attr-defined]
    return method


class EventHandlers:
    """A consumer that treats each event type in its own method.

    Subclasses mark methods with :func:`handles`; :meth:`handle` calls the one for an
    event's type and returns what it returns (None for a type without one). The table is
    built once per class from the methods' annotations, so a handler names its event type
    once, where mypy checks it, and a subclass may override or add handlers.
    """

    _handlers: ClassVar[dict[type[Event], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type[Event], str] = {}
        for klass in reversed(cls.__mro__):
            for name, method in vars(klass).items():
                if not getattr(method, "__handles_events__", False):
                    continue
                hints = get_type_hints(method)
                hints.pop("return", None)
                (hint,) = hints.values()
                kinds = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
                for kind in kinds:
                    if not (isinstance(kind, type) and issubclass(kind, Event)):
                        raise TypeError(f"{cls.__name__}.{name}: handles {kind!r}, not an event")
                    table[kind] = name
        cls._handlers = table

    def handle(self, event: Event) -> Any:
        """What this consumer's handler for ``event``'s type makes of it (None: no handler)."""
        name = self._handlers.get(type(event))
        return None if name is None else getattr(self, name)(event)


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
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        try:
            return hint(value) if isinstance(value, str) else _BAD
        except ValueError:  # a member this reader does not know
            return _BAD
    if get_origin(hint) in (Union, types.UnionType):  # Target: a Knob or Rollback
        for option in get_args(hint):
            typed = _typed(option, value)
            if typed is not _BAD:
                return typed
        return _BAD
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


@dataclass(frozen=True)
class KnobSetting:
    """The value of a ``set`` command: a knob and what to set it to."""

    knob: Knob
    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "knob", Knob(self.knob))  # ValueError for an unknown name


#: What a command carries: a mode (``mode``), a proposal id (``accept``/``veto``; empty =
#: the oldest pending one), a reason (``stop``), a knob setting (``set``), or nothing.
CommandValue = str | KnobSetting | None


@dataclass(frozen=True)
class Command:
    """A request to a run, carried out between two steps."""

    kind: CommandKind
    value: CommandValue = None
    by: Decider = Decider.USER

    def __post_init__(self) -> None:
        try:
            kind = CommandKind(self.kind)
        except ValueError:
            known = ", ".join(CommandKind)
            raise ValueError(f"unknown command '{self.kind}' (known: {known})") from None
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "by", Decider(self.by))
        if kind == CommandKind.SET and not isinstance(self.value, KnobSetting):
            raise ValueError("a 'set' command carries a KnobSetting")
        if kind != CommandKind.SET and isinstance(self.value, KnobSetting):
            raise ValueError(f"a '{kind}' command carries no knob setting")

    @classmethod
    def set_knob(cls, knob: Knob, value: float, by: Decider = Decider.USER) -> Command:
        """Set ``knob`` to ``value`` before the next step."""
        return cls(CommandKind.SET, KnobSetting(knob, value), by)
