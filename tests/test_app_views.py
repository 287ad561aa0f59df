"""What the views make of an event stream: one timeline across rollbacks and resumes, an
ETA that neither swings nor runs on while paused, plots people can read, trend rates
that cannot read -596 %.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import scu
from helpers import start_event as start
from helpers import step_event as step

from scu_tui.app import make_app
from scu_tui.app.feed import RunState, trend_words
from scu_tui.app.screens import render_plots, step_ticks
from scu_tui.app.widgets import status_numbers
from scu_tui.control.signals import trend_change
from scu_tui.presets import load_preset
from scu_tui.protocol import (
    AnalysisEvent,
    DoneEvent,
    EvalEvent,
    KnobEvent,
    MessageEvent,
    PauseEvent,
    ResumeEvent,
    RollbackEvent,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def folded(*events: object) -> RunState:
    state = RunState()
    for event in events:
        state.fold(event)  # type: ignore[arg-type]
    return state


def test_a_rollback_cuts_every_view_back_to_its_step() -> None:
    events = [start(), *(step(n, loss=5.0 - n / 30) for n in range(1, 61))]
    events += [EvalEvent(20, val_loss=3.0, best_val_loss=3.0, is_best=True, seconds=0.1)]
    events += [EvalEvent(50, val_loss=2.0, best_val_loss=2.0, is_best=True, seconds=0.1)]
    events += [KnobEvent(45, knob="weight_decay", before=0.0, after=0.01, by="controller")]
    events += [RollbackEvent(60, to_step=40, reason="Erratic gradients")]
    events += [step(n, loss=4.0) for n in range(41, 46)]
    state = folded(*events)
    assert state.loss_history.steps == list(range(1, 46))
    assert [s for s, _ in state.losses] == list(range(1, 46))
    assert state.val_history.steps == [20] and state.best_val_loss == 3.0  # 2.0 was abandoned
    assert max(state.grad_history.steps) == 45 and max(state.lr_history.steps) == 45
    assert list(state.markers) == [(40, "rollback")]  # the knob change at 45 was abandoned
    assert state.rollbacks == 1 and state.step == 45


def test_a_resume_after_a_kill_continues_one_timeline() -> None:
    """A killed run wrote steps past its last checkpoint; the resumed one starts there."""
    events = [start(), *(step(n) for n in range(1, 38)), start(30, resumed=True)]
    events += [step(n) for n in range(31, 41)]
    state = folded(*events)
    assert state.loss_history.steps == list(range(1, 41))


def test_a_step_that_goes_back_without_a_rollback_event_also_cuts() -> None:
    state = folded(start(), *(step(n) for n in range(1, 21)), *(step(n) for n in range(11, 16)))
    assert state.loss_history.steps == list(range(1, 16))


def test_the_eta_follows_the_recent_pace_and_ignores_a_pause() -> None:
    state = folded(start(), *(step(n, at=2.0 * n) for n in range(1, 101)))  # 2 s a step
    assert state.eta == 2.0 * (1000 - 100)
    state.fold(PauseEvent(100))
    assert state.paused
    state.fold(ResumeEvent(100, time=10_000.0))  # an hour later
    for n in range(101, 111):
        state.fold(step(n, at=10_000.0 + 2.0 * (n - 100)))
    assert state.eta == 2.0 * (1000 - 110)  # not stretched by the pause


def test_the_status_line_says_paused_instead_of_an_eta() -> None:
    state = folded(start(), *(step(n) for n in range(1, 20)))
    assert "ETA 16m21s" in status_numbers(state)  # 981 steps at 1 s each
    state.fold(PauseEvent(19))
    assert "ETA paused" in status_numbers(state)


def test_a_lost_run_keeps_saying_why_when_a_key_is_refused_after() -> None:
    state = folded(start(), *(step(n) for n in range(1, 5)))
    state.fold(MessageEvent(4, level="error", text="checkpoint write failed"))
    assert state.message == "checkpoint write failed"  # while running: the latest error
    state.fold(DoneEvent(4, status="lost", message="pid 4250 is gone (killed?)"))
    state.fold(MessageEvent(4, level="error", text="command not sent: not running (lost)"))
    assert status_numbers(state) == "lost at step 4: pid 4250 is gone (killed?)"


def test_a_trend_rate_reads_against_a_period_ago() -> None:
    steep = {"level": 0.5, "slope": -0.15, "improving": True}  # from 3.5 to 0.5 in 20 steps
    change = trend_change(steep, 20)
    assert change is not None and -1.0 < change < -0.8  # -85.7 %, not -600 %
    analysis = AnalysisEvent(
        20,
        diagnosis="improving",
        why="",
        period=20,
        window=20,
        nonfinite=0,
        trend=steep,
        gradients={},
        wavelet={},
        validation={},
    )
    assert trend_words(analysis) == "falling -86%/20 steps"


def test_a_fit_that_overshoots_below_zero_never_reads_past_minus_100_percent() -> None:
    """The 60-step demo's third analysis: the fitted level went below zero, and the panel
    read "falling -115%/20 steps"."""
    overshot = {"level": -0.4, "slope": -0.15, "improving": True}  # 2.6 a period ago
    change = trend_change(overshot, 20)
    assert change is not None and -1.0 < change <= -0.98
    for level in (5.0, 1.0, 0.1, 0.0, -0.1, -3.0, -100.0):
        for slope in (-0.5, -0.01, 0.0, 0.01):
            change = trend_change({"level": level, "slope": slope}, 20)
            assert change is None or change > -1.0, (level, slope, change)
    analysis = AnalysisEvent(
        20,
        diagnosis="improving",
        why="",
        period=20,
        window=20,
        nonfinite=0,
        trend=overshot,
        gradients={},
        wavelet={},
        validation={},
    )
    assert trend_words(analysis) == "falling -99%/20 steps"


def test_step_ticks_are_whole_round_numbers() -> None:
    assert step_ticks(1, 400, 4) == [100, 200, 300, 400]
    assert step_ticks(1, 400, 3) == [200, 400]
    assert step_ticks(0, 133, 4) == [0, 50, 100]
    assert all(isinstance(t, int) for t in step_ticks(7, 9999, 7))


def test_plots_mark_decisions_and_rollbacks_and_a_spike_does_not_flatten_the_rest() -> None:
    grads = {n: (418.0 if n == 70 else 1.0 + (n % 7) / 10) for n in range(1, 201)}
    events = [start(), *(step(n, loss=5.0 / n**0.5, grad=grads[n]) for n in range(1, 201))]
    events.insert(100, KnobEvent(99, knob="lr_multiplier", before=1.0, after=1.5, by="user"))
    events += [RollbackEvent(200, to_step=150, reason="x")]
    events += [step(n, loss=0.5, grad=1.0) for n in range(151, 181)]
    state = folded(*events)
    colours = {"decision": (0, 255, 0), "rollback": (255, 0, 0)}
    text = ANSI.sub("", render_plots(state, 100, 40, colours, log_y=False))
    assert "│" in text and "┃" in text  # the decision at 99, the rollback to 150
    tick_rows = [line for line in text.splitlines() if re.fullmatch(r"[\d ]+", line.strip())]
    assert tick_rows and all("." not in row for row in tick_rows)
    grad_labels = [
        float(m) for m in re.findall(r"^\s*([\d.]+)┤", text.split("gradient norm")[1], re.M)
    ]
    assert max(grad_labels) < 50  # linear, but cut well below the one spike of 418
    assert "(linear y)" in text
    assert "(log y)" in ANSI.sub("", render_plots(state, 100, 40, colours, log_y=True))


def test_a_flat_curve_plots_on_the_log_axis_too() -> None:
    # a constant gradient norm has no range for a log axis to show: it is drawn flat,
    # mid-plot, instead of failing the screen
    state = folded(start(), *(step(n, loss=3.0 - n / 100, grad=1.0) for n in range(1, 101)))
    text = ANSI.sub("", render_plots(state, 100, 40, {}, log_y=True))
    labels = re.findall(r"^\s*([\d.]+)┤", text.split("gradient norm")[1], re.M)
    assert 1.0 in {float(label) for label in labels}
    assert "loss: train" in text and "(log y)" in text


@pytest.mark.slow
async def test_a_resumed_run_plots_its_whole_history(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = scu("--headless", "--preset", "demo", "--max-steps", "20", "--output-dir", str(out),
                "--set", "training.save_every=10", "--set", "scu.enabled=false")  # fmt: skip
    assert first.returncode == 0, first.stderr
    settings = load_preset("demo").replace(
        {"training.max_steps": 30, "scu.enabled": False, "ui.refresh_hz": 20.0}
    )
    app = make_app(settings, resume=out)
    async with app.run_test(size=(80, 24)):
        await app.expect("done")
        await app.drains(2)
        assert app.state.loss_history.steps == list(range(1, 31))
        assert app.state.val_history.steps[0] == 0  # from the first process


@pytest.mark.slow
async def test_attach_plots_the_whole_history_not_only_the_replayed_tail(tmp_path: Path) -> None:
    from scu_tui.remote.attach import RemoteRun

    out = tmp_path / "run"
    first = scu("--headless", "--preset", "demo", "--max-steps", "120", "--output-dir",
                str(out), "--set", "scu.enabled=false")  # fmt: skip
    assert first.returncode == 0, first.stderr
    remote = RemoteRun(out, history_lines=40)  # far fewer lines than the run wrote
    settings = remote.settings.replace({"ui.refresh_hz": 20.0})
    app = make_app(settings, output_dir=out, run_factory=lambda *a, **k: remote)
    async with app.run_test(size=(80, 24)):
        await app.expect("done")
        await app.drains(2)
        assert app.state.loss_history.steps == list(range(1, 121))
        assert app.state.done is not None and app.state.done.status == "completed"


def test_the_status_line_shows_the_ranks_of_a_distributed_run() -> None:
    from dataclasses import replace

    from scu_tui.app.widgets import status_knobs

    assert "ranks" not in status_knobs(folded(start(), step(1)))
    assert status_knobs(folded(replace(start(), world_size=2), step(1))).endswith("×2 ranks")
