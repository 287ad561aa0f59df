"""The LR trial: the run trains the same steps twice from one state, at its LR and at half
of it, on the same batches, and goes on with the half only when its loss is clearly lower.
The verdict on recorded-like losses; when the controller holds one; and real runs of the
demo, resumed in the middle of a trial exactly as if they had never stopped."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scu_tui.control import trial
from scu_tui.control.controller import SEARCH_RULE, TRIAL_RULE
from scu_tui.presets import load_preset
from scu_tui.protocol import Outcome
from scu_tui.replay import replay
from tests.test_control_policy import SCU
from tests.test_lr_search import TRAINING_W, WARMUP, SearchRun
from tests.test_resume_with_scu import assert_same, timeline, train

#: Per-batch losses: the batches differ far more than the two LRs do, as in a real run.
BATCHES = np.exp(np.random.default_rng(7).normal(0.0, 0.4, trial.TRIAL_STEPS)) * 1.2


def test_a_clearly_lower_loss_on_the_same_batches_wins_the_trial() -> None:
    """Batch to batch, the losses vary by +-40 %; 20 % lower on every batch is clear."""
    noise = np.random.default_rng(1).normal(0.0, 0.05, trial.TRIAL_STEPS)
    tried = BATCHES * 0.8 * np.exp(noise)
    verdict = trial.judge(BATCHES.tolist(), tried.tolist())
    assert verdict.tried_wins
    assert verdict.ratio == pytest.approx(math.log(0.8), abs=0.05) and verdict.t < -trial.T_MIN
    assert "the lower LR is clearly better" in verdict.text(1e-3, 5e-4)


def test_a_difference_within_the_noise_or_under_the_margin_keeps_the_lr() -> None:
    noisy = BATCHES * np.exp(np.random.default_rng(2).normal(-0.06, 0.4, trial.TRIAL_STEPS))
    verdict = trial.judge(BATCHES.tolist(), noisy.tolist())
    assert not verdict.tried_wins and verdict.t > -trial.T_MIN
    slightly = BATCHES * 0.99  # certain, but 1 %: not worth a move
    verdict = trial.judge(BATCHES.tolist(), slightly.tolist())
    assert not verdict.tried_wins and verdict.ratio > -trial.MARGIN
    higher = BATCHES * 1.2
    assert not trial.judge(BATCHES.tolist(), higher.tolist()).tried_wins
    assert "the LR stays" in trial.judge(BATCHES.tolist(), higher.tolist()).text(1e-3, 5e-4)


def test_a_branch_with_a_non_finite_loss_loses() -> None:
    broken = BATCHES.tolist()
    broken[5] = math.nan
    assert trial.judge(broken, BATCHES.tolist()).tried_wins  # the current LR blew up
    assert not trial.judge(BATCHES.tolist(), broken).tried_wins
    assert not trial.judge(broken, broken).tried_wins


def test_a_trial_needs_room_in_the_run() -> None:
    assert not trial.room_for_trial(30, 150)  # 20 steps are too much of a short run
    assert not trial.room_for_trial(30, 399) and trial.room_for_trial(30, 400)
    last = 400 - 2 * trial.TRIAL_STEPS - trial.MIN_STEPS_AFTER
    assert trial.room_for_trial(last, 400) and not trial.room_for_trial(last + 1, 400)


def in_range(step: int, multiplier: float) -> float:
    return 0.02  # the alignment of a tuned LR, or of one a few times too high


def test_the_controller_holds_one_trial_at_the_warm_up_s_end() -> None:
    run = SearchRun(in_range)
    run.until(WARMUP - 1)
    c = run.controller
    assert not c.trial_due(WARMUP - 1, run.knobs)  # inside the warm-up
    run.until(WARMUP)
    assert c.trial_due(WARMUP, run.knobs)
    verdict = trial.judge(BATCHES.tolist(), (BATCHES * 0.8).tolist())
    proposal = c.trial_done(WARMUP, WARMUP + 40, verdict, run.knobs)
    assert proposal is not None and proposal.rule == TRIAL_RULE
    assert (proposal.before, proposal.after) == (1.0, trial.FACTOR)
    assert proposal.evidence["first_step"] == WARMUP and proposal.evidence["log_ratio"] < 0
    assert not c.trial_due(WARMUP + 40, run.knobs)  # one trial per run
    # a trial the current LR won moves nothing, and is not held again either
    kept = SearchRun(in_range)
    kept.until(WARMUP)
    same = trial.judge(BATCHES.tolist(), BATCHES.tolist())
    assert kept.controller.trial_done(WARMUP, WARMUP + 40, same, kept.knobs) is None
    assert not kept.controller.trial_due(WARMUP, kept.knobs)


def test_no_trial_after_the_warm_up_s_cut_or_when_switched_off() -> None:
    cut = SearchRun(lambda step, m: -0.15 if step > 5 and m > 0.3 else 0.0)
    cut.until(WARMUP, keep_states=True)
    assert cut.controller.book.of_rule(SEARCH_RULE)  # the warm-up's own check cut the LR
    assert not cut.controller.trial_due(WARMUP, cut.knobs)
    off = SearchRun(in_range, scu=dataclasses.replace(SCU, lr_trial=False))
    off.until(WARMUP)
    assert not off.controller.trial_due(WARMUP, off.knobs)
    no_search = SearchRun(in_range, scu=dataclasses.replace(SCU, lr_search=False))
    no_search.until(WARMUP)
    assert not no_search.controller.trial_due(WARMUP, no_search.knobs)
    short = SearchRun(in_range, training=dataclasses.replace(TRAINING_W, max_steps=150))
    short.until(WARMUP)
    assert not short.controller.trial_due(WARMUP, short.knobs)
    bounded = SearchRun(in_range, scu=dataclasses.replace(SCU, lr_bounds=[8e-4, 1e-2]))
    bounded.until(WARMUP)
    assert not bounded.controller.trial_due(WARMUP, bounded.knobs)  # half is under the bound


def test_the_trial_survives_a_checkpoint() -> None:
    run = SearchRun(in_range)
    run.until(WARMUP)
    saved = run.controller.state()
    fresh = SearchRun(in_range)
    fresh.controller.load_state(saved)
    assert fresh.controller.trial_due(WARMUP, run.knobs)  # due, not yet held: held on resume
    run.controller.trial_done(WARMUP, 50, trial.judge([1.0] * 20, [1.0] * 20), run.knobs)
    again = SearchRun(in_range)
    again.controller.load_state(run.controller.state())
    assert not again.controller.trial_due(WARMUP, run.knobs)


# --- real runs of the demo ---------------------------------------------------------------

STEPS = 100


@pytest.fixture
def short_runs_hold_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial is held only where its steps are a small share of the run (400 steps and
    more, tested above); these runs test what it does, in 100 steps."""
    monkeypatch.setattr(trial, "MAX_COST", 0.2)


