"""Rank 0 of a data-parallel run that is stopped while a rank dies ends as failed, not as
interrupted: ``mlx.launch`` signals the surviving ranks when one dies, and that signal can
reach rank 0 before its next collective fails. The other ranks ignore a person's signals
and wait for rank 0's last word, so a rank missing at that word was lost. A run that had
completed stays completed."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import read_events

from scu_tui.presets import load_preset
from scu_tui.protocol import ExitCode, RunFile
from scu_tui.run import Run

pytestmark = pytest.mark.slow


class OneRankLeft:
    """The other ranks as rank 0 sees them, in one process: every collective is this
    rank's alone, and the last word finds the other rank gone (``lost``), as the ring
    reports a closed peer."""

    group: Any = None
    world_size = 2

    def __init__(self) -> None:
        self.lost = False
        self.last_word: int | None = None

    def attach(self, trainer: Any, on_timeout: Callable[[str], None]) -> None:
        pass

    def share(self, op: list[Any]) -> None:
        pass

    def resync(self) -> None:
        pass

    @contextlib.contextmanager
    def collective(self, op: str) -> Iterator[None]:
        yield

    def heartbeat(self) -> None:
        pass

    def finish(self, code: int) -> None:
        self.last_word = code
        self.lost = True


def run_to_its_end(tmp_path: Path, max_steps: int, stop: bool) -> tuple[int, Path, OneRankLeft]:
    settings = load_preset("demo").replace(
        {"training.max_steps": max_steps, "training.eval_every": 100, "scu.enabled": False}
    )
    peers = OneRankLeft()
    run = Run(settings, output_dir=tmp_path / "run", peers=peers)
    if stop:
        run.request_stop()  # the signal mlx.launch sends when a rank dies
    return run.execute(), tmp_path / "run", peers


def test_a_signal_with_a_rank_gone_ends_the_run_as_failed(tmp_path: Path) -> None:
    code, folder, peers = run_to_its_end(tmp_path, 20, stop=True)
    assert peers.last_word == ExitCode.INTERRUPTED  # the stop was a signal's...
    assert code == ExitCode.FAILED  # ...and the job failed: a rank is gone
    done = [e for e in read_events(folder) if e["type"] == "done"]
    assert [e["status"] for e in done] == ["failed"]
    assert "rank was lost" in done[-1]["message"]
    summary = json.loads((folder / RunFile.SUMMARY).read_text())
    assert summary["status"] == "failed"
    saved = [e for e in read_events(folder) if e["type"] == "checkpoint"]
    assert saved and saved[-1]["reason"] == "signal"  # its checkpoint is kept to resume


def test_a_completed_run_stays_completed_when_a_rank_is_gone_at_its_last_word(
    tmp_path: Path,
) -> None:
    code, folder, peers = run_to_its_end(tmp_path, 3, stop=False)
    assert peers.last_word == ExitCode.OK and code == ExitCode.OK
    done = [e for e in read_events(folder) if e["type"] == "done"]
    assert [e["status"] for e in done] == ["completed"]
