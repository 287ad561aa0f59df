"""The start-up LR search: doublings while the updates keep pointing the same way, on
synthetic runs through the controller, and on a real run of the demo at a tenth of its LR."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from scu_tui.control import search
from scu_tui.control.controller import SEARCH_RULE, SETTLE_RULE, Controller
from scu_tui.control.policy import Proposal
from scu_tui.presets import load_preset
from scu_tui.protocol import Event, Outcome, ProposalEvent, StepEvent
from tests.test_control_policy import NOISE, SCU, TRAINING, apply, knobs

WARMUP = 10
TRAINING_W = dataclasses.replace(TRAINING, warmup_steps=WARMUP)
Alignment = Callable[[int, float], float]  # (step, lr multiplier) -> alignment


def falls_with_lr(step: int, multiplier: float) -> float:
    """Aligned while the LR is under 4x the start (the "tuned" LR), not once it is there."""
    return 0.8 if multiplier < 4 else 0.02


class SearchRun:
    """Feeds a controller with a loss falling gently and an alignment that depends on the
    LR; the search's proposals are answered with ``outcome`` (None: left waiting)."""

    def __init__(
        self,
        alignment: Alignment,
        outcome: Outcome | None = Outcome.APPLIED,
        scu: object = SCU,
        training: object = TRAINING_W,
        loss: Callable[[int], float] = lambda step: 2.0 - 0.001 * step,
    ) -> None:
        self.controller = Controller(scu, training)  # type: ignore[arg-type]
        self.alignment, self.outcome, self.loss = alignment, outcome, loss
        self.knobs = knobs()
        self.step = 0

    def until(self, last: int, keep_states: bool = False) -> list[Proposal]:
        made = []
        for step in range(self.step + 1, last + 1):
            c = self.controller
            if keep_states and c.snapshot_due(step - 1):  # the state before this step
                c.snapshot_taken(step - 1)
            alignment = self.alignment(step, self.knobs["lr_multiplier"])
            c.observe(step, self.loss(step), 1.0, self.knobs["lr"], False, alignment)
            p = c.check_search(step, self.knobs)
            if p is not None:
                made.append(p)
                if self.outcome is not None:
                    c.record_outcome(p.id, self.outcome)
                    if self.outcome in (Outcome.APPLIED, Outcome.ACCEPTED):
                        apply(self.knobs, p)
        self.step = last
        return made


def test_a_window_is_judged_by_its_mean_alignment() -> None:
    steps = [(s, 0.8) for s in range(1, 20)]
    assert search.search_step(steps, 10, 0).action == "raise_lr"
    low = [(s, 0.1) for s in range(1, 20)]
    assert search.search_step(low, 10, 0).action == "wait"  # a longer look first
    low = [(s, 0.1) for s in range(1, 40)]
    ended = search.search_step(low, 10, 0)
    assert ended.action == "end" and "+0.10 over steps 11-30" in ended.why
    # too few finite points after the start: wait
    assert search.search_step([(11, 0.9), (12, math.nan)], 10, 0).action == "wait"
    assert search.search_step(steps, 10, search.MAX_MOVES).action == "end"
    blind = [(s, math.nan) for s in range(11, 21)]
    assert search.search_step(blind, 10, 0).action == "end"  # no alignment: nothing to judge
    assert search.window_start(10, -1) == 10 and search.window_start(0, -1) == search.EARLIEST
    assert search.window_start(10, 25) == 25


def test_a_far_too_low_lr_is_doubled_until_the_updates_stop_agreeing() -> None:
    run = SearchRun(falls_with_lr)
    made = run.until(60)
    assert [p.rule for p in made] == [SEARCH_RULE, SEARCH_RULE]
    # the first window after the warm-up (11-15), then one window after each move
    assert [p.step for p in made] == [15, 20]
    assert [p.after for p in made] == [2.0, 4.0]
    assert run.knobs["lr_multiplier"] == 4.0
    c = run.controller
    assert not c.searching and c.search_note is not None
    assert "after 2 raises (LR x4 in all)" in c.search_note and "in range" in c.search_note
    assert made[0].evidence["alignment"] == pytest.approx(0.8)


