"""Helpers shared by tests: run the CLI as a user would, read a run's events."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scu_tui.app import ScuApp

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


async def until(app: ScuApp, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """Wait, refresh tick by refresh tick, until the app's drained state satisfies ``ready``."""

    async def ticks() -> None:
        while not ready():
            await app.drains(1)

    await asyncio.wait_for(ticks(), timeout)
