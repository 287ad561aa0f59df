"""The names every layer shares: knobs, commands, modes, outcomes, statuses, exit codes and
the files of a run folder.

Each is a ``StrEnum`` (or ``IntEnum``), so it compares equal to the plain string (or
number) that goes into ``events.jsonl``, the control socket and the summaries, while
mypy follows it by type from a key press to the optimizer. Adding a knob means adding
it here, to the policy that may move it and to the trainer that applies it.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Knob(StrEnum):
    """What the S-SCU (or a person) may change in a running fine-tune."""

    LR_MULTIPLIER = "lr_multiplier"  # a factor on the base learning-rate schedule
    WEIGHT_DECAY = "weight_decay"
    DROPOUT = "dropout"  # LoRA dropout
    ACCUMULATION = "accumulation"  # micro-batches per optimizer step


class Mode(StrEnum):
    """What the S-SCU does with a proposal."""

    AUTO = "auto"  # applies it
    ASK = "ask"  # waits for a person's answer (or the proposal expires)
    OBSERVE = "observe"  # only logs it


class CommandKind(StrEnum):
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


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"  # by a person; a checkpoint was saved
    INTERRUPTED = "interrupted"  # by a signal; a checkpoint was saved
    FAILED = "failed"


class ExitCode(IntEnum):
    OK = 0  # done, or stopped by a person
    FAILED = 1  # training failed
    BAD_INPUT = 2  # a bad flag, preset, model, data or folder
    INTERRUPTED = 130  # a signal; a checkpoint was saved first


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