def nearer_with_lr(step: int, multiplier: float) -> float:
    """Strongly aligned under 2x the start, less so under 5x, in range from 5x."""
    return 0.8 if multiplier < 2 else 0.2 if multiplier < 5 else 0.02


def test_after_a_doubling_a_less_aligned_window_takes_a_smaller_step_up() -> None:
    run = SearchRun(nearer_with_lr)
    made = run.until(90)
    assert [p.after for p in made] == [2.0, 3.0, 4.5, 6.75]
    assert "doubling it" in made[0].reason and "raising it x1.5" in made[1].reason
    c = run.controller
    assert not c.searching and "after 4 raises (LR x6.75 in all)" in (c.search_note or "")


def test_once_raised_a_window_just_above_nearby_still_goes_up() -> None:
    """Raised runs stopped short of the tuned LR more often than past it, so a 10-step
    window between NEAR and 0.1 (once the level that stopped the search) still raises."""
    run = SearchRun(lambda step, m: 0.8 if m < 2 else 0.07 if m < 3 else 0.02)
    made = run.until(90)
    assert search.NEAR < 0.07
    assert [p.after for p in made] == [2.0, 3.0]
    assert "raising it x1.5" in made[1].reason


def test_once_raised_the_search_ends_only_on_two_windows_in_range_in_a_row() -> None:
    """A window can read low in a phase where the loss changes shape although the LR is
    still far too low: once raised, the search ends only when the next window agrees."""

    def dip(step: int, multiplier: float) -> float:
        if multiplier < 2:
            return 0.8
        return 0.02 if step <= 30 or multiplier >= 3 else 0.4

    run = SearchRun(dip)
    made = run.until(90)
    # doubled at 15; steps 16-25 read in range, 26-35 do not (the dip is over): x1.5
    assert [(p.step, p.after) for p in made] == [(15, 2.0), (35, 3.0)]
    c = run.controller
    assert not c.searching and "as over the 10 steps before" in (c.search_note or "")
    # the run that stays in range ends where the second window does (16-25, 26-35)
    flat = SearchRun(lambda step, m: 0.8 if m < 2 else 0.02)
    assert [p.step for p in flat.until(90)] == [15]
    assert flat.controller.search_note is not None
    assert "steps 26-35" in flat.controller.search_note


def test_a_less_aligned_first_window_is_left_alone() -> None:
    """At the tuned LR the first window after the warm-up can read up to 0.19, and the
    first 20 steps 0.10 or less: with no raise before them, the search ends with no
    change."""
    run = SearchRun(lambda step, m: 0.2 if step <= 15 else 0.02)
    assert run.until(60) == []
    c = run.controller
    assert not c.searching and "with no change" in (c.search_note or "")


def test_a_first_window_under_the_doubling_level_gets_a_longer_look() -> None:
    """A few times too low: the first 5 steps read under ALIGNED, the first 20 above
    LOOK; the LR goes up x1.5 and the search goes on as after any raise."""
    run = SearchRun(lambda step, m: 0.25 if m < 2 else 0.02)
    made = run.until(90)
    assert [(p.step, p.after) for p in made] == [(30, 1.5), (40, 2.25)]
    assert "(alignment +0.25 over steps 11-30)" in made[0].reason
    assert not run.controller.searching


def test_a_first_window_in_range_then_overshooting_steps_halve_the_lr_after_the_look() -> None:
    """A few times too high, but the first 5 steps happen to read in range: the 20-step
    look reads under -0.05 and the LR is halved, as after a first window that low."""
    run = SearchRun(lambda step, m: 0.05 if step <= 15 or m < 1 else -0.15)
    made = run.until(60)
    assert [(p.step, p.after) for p in made] == [(30, 0.5)]
    assert "updates undo one another (alignment -0.10 over steps 11-30)" in made[0].reason
    assert not run.controller.searching


def test_a_look_whose_steps_undo_one_another_on_balance_halves_the_lr() -> None:
    """A few times too high, read near zero: the first 5 steps (-0.03) are not under
    OVERSHOOTING, but over the 20-step look a negative mean says the steps, on balance,
    undo one another, and the LR is halved; a look at +0.01 is in range."""
    run = SearchRun(lambda step, m: -0.03 if m >= 1 else 0.05)
    made = run.until(60)
    assert [(p.step, p.after) for p in made] == [(30, 0.5)]
    assert "(alignment -0.03 over steps 11-30)" in made[0].reason
    assert not run.controller.searching
    level = SearchRun(lambda step, m: 0.01)
    assert level.until(60) == []
    assert "with no change" in (level.controller.search_note or "")


