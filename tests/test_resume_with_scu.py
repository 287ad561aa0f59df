"""Exact resume with the S-SCU on: the kept good states travel in the checkpoint, so a run
stopped before a rollback and resumed takes the same rollback, to the same kept state,
and trains on exactly as the run that never stopped; a run killed after a rollback
resumes on the branch it went back to, not on a checkpoint taken during the damage. With
the S-SCU off, a run keeps no states, not even those of the checkpoint it resumes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scu_tui.presets import load_preset
from scu_tui.protocol import Event
from scu_tui.run import Run
from scu_tui.training.checkpoint import latest_checkpoint, list_checkpoints
from scu_tui.training.snapshots import ARRAYS_FILE, INDEX_FILE

#: demo-hot rolls back at step ~19 to the state kept at step 5 (its loss rises from step 8
#: on); the stop comes at step 12, after state 5 was kept and before the rollback.
STOP_AT = 12
STEPS = 40
#: The damage detector's rollback, not the start-up LR search's earlier one at the end of
#: the warm-up (tests/test_lr_search.py): these tests are about the detector's.
GUARD_ONLY = {"scu.lr_search": False}


class Keep:
    def __init__(
        self, stop_at: int | None = None, watch: Callable[[Event], None] | None = None
    ) -> None:
        self.events: list[dict[str, Any]] = []
        self.stop_at = stop_at
        self.watch = watch
        self.run: Run | None = None

    def emit(self, event: Event) -> None:
        self.events.append(event.to_dict())
        if self.watch is not None:
            self.watch(event)
        if event.type == "step" and event.step == self.stop_at and self.run is not None:
            self.run.request_stop("user")

    def close(self) -> None:
        pass


def train(  # type: ignore[no-untyped-def]
    settings: Any,
    out: Path,
    resume: Path | None = None,
    stop_at: int | None = None,
    watch: Callable[[Event], None] | None = None,
):
    run = Run(settings, output_dir=None if resume else out, resume=resume)
    keep = Keep(stop_at, watch)
    keep.run = run
    run.add_sink(keep)
    assert run.execute() == 0
    return keep.events


def timeline(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    kept = ("step", "rollback", "proposal")
    return [
        (e["type"], e["step"], e.get("loss"), e.get("to_step"), e.get("rule"))
        for e in events
        if e["type"] in kept
    ]


def assert_same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    assert [e[:2] + e[3:] for e in got] == [e[:2] + e[3:] for e in want]
    # same operations in the same order on the CPU backend: equal up to float32 rounding
    for (_, step, loss, _, _), (_, _, expected, _, _) in zip(got, want, strict=True):
        if loss is not None:
            assert loss == pytest.approx(expected, rel=1e-5), step


@pytest.mark.slow
def test_a_run_resumed_before_its_rollback_takes_the_same_rollback_exactly(
    tmp_path: Path,
) -> None:
    settings = load_preset("demo-hot").replace(
        {"training.max_steps": STEPS, "training.eval_every": 100, "training.save_every": 100}
        | GUARD_ONLY
    )
    reference = train(settings, tmp_path / "reference")
    first = train(settings, tmp_path / "stopped", stop_at=STOP_AT)
    resumed = train(settings, tmp_path / "stopped", resume=tmp_path / "stopped")

    want = timeline(reference)
    got = timeline(first) + timeline(resumed)
    rollbacks = [e for e in want if e[0] == "rollback"]
    assert rollbacks and rollbacks[0][1] > STOP_AT  # the rollback comes after the stop
    assert rollbacks[0][3] < STOP_AT  # to a state kept before it: it came from the checkpoint
    assert_same(got, want)


@pytest.mark.slow
def test_a_run_with_the_scu_off_neither_loads_nor_saves_kept_states(tmp_path: Path) -> None:
    out = tmp_path / "run"
    on = load_preset("demo-hot").replace(
        {"training.max_steps": STOP_AT, "training.eval_every": 100, "training.save_every": 100}
    )
    train(on, out)
    with_scu = latest_checkpoint(out)
    assert with_scu is not None and (with_scu / ARRAYS_FILE).is_file()  # it kept states

    off = on.replace({"scu.enabled": False, "training.max_steps": STOP_AT + 4})
    run = Run(off, resume=out)
    run.add_sink(Keep())
    assert run.execute() == 0
    assert len(run.snapshots) == 0  # the kept states of the checkpoint stayed on disk
    newest = latest_checkpoint(out)
    assert newest is not None and newest.name == f"step-{STOP_AT + 4:06d}"
    assert not (newest / ARRAYS_FILE).exists() and not (newest / INDEX_FILE).exists()


@pytest.mark.slow
def test_a_run_killed_after_a_rollback_resumes_on_the_branch_it_went_back_to(
    tmp_path: Path,
) -> None:
    """A checkpoint taken during the damage (step 10 here) would be the newest by step
    after the rollback to step 5: a run killed then must resume on the restored branch."""
    settings = load_preset("demo-hot").replace(
        {"training.max_steps": STEPS, "training.eval_every": 100, "training.save_every": 10}
        | GUARD_ONLY
    )
    reference = train(settings, tmp_path / "reference")
    killed = tmp_path / "killed"
    seen: list[Event] = []

    def kill_after_the_rollback(event: Event) -> None:
        """At the first step after the rollback, the folder as a kill -9 would leave it."""
        rolled_back = any(e.type == "rollback" for e in seen)
        seen.append(event)
        if rolled_back and event.type == "step" and not killed.exists():
            shutil.copytree(tmp_path / "run", killed)

    first = train(settings, tmp_path / "run", watch=kill_after_the_rollback)
    rollback = next(e for e in first if e["type"] == "rollback")
    assert rollback["to_step"] < 10 < rollback["step"]  # step 10 was saved during the damage
    saved = next(e for e in first[first.index(rollback) :] if e["type"] == "checkpoint")
    assert (saved["step"], saved["reason"]) == (rollback["to_step"], "rollback")
    # the state it went back to is the newest checkpoint; the damaged branch's went
    steps = [step for step, _ in list_checkpoints(killed)]
    assert steps and max(steps) == rollback["to_step"], steps

    resumed = train(settings, killed, resume=killed)
    upto = next(i for i, e in enumerate(first) if e["type"] == "rollback") + 1
    assert_same(timeline(first[:upto]) + timeline(resumed), timeline(reference))
