"""The run's seams: a loader passed in builds what it trains (no mlx-lm loading), a
``listen`` hook starts the control channel once the folder is claimed, and a knob set
by a command reaches the optimizer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from scu_tui.config import Settings
from scu_tui.presets import load_preset
from scu_tui.protocol import (
    Command,
    Decider,
    Event,
    ExitCode,
    Knob,
    KnobEvent,
    MessageEvent,
    RunFile,
    StepEvent,
)
from scu_tui.run import Closeable, Run
from scu_tui.runlock import is_locked
from scu_tui.training.data import DataBundle, Split
from scu_tui.training.loader import Loaded, LoraInfo

VOCAB = 16
TOKENS = 17  # 16 predicted tokens per sequence
#: A model path that no loader of the product could load: only the stand-in can train.
NO_MODEL = "no such model"


class NextToken(nn.Module):  # type: ignore[misc]
    """A stand-in model: next-token logits from the current token alone."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.out = nn.Linear(8, VOCAB)

    def __call__(self, inputs: Any) -> Any:
        return self.out(self.embed(inputs))


def counting(rows: int, start: int) -> Split:
    """Sequences that count up modulo VOCAB: the next token is learnable from this one."""
    seqs = [([(start + r + i) % VOCAB for i in range(TOKENS)], 0) for r in range(rows)]
    return Split("train" if start == 0 else "valid", "counting", seqs)


class CountingLoader:
    """A loader standing in for mlx-lm's: a tiny model on counting sequences."""

    def __init__(self) -> None:
        self.calls = 0

    def load(self, settings: Settings) -> Loaded:
        self.calls += 1
        mx.random.seed(settings.training.seed)
        model = NextToken()
        n = sum(v.size for _, v in tree_flatten(model.parameters()))
        data = DataBundle(counting(64, 0), counting(8, 5), None, "text")
        lora = LoraInfo(n, n, {"fine_tune_type": "full", "model": "counting"})
        return Loaded(model, None, data, lora, {"model": "counting", "data": "counting"})


def settings(**updates: Any) -> Settings:
    return load_preset("demo").replace(
        {
            "name": "counting",
            "model.path": NO_MODEL,
            "data.path": "counting",
            "data.max_seq_length": TOKENS,
            "lora.dropout": 0.0,
            "training.batch_size": 8,
            "training.gradient_accumulation_steps": 1,
            "training.learning_rate": 0.05,
            "training.weight_decay": 0.0,
            "training.warmup_steps": 0,
            "training.schedule": "constant",
            "training.max_steps": 8,
            "training.eval_every": 4,
            "training.eval_batches": -1,
            "training.save_every": 4,
            "scu.enabled": False,
            **updates,
        }
    )


class Recorder:
    """A sink that keeps every event and may react to one (on the training thread)."""

    def __init__(self, react: Callable[[Event], None] | None = None) -> None:
        self.events: list[Event] = []
        self.react = react

    def emit(self, event: Event) -> None:
        self.events.append(event)
        if self.react is not None:
            self.react(event)

    def close(self) -> None:
        pass

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def test_a_run_trains_what_its_loader_built(tmp_path: Path) -> None:
    out = tmp_path / "run"
    loader = CountingLoader()
    run = Run(settings(), output_dir=out, loader=loader)
    rec = Recorder()
    run.add_sink(rec)
    assert run.execute() == ExitCode.OK
    assert loader.calls == 1
    start = rec.events[0].to_dict()
    assert start["type"] == "start" and start["model"] == NO_MODEL
    assert start["trainable_parameters"] == VOCAB * 8 + 8 * VOCAB + VOCAB
    assert [e.step for e in rec.of(StepEvent)] == list(range(1, 9))
    evals = [e.to_dict()["val_loss"] for e in rec.events if e.type == "eval"]
    assert evals[-1] < evals[0] * 0.9  # the stand-in model really trained
    assert rec.events[-1].to_dict()["status"] == "completed"
    config = json.loads((out / RunFile.CONFIG).read_text())
    assert config["resolved"] == {"model": "counting", "data": "counting"}
    assert (out / RunFile.ADAPTERS).is_file() and (out / RunFile.CHECKPOINTS).is_dir()
    assert not (out / RunFile.CONTROL).exists()  # no listen hook: no control channel