def test_a_far_too_high_lr_is_halved_until_the_updates_stop_undoing_one_another() -> None:
    run = SearchRun(lambda step, m: -0.2 if m > 0.3 and step > WARMUP else 0.02)
    made = run.until(60)
    assert [p.rule for p in made] == [SEARCH_RULE, SEARCH_RULE]
    assert [p.step for p in made] == [15, 20] and [p.after for p in made] == [0.5, 0.25]
    assert "cutting it x0.5" in made[0].reason
    assert "after 2 cuts (LR x0.25 in all)" in (run.controller.search_note or "")


def test_a_warm_up_whose_last_steps_overshoot_cuts_the_lr_at_its_end() -> None:
    """Its last steps run at half the LR and more: overshooting there is the clearest sign
    of an LR far too high (after it, steps that large read as unrelated, near 0). The cut
    goes back to the run's start, past the kept states inside the ramp."""
    run = SearchRun(lambda step, m: -0.15 if step > 5 and m > 0.3 else 0.0)
    made = run.until(10, keep_states=True)
    assert [p.step for p in made] == [WARMUP] and made[0].knob == "rollback"
    assert made[0].after == search.WARMUP_CUT == 0.1  # a rollback may cut that deep
    assert run.controller.rollback_target() == 5  # a state inside the ramp is kept ...
    assert made[0].evidence["to_step"] == 0  # ... and passed over for the start
    assert "cutting it x0.1" in made[0].reason and "steps 6-10" in made[0].reason
    assert "from the kept state of step 0" in made[0].reason
    # with no kept state to go back to, a cut in place moves at most x0.5 per action
    in_place = SearchRun(lambda step, m: -0.15 if step > 5 and m > 0.3 else 0.0)
    made = in_place.until(40)
    assert [(p.step, p.after) for p in made] == [(WARMUP, 0.5), (15, 0.25)]
    assert not in_place.controller.searching  # the next window (16-20) is in range
    short = SearchRun(
        lambda step, m: -0.5, training=dataclasses.replace(TRAINING_W, warmup_steps=6)
    )
    # too short a warm-up to judge: the first window after it (steps 7-11) decides
    assert [p.step for p in short.until(12)] == [11]


def test_a_cut_goes_back_to_the_newest_good_kept_state() -> None:
    """An LR too high since the warm-up may have done damage a cut in place would keep:
    with kept states, the halving is a rollback to the newest one as good as the best."""
    run = SearchRun(lambda step, m: -0.2 if step > WARMUP else 0.1)
    made = run.until(15, keep_states=True)
    assert len(made) == 1 and made[0].rule == SEARCH_RULE
    assert made[0].knob == "rollback" and made[0].after == 0.5
    to_step = made[0].evidence["to_step"]
    assert isinstance(to_step, int) and to_step < 15
    assert f"from the kept state of step {to_step}" in made[0].reason


def test_a_raise_that_overshoots_is_taken_back_once_and_ends_the_search() -> None:
    """Raised into a LR whose updates undo one another: the last raise is undone in place
    (a step too far, not damage: no rollback), and the search is over."""
    up = SearchRun(lambda step, m: 0.8 if m < 2 else -0.5)
    made = up.until(60)
    assert [p.after for p in made] == [2.0, 1.0]
    assert [p.step for p in made] == [15, 25]  # the undo judged over 10 steps (16-25)
    assert made[1].knob == "lr_multiplier" and "taking the raise back" in made[1].reason
    c = up.controller
    assert not c.searching and "taken back" in (c.search_note or "")
    near = SearchRun(lambda step, m: 0.8 if m < 2 else 0.2 if m < 3 else -0.2)
    assert [p.after for p in near.until(80)] == [2.0, 3.0, 2.0]


def test_a_halving_never_turns_into_a_raise() -> None:
    """A window that asks for the other direction after a halving ends it: the rules
    take it from there."""
    down = SearchRun(lambda step, m: -0.5 if m > 0.6 else 0.8)
    assert [p.after for p in down.until(60)] == [0.5]
    assert "undershot" in (down.controller.search_note or "")
    steps = [(s, -0.5) for s in range(11, 16)]
    assert search.search_step(steps, 10, 0, search.MAX_SETTLES).action == "end"


