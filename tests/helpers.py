"""Helpers shared by tests: run the CLI as a user would, read a run's events, build the
events a run emits."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scu_tui.control.controller import Controller
from scu_tui.control.policy import Proposal

if TYPE_CHECKING:
    from scu_tui.app import ScuApp
    from scu_tui.protocol import Event, StartEvent, StepEvent
    from scu_tui.sinks import Sink

CLI = [sys.executable, "-m", "scu_tui"]


def scu(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def scu_popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=dict(os.environ),
    )


class StandInController(Controller):
    """The base of a stand-in S-SCU in a test: it proposes only its own moves (its
    ``decide``), never the start-up LR search's."""

    def check_search(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        return None


@dataclass(frozen=True)
class TrainedDemo:
    """The session's finished demo run (150 steps, S-SCU off), shared read-only: a test that
    writes into a run works on a copy (``shutil.copytree``)."""

    folder: Path
    #: what the CLI printed while training it
    stdout: str


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def step_losses(run_dir: Path) -> dict[int, float]:
    """Loss per step; a resumed run's later events win over the killed run's."""
    return {e["step"]: e["loss"] for e in read_events(run_dir) if e["type"] == "step"}


def wait_for_line(proc: subprocess.Popen[str], prefix: str, contains: str = "") -> str:
    """Read the child's stdout until a line starts with ``prefix`` (no sleeping)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix) and contains in line:
            return line
    stderr = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"the run ended before printing {prefix!r}: {stderr}")


def start_headless(out: Path, *extra: str) -> subprocess.Popen[str]:
    """A long headless run of the demo, once it has taken a step; its stdout is read on a
    thread so the pipe never fills."""
    proc = scu_popen(
        "--headless", "--preset", "demo", "--max-steps", "20000", "--output-dir", str(out), *extra
    )
    wait_for_line(proc, "step")
    assert proc.stdout is not None
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc


class Inbox:
    """A sink handing events to the test thread through a queue (no polling, no sleeps)."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()

    def emit(self, event: Event) -> None:
        self.events.put(event)

    def close(self) -> None:
        pass

    def wait_for(self, kind: str, timeout: float = 120) -> Event:
        while True:
            event = self.events.get(timeout=timeout)
            if event.type == kind:
                return event


async def until(app: ScuApp, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """Wait, refresh tick by refresh tick, until the app's drained state satisfies ``ready``."""

    async def ticks() -> None:
        while not ready():
            await app.drains(1)

    await asyncio.wait_for(ticks(), timeout)


def step_event(
    n: int,
    *,
    loss: float = 1.0,
    grad: float = 1.0,
    max_steps: int = 1000,
    at: float | None = None,
) -> StepEvent:
    """A training step as a run emits it, for tests that feed the app or its state."""
    from scu_tui.protocol import StepEvent

    return StepEvent(
        n,
        loss=loss,
        grad_norm=grad,
        lr=1e-3,
        tokens=100,
        tokens_per_second=1000.0,
        peak_memory_gb=0.1,
        step_seconds=0.1,
        eta_seconds=5.0,
        max_steps=max_steps,
        weight_decay=0.0,
        dropout=0.0,
        batch_size=4,
        accumulation=1,
        time=float(n) if at is None else at,
    )


def start_event(
    n: int = 0, *, resumed: bool = False, max_steps: int = 1000, mode: str = "ask"
) -> StartEvent:
    """A run's start as it emits it (the demo's preset, made-up sizes)."""
    from scu_tui.protocol import StartEvent

    return StartEvent(
        n,
        max_steps=max_steps,
        preset="demo",
        model="m",
        data="d",
        output_dir="o",
        trainable_parameters=1,
        total_parameters=2,
        train_examples=3,
        valid_examples=4,
        truncated=0,
        resumed=resumed,
        knobs={"lr": 1e-3},
        mode=mode,
    )


class StandInRun:
    """Stands in for a run in the app (``run_factory``): emits :meth:`events` to the app's
    sinks, then idles until stopped, keeping the commands it was sent."""

    attached = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sinks: list[Sink] = []
        self.stopped = threading.Event()
        self.commands: list[Any] = []

    def events(self) -> Iterable[Event]:
        """What the run emits before it idles: nothing here (the test feeds the app)."""
        return ()

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def execute(self) -> int:
        for event in self.events():
            for sink in self.sinks:
                sink.emit(event)
        self.stopped.wait()
        return 0

    def submit(self, command: Any) -> None:
        self.commands.append(command)

    def request_stop(self, reason: str = "user") -> None:
        self.stopped.set()