def test_a_set_command_reaches_the_optimizer(tmp_path: Path) -> None:
    holder: list[Run] = []

    def react(event: Event) -> None:
        if isinstance(event, StepEvent) and event.step == 2:
            run = holder[0]
            run.submit(Command.set_knob(Knob.WEIGHT_DECAY, 0.05))
            run.submit(Command.set_knob(Knob.ACCUMULATION, 2))
            run.submit(Command.set_knob(Knob.LR_MULTIPLIER, 0.5, by=Decider.REMOTE))
            run.submit(Command.set_knob(Knob.DROPOUT, 1.5))  # out of range: refused

    run = Run(settings(), output_dir=tmp_path / "run", loader=CountingLoader())
    holder.append(run)
    rec = Recorder(react)
    run.add_sink(rec)
    assert run.execute() == ExitCode.OK
    changes = [(e.knob, e.before, e.after, e.by) for e in rec.of(KnobEvent)]
    assert changes == [
        ("weight_decay", 0.0, 0.05, "user"),
        ("accumulation", 1.0, 2.0, "user"),
        ("lr_multiplier", 1.0, 0.5, "remote"),
    ]
    warnings = [e.text for e in rec.of(MessageEvent) if e.level == "warning"]
    assert any(text.startswith("cannot set dropout") for text in warnings), warnings
    steps = {e.step: e for e in rec.of(StepEvent)}
    assert (steps[2].lr, steps[2].accumulation, steps[2].weight_decay) == (0.05, 1, 0.0)
    assert steps[3].lr == pytest.approx(0.025) and steps[3].accumulation == 2
    assert steps[3].weight_decay == 0.05
    assert steps[3].tokens == 2 * steps[2].tokens  # two micro-batches per step now
    assert run.trainer is not None
    assert float(run.trainer.optimizer.state["weight_decay"].item()) == pytest.approx(0.05)


class Channel:
    """What a listen hook hands back; records what it saw of the run when it started."""

    def __init__(self, run: Run) -> None:
        self.locked = is_locked(run.output_dir)
        self.config_written = (run.output_dir / RunFile.CONFIG).is_file()
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_listen_starts_once_the_folder_is_claimed_and_closes_at_the_end(tmp_path: Path) -> None:
    channels: list[Channel] = []

    def listen(run: Run) -> Closeable:
        channels.append(Channel(run))
        return channels[-1]

    run = Run(settings(), output_dir=tmp_path / "run", loader=CountingLoader(), listen=listen)
    assert run.execute() == ExitCode.OK
    (channel,) = channels
    assert channel.locked and channel.config_written
    assert channel.closed == 1 and run.control is None


def test_a_listen_failure_is_one_warning_and_the_run_trains_on(tmp_path: Path) -> None:
    def listen(run: Run) -> Closeable:
        raise OSError("no room for a socket")

    run = Run(settings(), output_dir=tmp_path / "run", loader=CountingLoader(), listen=listen)
    rec = Recorder()
    run.add_sink(rec)
    assert run.execute() == ExitCode.OK
    warnings = [e.text for e in rec.of(MessageEvent) if e.level == "warning"]
    assert warnings == ["no control socket (attach off): no room for a socket"]
    assert rec.events[-1].to_dict()["status"] == "completed"


def test_without_listen_a_dead_runs_control_file_goes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stale = {"socket": str(tmp_path / "gone.sock"), "pid": 2**22 + 1, "host": "elsewhere"}
    (out / RunFile.CONTROL).write_text(json.dumps(stale))
    run = Run(settings(**{"training.max_steps": 2}), output_dir=out, loader=CountingLoader())
    assert run.execute() == ExitCode.OK
    assert not (out / RunFile.CONTROL).exists()