def test_the_tuned_lr_is_left_alone() -> None:
    run = SearchRun(lambda step, m: 0.02)
    assert run.until(60) == []
    c = run.controller
    assert not c.searching and c.search_note is not None and "with no change" in c.search_note


def test_nothing_is_judged_inside_the_warm_up() -> None:
    """The warm-up's tiny LRs make every step aligned: those steps are not the LR's fault."""
    run = SearchRun(lambda step, m: 0.9 if step <= WARMUP else 0.0)
    assert run.until(40) == []


def test_the_search_stops_at_the_lr_bound() -> None:
    scu = dataclasses.replace(SCU, lr_bounds=[1e-5, 3e-3])  # 3x the start
    run = SearchRun(lambda step, m: 0.9, scu=scu)
    made = run.until(60)
    assert [p.after for p in made] == [2.0, 3.0]  # the second bounded by lr_bounds
    c = run.controller
    assert not c.searching and "at its bound" in (c.search_note or "")


def test_a_vetoed_doubling_ends_the_search() -> None:
    run = SearchRun(lambda step, m: 0.9, outcome=Outcome.VETOED)
    made = run.until(60)
    assert len(made) == 1 and run.knobs["lr_multiplier"] == 1.0
    assert not run.controller.searching and "vetoed" in (run.controller.search_note or "")


def test_an_unanswered_doubling_holds_the_search() -> None:
    run = SearchRun(lambda step, m: 0.9, outcome=None)
    made = run.until(60)
    assert len(made) == 1 and run.controller.searching
    c = run.controller
    c.record_outcome(made[0].id, Outcome.ACCEPTED, step=60)
    apply(run.knobs, made[0])
    more = run.until(80)  # the next window starts after the answer
    assert [p.step for p in more] == [65]


def test_a_rollback_ends_the_search() -> None:
    run = SearchRun(lambda step, m: 0.9)
    run.until(16)
    c = run.controller
    assert c.searching
    c.notify_rollback(10)
    assert not c.searching and "rollback" in (c.search_note or "")
    assert run.until(40) == []


def test_the_warm_up_s_cut_starts_the_search_again_from_the_run_s_start() -> None:
    """x0.1 from a LR whose ramp overshoots can go too far (3x the tuned LR leaves 0.3x):
    back at the start the search begins again, and raises a LR left too low as it would
    at any start; the search state survives a checkpoint in between."""

    def alignment(step: int, multiplier: float) -> float:
        if multiplier > 0.5:
            return -0.15 if step > 5 else 0.0  # far too high: the ramp overshoots
        return 0.8 if multiplier < 0.15 else 0.02  # too low: aligned; else in range

    run = SearchRun(alignment)
    cut = run.until(WARMUP, keep_states=True)
    assert [(p.knob, p.after, p.evidence["to_step"]) for p in cut] == [("rollback", 0.1, 0)]
    c = run.controller
    c.notify_rollback(0, keep=cut[0].id)
    assert c.searching and c.search_note is None  # not ended by its own rollback
    run.step = 0
    saved = json.loads(json.dumps(c.state()))
    run.controller = Controller(SCU, TRAINING_W)  # type: ignore[arg-type]
    run.controller.load_state(saved)
    made = run.until(60, keep_states=True)
    assert [(p.step, p.rule, p.after) for p in made][:1] == [(15, SEARCH_RULE, 0.2)]
    assert "doubling it" in made[0].reason
    assert not run.controller.searching
    assert "after 1 raise" in (run.controller.search_note or "")


def test_the_guard_going_back_while_the_warm_up_s_cut_waits_ends_the_search() -> None:
    """Only the warm-up's own cut, once answered, starts the search again: the guard's
    rollback to the start while the cut still awaits a person's answer ends it, as any
    other rollback does."""
    run = SearchRun(lambda step, m: -0.15 if step > 5 else 0.0, outcome=None)
    cut = run.until(WARMUP, keep_states=True)
    assert [p.evidence.get("warmup") for p in cut] == [1]
    run.controller.notify_rollback(0)
    assert not run.controller.searching
    assert "rollback" in (run.controller.search_note or "")


