"""The runs under a folder (``runs/`` by default): what each one is, how far it got, how it
ended, and whether a process still trains it.

Read from the files every run writes (its settings, its summary, its events) and the
lock a live run holds, so it works for runs of any process, finished or not, without
touching them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scu_tui.protocol import RunFile, RunStatus
from scu_tui.runlock import is_locked

#: Where a run that ended this way can go on from its newest checkpoint.
RESUMABLE = (RunStatus.INTERRUPTED, RunStatus.STOPPED, RunStatus.FAILED, RunStatus.LOST)


@dataclass(frozen=True)
class RunInfo:
    """One run folder, as a list of runs shows it."""

    path: Path
    preset: str
    model: str
    status: str  # a RunStatus as the summary says it (LOST: no process finished it)
    live: bool  # a process holds the folder's lock: it trains (or waits, paused)
    steps: int
    max_steps: int
    best_val_loss: float | None
    started: float | None  # Unix seconds of the first event
    checkpoints: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def resumable(self) -> bool:
        """Not live, not finished, and a checkpoint to go on from."""
        return not self.live and self.status in RESUMABLE and self.checkpoints > 0


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _first_event_time(path: Path) -> float | None:
    try:
        with open(path, "rb") as fh:
            first = fh.readline(64 * 1024)
        value = json.loads(first).get("time")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def describe_run(path: Path) -> RunInfo | None:
    """What ``path`` holds, or None when it is not a run folder."""
    if not (path / RunFile.CONFIG).is_file():
        return None
    config = _json(path / RunFile.CONFIG)
    settings = config.get("settings", {}) if isinstance(config.get("settings"), dict) else {}
    summary = _json(path / RunFile.SUMMARY)
    live = is_locked(path)
    status = str(summary.get("status") or RunStatus.RUNNING)
    if status == RunStatus.RUNNING and not live:
        status = RunStatus.LOST  # the summary says running, but no process holds the folder
    training = settings.get("training", {}) if isinstance(settings.get("training"), dict) else {}
    model = settings.get("model", {}) if isinstance(settings.get("model"), dict) else {}
    steps = summary.get("steps")
    max_steps = summary.get("max_steps", training.get("max_steps", 0))
    checkpoints = path / RunFile.CHECKPOINTS
    return RunInfo(
        path=path,
        preset=str(settings.get("name", "")),
        model=str(model.get("path", "")),
        status=status,
        live=live,
        steps=steps if isinstance(steps, int) else 0,
        max_steps=max_steps if isinstance(max_steps, int) else 0,
        best_val_loss=_number(summary.get("best_val_loss")),
        started=_first_event_time(path / RunFile.EVENTS),
        checkpoints=sum(1 for _ in checkpoints.glob("step-*")) if checkpoints.is_dir() else 0,
    )


def list_runs(parent: Path) -> list[RunInfo]:
    """The runs directly under ``parent``, newest first (by when they started)."""
    if not parent.is_dir():
        return []
    found = [info for child in parent.iterdir() if (info := describe_run(child)) is not None]
    return sorted(found, key=lambda r: (r.started or 0.0, r.name), reverse=True)