def demo(**more: Any) -> Any:
    return load_preset("demo").replace(
        {
            "training.max_steps": STEPS,
            "training.eval_every": 25,
            "training.save_every": 100,
            "training.samples": 0,
            "scu.mode": "auto",
        }
        | more
    )


def trial_steps(events: list[dict[str, Any]]) -> tuple[int, int]:
    """The trial's first step (the state both branches start from) and its last."""
    (event,) = [e for e in events if e["type"] == "trial"]
    assert event["step"] == event["first"] + 2 * trial.TRIAL_STEPS
    message = next(e for e in events if e["type"] == "message" and "LR trial:" in e["text"])
    assert message["step"] == event["step"]  # the verdict, in words
    return event["first"], event["step"]


@pytest.mark.slow
@pytest.mark.usefixtures("short_runs_hold_trials")
def test_a_real_run_holds_the_trial_and_counts_both_branches_steps(tmp_path: Path) -> None:
    events = train(demo(), tmp_path / "run")
    first, last = trial_steps(events)
    # the log says, as it begins, what the next steps are
    (begins,) = [e for e in events if e["type"] == "message" and "LR trial begins" in e["text"]]
    assert begins["step"] == first
    assert f"steps {first + 1}-{first + trial.TRIAL_STEPS} at LR" in begins["text"]
    assert f"(steps {first + trial.TRIAL_STEPS + 1}-{last})" in begins["text"]
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, STEPS + 1))  # none twice, none lost
    lr = {e["step"]: e["lr"] for e in steps}
    current = lr[first + 1]
    assert all(lr[s] == current for s in range(first + 1, first + trial.TRIAL_STEPS + 1))
    tried = range(first + trial.TRIAL_STEPS + 1, last + 1)
    assert all(lr[s] == pytest.approx(current * trial.FACTOR) for s in tried)
    # the second branch starts again from the trial's first state: its first loss is that
    # of the same batch as the first branch's first step, at nearly the same weights
    loss = {e["step"]: e["loss"] for e in steps}
    assert loss[first + trial.TRIAL_STEPS + 1] == pytest.approx(loss[first + 1], rel=0.02)
    # the demo's LR is tuned: the half is not clearly better, and nothing changed
    assert not [e for e in events if e["type"] == "proposal" and e["rule"] == TRIAL_RULE]
    assert lr[last + 1] == pytest.approx(current)
    # the eval due inside the trial ran once at its end, on the state the run goes on from
    evals = [e["step"] for e in events if e["type"] == "eval"]
    assert last in evals and not [s for s in evals if first < s < last]
    saved = [e for e in events if e["type"] == "checkpoint" and e["step"] == last]
    assert [e for e in saved if e["reason"] == "trial"]