def test_switched_off_it_never_proposes() -> None:
    scu = dataclasses.replace(SCU, lr_search=False)
    run = SearchRun(lambda step, m: 0.9, scu=scu)
    assert run.until(60) == [] and not run.controller.searching
    assert run.controller.search_note is None


def test_the_search_state_survives_a_checkpoint() -> None:
    run = SearchRun(falls_with_lr)
    run.until(17)  # one doubling, searching on
    saved = json.loads(json.dumps(run.controller.state()))
    other = Controller(SCU, TRAINING_W)
    other.load_state(saved)
    assert other.searching
    run.until(60)
    saved = json.loads(json.dumps(run.controller.state()))
    other.load_state(saved)
    assert not other.searching
    # a state saved before the search existed does not start a search late
    del saved["search_ended_at"]
    fresh = Controller(SCU, TRAINING_W)
    fresh.load_state(saved)
    assert not fresh.searching


class Keep:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def test_a_real_run_at_a_tenth_of_the_demo_lr_doubles_it_after_the_warm_up(
    tmp_path: Path,
) -> None:
    from scu_tui.run import Run

    demo = load_preset("demo")
    s = demo.replace(
        {
            "training.learning_rate": demo.training.learning_rate / 10,
            "training.max_steps": 24,
            "training.warmup_steps": 10,
            "training.eval_every": 100,
            "training.save_every": 100,
            "training.samples": 0,
            "scu.mode": "auto",
        }
    )
    run = Run(s, output_dir=tmp_path / "run")
    keep = Keep()
    run.add_sink(keep)
    run.execute()
    proposals = [e for e in keep.events if isinstance(e, ProposalEvent)]
    assert proposals and proposals[0].rule == SEARCH_RULE and proposals[0].step == 15
    lrs = {e.step: e.lr for e in keep.events if isinstance(e, StepEvent)}
    assert lrs[16] == pytest.approx(2 * lrs[15])


def test_after_a_rollback_the_lr_is_halved_while_the_updates_overshoot() -> None:
    # the search ended at once (in range); a rollback to step 20 at 4x the start
    run = SearchRun(lambda step, m: -0.3 if m > 1.5 else 0.0)
    assert run.until(20) == []
    c = run.controller
    c.notify_rollback(20)
    run.knobs["lr_multiplier"], run.knobs["lr"] = 4.0, 4e-3
    made = run.until(60)
    assert [p.rule for p in made] == [SETTLE_RULE, SETTLE_RULE]
    assert [p.step for p in made] == [25, 30] and [p.after for p in made] == [2.0, 1.0]
    assert "after 2 halvings" in (c.search_note or "")
    c.notify_rollback(60)  # a second rollback with nothing to settle: no cut, no note
    c.search_note = None
    assert run.until(80) == [] and c.search_note is None


def test_after_a_rollback_a_halving_goes_back_before_damage_the_kept_states_show() -> None:
    """Steps that still overshoot after a rollback can do damage of their own, too little
    for the damage check (5 %) in small batches' noise. When a kept state after the newest
    one as good as the best has a worse level, the halving goes back to that state; with
    none worse it halves in place. The settling's own rollbacks keep its count (bounded)."""

    def settle(alignment: Alignment, loss: Callable[[int], float]) -> list[Proposal]:
        run = SearchRun(alignment, loss=loss)
        run.until(20, keep_states=True)
        c = run.controller
        c.notify_rollback(20)
        run.knobs["lr_multiplier"], run.knobs["lr"] = 8.0, 8e-3
        made: list[Proposal] = []
        while run.step < 80:
            new = run.until(run.step + 1, keep_states=True)
            made += new
            for p in new:
                if p.knob == "rollback":
                    c.notify_rollback(p.evidence["to_step"], keep=p.id)
                    run.step = p.evidence["to_step"]
        return made

    def falling(step: int) -> float:
        return 2.0 - 0.001 * step + 0.002 * NOISE[step]

    def climbing(step: int) -> float:  # up 1 % in 5 steps after the rollback's step
        return 2.0 - 0.001 * min(step, 20) + 0.004 * max(step - 20, 0) + 0.002 * NOISE[step]

    overshoots = lambda step, m: -0.3 if m > 1.5 else 0.0  # noqa: E731
    in_place = settle(overshoots, falling)
    assert [(p.rule, p.knob, p.after) for p in in_place] == [
        (SETTLE_RULE, "lr_multiplier", 4.0),
        (SETTLE_RULE, "lr_multiplier", 2.0),
        (SETTLE_RULE, "lr_multiplier", 1.0),
    ]
    back = settle(overshoots, climbing)
    assert [(p.rule, p.knob, p.after) for p in back] == [
        (SETTLE_RULE, "rollback", 4.0),
        (SETTLE_RULE, "rollback", 2.0),
        (SETTLE_RULE, "rollback", 1.0),
    ]
    assert [p.evidence["to_step"] for p in back] == [15, 15, 15]
    assert "from the kept state of step 15" in back[0].reason
    endless = settle(lambda step, m: -0.3, climbing)  # overshooting at any LR: bounded
    assert len(endless) == search.MAX_SETTLES


