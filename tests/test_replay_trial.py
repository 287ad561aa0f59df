"""A replay sees an LR trial as the live run's controller saw it: the winning branch's
steps, numbered as the trial's last ones, then the verdict. The log holds both branches,
the second starting again from the trial's first state; read as one timeline, that
restart is damage the run never had. Synthetic logs: the run's own is tested in
test_lr_trial.py."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import step_event

from scu_tui.control.controller import TRIAL_RULE, Controller
from scu_tui.presets import load_preset
from scu_tui.protocol import (
    DoneEvent,
    Event,
    RunStatus,
    StepEvent,
    TrialEvent,
    TrialStartEvent,
)
from scu_tui.replay import replay

SETTINGS = load_preset("demo").replace({"training.max_steps": 400, "scu.mode": "auto"})
FIRST, SPAN = 10, 20
LR = 1e-3
NOISE = np.random.default_rng(0).normal(0.0, 0.005, 200)


def steps(first: int, last: int, start: float, end: float, lr: float) -> list[StepEvent]:
    """Steps ``first``-``last`` whose loss falls smoothly from ``start`` to ``end``."""
    n = last - first + 1
    losses = [start + (end - start) * i / max(1, n - 1) + NOISE[first + i] for i in range(n)]
    return [dataclasses.replace(step_event(first + i, loss=x), lr=lr) for i, x in enumerate(losses)]


def trial_log(tried_wins: bool) -> list[Event]:
    """Steps 1-10, a trial (11-30 at the LR, falling to 0.5; 31-50 again from step 10's
    state at half, falling to 0.7), its verdict, and 20 steps on from the winner."""
    head = steps(1, FIRST, 3.0, 1.0, LR)
    current = steps(FIRST + 1, FIRST + SPAN, 1.0, 0.5, LR)
    tried = steps(FIRST + SPAN + 1, FIRST + 2 * SPAN, 1.0, 0.7, LR / 2)
    last = FIRST + 2 * SPAN
    verdict = TrialEvent(
        last,
        first=FIRST,
        lr=LR,
        tried_lr=LR / 2,
        tried_wins=tried_wins,
        current_loss=0.6,
        tried_loss=0.75,
        ratio=math.log(0.75 / 0.6),
        t=math.nan,  # a verdict's figures may be non-finite
    )
    after = steps(last + 1, last + 20, 0.7 if tried_wins else 0.5, 0.65 if tried_wins else 0.47, LR)
    begins = TrialStartEvent(FIRST, lr=LR, tried_lr=LR / 2, steps=SPAN)
    return [*head, begins, *current, *tried, verdict, *after]


def replayed(tmp_path: Path, events: list[Event]) -> list[tuple[int, str]]:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in events))
    proposals, skipped = replay(run, SETTINGS)
    assert skipped == 0
    return [(p.step, p.rule) for p in proposals]


def test_read_as_one_timeline_the_second_branch_is_damage(tmp_path: Path) -> None:
    """The logs below are real tests: without the trial's events, a replay rolls back."""
    plain = [e for e in trial_log(False) if not isinstance(e, TrialStartEvent | TrialEvent)]
    assert "rollback" in [rule for _, rule in replayed(tmp_path, plain)]


def observed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float, float]]:
    """What the replay's controller observes: (step, loss, lr), in order."""
    seen: list[tuple[int, float, float]] = []
    observe = Controller.observe

    def watch(self: Controller, step: int, loss: float, *rest: Any, **k: Any) -> None:
        seen.append((step, loss, rest[1]))  # rest: the gradient's norm, the LR, ...
        observe(self, step, loss, *rest, **k)

    monkeypatch.setattr(Controller, "observe", watch)
    return seen


@pytest.mark.parametrize("tried_wins", [False, True])
def test_a_trial_replays_as_the_run_saw_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tried_wins: bool
) -> None:
    """The controller sees steps 1-10, the winner's 20 steps as steps 31-50, then the
    steps after the trial; a half that won is the trial's move; no damage either way."""
    seen = observed(monkeypatch)
    log = trial_log(tried_wins)
    rules = replayed(tmp_path, log)
    branch = [e for e in log if isinstance(e, StepEvent) and FIRST < e.step <= FIRST + 2 * SPAN]
    winner = branch[SPAN:] if tried_wins else branch[:SPAN]
    last = FIRST + 2 * SPAN
    want = [(e.step, e.loss, e.lr) for e in log if isinstance(e, StepEvent) and e.step <= FIRST]
    want += [(last - SPAN + 1 + i, e.loss, e.lr) for i, e in enumerate(winner)]
    want += [(e.step, e.loss, e.lr) for e in log if isinstance(e, StepEvent) and e.step > last]
    assert seen == want
    assert "rollback" not in [rule for _, rule in rules]
    assert ((last, TRIAL_RULE) in rules) == tried_wins


def test_a_trial_stopped_inside_is_abandoned_and_so_are_its_steps(tmp_path: Path) -> None:
    """Stopped in its second branch: the run went back to the trial's start and ended."""
    log = trial_log(False)
    stop = log.index(next(e for e in log if isinstance(e, StepEvent) and e.step == 45))
    stopped = [*log[: stop + 1], DoneEvent(FIRST, status=RunStatus.INTERRUPTED, message="")]
    assert [s for s, _ in replayed(tmp_path, stopped) if s > FIRST] == []