def weights_at_each_event(settings: Any, out: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    """A run's events, and beside each the sum of squares of its adapter weights then."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from scu_tui.run import Run

    run = Run(settings, output_dir=out)
    events: list[dict[str, Any]] = []
    weights: list[Any] = []

    class Watch:
        def emit(self, event: Any) -> None:
            events.append(event.to_dict())
            params = tree_flatten(run.trainer.model.trainable_parameters())
            weights.append(sum(float(mx.sum(v * v).item()) for _, v in params))

        def close(self) -> None:
            pass

    run.add_sink(Watch())
    assert run.execute() == 0
    return events, weights


@pytest.mark.slow
@pytest.mark.usefixtures("short_runs_hold_trials")
@pytest.mark.parametrize("tried_wins", [True, False])
def test_the_run_goes_on_from_the_winning_branch_s_last_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tried_wins: bool
) -> None:
    """Whichever branch wins, the run goes on from its last state: the weights after the
    trial are those of that branch's last step, and the LR is the winner's (the half
    applied as the trial's move). The verdict is fixed here, to test the switch."""

    def verdict(current: list[float], tried: list[float]) -> trial.TrialVerdict:
        return trial.TrialVerdict(tried_wins, -0.2 if tried_wins else 0.1, 0.0, 1.0, 1.0)

    monkeypatch.setattr(trial, "judge", verdict)
    events, weights = weights_at_each_event(demo(), tmp_path / "run")
    first, last = trial_steps(events)
    winner_end = last if tried_wins else first + trial.TRIAL_STEPS
    at = {e["step"]: w for e, w in zip(events, weights, strict=True) if e["type"] == "step"}
    message = next(i for i, e in enumerate(events) if "LR trial:" in e.get("text", ""))
    assert weights[message] == pytest.approx(at[winner_end], rel=1e-6)
    loser_end = first + trial.TRIAL_STEPS + last - winner_end
    assert weights[message] != pytest.approx(at[loser_end], rel=1e-6)
    moves = [e for e in events if e["type"] == "proposal" and e["rule"] == TRIAL_RULE]
    # a replay sees what the live controller saw: the winner's steps, then the verdict (the
    # second branch starting again from the trial's first state is no damage)
    replayed, _ = replay(tmp_path / "run", demo())
    upto = [(p.step, p.rule) for p in replayed if p.step <= last]
    assert upto == [(e["step"], e["rule"]) for e in moves]
    lr = {e["step"]: e["lr"] for e in events if e["type"] == "step"}
    if tried_wins:
        assert len(moves) == 1 and moves[0]["step"] == last
        decided = [e for e in events if e["type"] == "decision" and e["id"] == moves[0]["id"]]
        assert decided and decided[0]["outcome"] == Outcome.APPLIED
        assert lr[last + 1] == pytest.approx(lr[first + 1] * trial.FACTOR)
    else:
        assert not moves and lr[last + 1] == pytest.approx(lr[first + 1])


@pytest.mark.slow
@pytest.mark.usefixtures("short_runs_hold_trials")
def test_a_run_stopped_inside_the_trial_resumes_to_the_same_run(tmp_path: Path) -> None:
    """A stop during the trial abandons it, back to the state it began from; the resumed
    run holds it again from there and ends exactly as the run that never stopped."""
    settings = demo()
    reference = train(settings, tmp_path / "reference")
    first, _ = trial_steps(reference)
    stopped = train(settings, tmp_path / "run", stop_at=first + trial.TRIAL_STEPS + 3)
    assert not [e for e in stopped if e["type"] == "message" and "LR trial:" in e["text"]]
    saved = [e["step"] for e in stopped if e["type"] == "checkpoint"]
    assert saved[-1] == first  # the state the trial began from
    resumed = train(settings, tmp_path / "run", resume=tmp_path / "run")
    upto = [e for e in timeline(stopped) if e[1] <= first]
    assert_same(upto + timeline(resumed), timeline(reference))
    # its replay holds the abandoned steps of the first try as the live run did: none seen
    seen = [(p.step, p.rule) for p in replay(tmp_path / "run", settings)[0]]
    assert seen == [(p.step, p.rule) for p in replay(tmp_path / "reference", settings)[0]]


@pytest.mark.slow
@pytest.mark.usefixtures("short_runs_hold_trials")
def test_a_run_in_ask_mode_holds_no_trial(tmp_path: Path) -> None:
    """The trial moves the LR on its own evidence: a run where a person answers each move
    has none, and trains each step once."""
    events = train(demo(**{"scu.mode": "ask"}), tmp_path / "run")
    assert not [e for e in events if e["type"] == "message" and "LR trial" in e["text"]]
    lr = [e["lr"] for e in events if e["type"] == "step"]
    assert len(lr) == STEPS and len(set(lr[10:50])) == 1  # held, never halved