def test_after_a_rollback_into_the_warm_up_only_its_last_steps_judge_the_lr() -> None:
    """Gone back to step 0, the warm-up runs again: its first steps at a fraction of the
    LR read aligned and are not judged; its last 5 (half the LR and more) are, as the
    warm-up's own window is; and one window in range does not end the settling."""
    rerun = {"on": False}

    def alignment(step: int, m: float) -> float:
        if rerun["on"] and step <= 5:
            return 0.6
        return -0.3 if m > 1.5 else 0.0

    run = SearchRun(alignment)
    run.until(4)
    c = run.controller
    c.notify_rollback(0)
    rerun["on"], run.step = True, 0
    run.knobs["lr_multiplier"], run.knobs["lr"] = 4.0, 4e-3
    made = run.until(60)
    assert [(p.rule, p.step, p.after) for p in made] == [
        (SETTLE_RULE, 10, 2.0),
        (SETTLE_RULE, 15, 1.0),
    ]
    assert "steps 6-10" in made[0].reason
    assert search.settle_start(10, 0) == 5 and search.settle_start(10, 20) == 20
    assert search.settle_start(6, 0) == 6  # a warm-up too short to judge: after it
    # in range once, then overshooting again: still settling
    flicker = [(s, 0.0) for s in range(21, 26)] + [(s, -0.3) for s in range(26, 31)]
    assert search.settle_step(flicker, 20, 0).action == "cut_lr"
    assert search.settle_step(flicker[:5], 20, 0).action == "wait"


def test_the_settling_is_bounded_and_switched_off_with_the_search() -> None:
    run = SearchRun(lambda step, m: -0.3 if step > 20 else 0.0)
    run.until(20)
    run.controller.notify_rollback(20)
    assert len(run.until(80)) == search.MAX_SETTLES
    off = SearchRun(lambda step, m: -0.3, scu=dataclasses.replace(SCU, lr_search=False))
    off.until(20)
    off.controller.notify_rollback(20)
    assert off.until(80) == []


def test_a_spike_ends_the_search_s_raises_not_its_cuts() -> None:
    """A spike is evidence against raising the LR, not against cutting it: a search about
    to raise within the cool-down after a spike ends for good; a warm-up that overshoots
    with a spike in it is still cut."""
    low = SearchRun(falls_with_lr)
    low.until(12)
    low.controller.notify_spike(12)
    assert low.until(60) == []
    assert "a gradient spike was seen" in (low.controller.search_note or "")

    high = SearchRun(lambda step, m: -0.15 if step > 5 and m > 0.3 else 0.0)
    high.until(8, keep_states=True)
    high.controller.notify_spike(8)
    made = high.until(WARMUP, keep_states=True)
    assert [(p.step, p.knob) for p in made] == [(WARMUP, "rollback")]


def test_a_spike_inside_the_warm_up_does_not_end_the_search() -> None:
    """The warm-up's gradient norms ramp with its LR, and in small batches one batch's norm
    can be several times another's: a spike there blocks no raise of the search, which
    doubles as if there had been none. The same spike after the warm-up ends it."""
    calm = SearchRun(falls_with_lr).until(60)
    inside = SearchRun(falls_with_lr)
    inside.until(WARMUP - 2)
    inside.controller.notify_spike(WARMUP - 2)
    made = inside.until(60)
    assert [(p.step, p.after) for p in made] == [(p.step, p.after) for p in calm] != []
    after = SearchRun(falls_with_lr)
    after.until(WARMUP + 1)
    after.controller.notify_spike(WARMUP + 1)
    assert after.until(60) == []


def test_a_spike_after_the_warm_up_is_kept_in_the_saved_state() -> None:
    """Exact resume: a search resumed inside a spike's cool-down ends as the uninterrupted
    one does; a state saved before the field existed holds no spike, and raises."""
    run = SearchRun(falls_with_lr)
    run.until(12)
    run.controller.notify_spike(12)
    saved = json.loads(json.dumps(run.controller.state()))
    assert saved["spike_after_warmup"] == 12
    resumed = SearchRun(falls_with_lr)
    resumed.controller.load_state(saved)
    resumed.step = 12
    assert resumed.until(60) == run.until(60) == []
    del saved["spike_after_warmup"]
    older = SearchRun(falls_with_lr)
    older.controller.load_state(saved)
    older.step = 12
    assert [p.after for p in older.until(60)] == [2.0, 4.0]


def test_a_warm_up_that_blows_up_is_cut_though_its_alignment_reads_near_zero() -> None:
    """Steps so large they are unrelated read near 0 in alignment; their gradients blow up
    and the loss climbs. A spike in the warm-up's last window with its loss above the
    window before it cuts the LR, from a kept state; either alone does not."""
    norms = [1.5, 3.1, 4.7, 5.4, 4.7, 11.4, 92.7, 17.0, 21.4, 121.0]
    losses = [4.5, 6.5, 3.9, 3.8, 4.2, 5.8, 8.2, 9.6, 8.9, 7.5]
    history = [(s + 1, x, g, 0.0) for s, (x, g) in enumerate(zip(losses, norms, strict=True))]
    cut = search.warmup_blowup(history, WARMUP)
    assert cut.action == "cut_lr" and "gradient norm 121 at step 10" in cut.why
    calm = [(s, x, min(g, 6.0), a) for s, x, g, a in history]  # the loss climbs, no spike
    assert search.warmup_blowup(calm, WARMUP).action == "wait"
    falling = [(s, 9.0 - 0.5 * s, g, a) for s, _, g, a in history]  # spikes, the loss falls
    assert search.warmup_blowup(falling, WARMUP).action == "wait"
    assert search.warmup_blowup(history[:8], WARMUP).action == "wait"  # too few steps
    # the demo on Schedule-Free at its LR: one batch's norm twice the others and the
    # loss up by batch noise (3 %), while the steps point the same way (0.8): a LR too low
    sf_norms = [1.84, 2.05, 2.24, 1.71, 2.47, 1.84, 2.24, 4.21, 2.01, 2.34]
    sf_losses = [6.09, 5.81, 6.17, 5.83, 6.29, 5.08, 5.36, 6.87, 6.44, 6.26]
    sf = [(s + 1, x, g, 0.8) for s, (x, g) in enumerate(zip(sf_losses, sf_norms, strict=True))]
    assert search.warmup_blowup(sf, WARMUP).action == "wait"
    unaligned = [(s, x, g, 0.0) for s, x, g, _ in sf]  # not aligned: still batch noise
    assert search.warmup_blowup(unaligned, WARMUP).action == "wait"
    aligned = [(s, x, g, 0.8) for s, x, g, _ in history]  # blown up, yet pointing one way
    assert search.warmup_blowup(aligned, WARMUP).action == "wait"

    c = Controller(SCU, TRAINING_W)  # type: ignore[arg-type]
    current = knobs()
    made = []
    for step, loss, norm, _ in history:
        if c.snapshot_due(step - 1):
            c.snapshot_taken(step - 1)
        c.observe(step, loss, norm, current["lr"], False, 0.0)  # alignment: unrelated steps
        p = c.check_search(step, current)
        if p is not None:
            made.append(p)
    assert [(p.step, p.knob, p.after) for p in made] == [(WARMUP, "rollback", search.WARMUP_CUT)]
    assert "the warm-up blew up" in made[0].reason and "alignment" not in made[0].evidence
    assert made[0].evidence["to_step"] == 0  # the run's start, not the state at step 5
