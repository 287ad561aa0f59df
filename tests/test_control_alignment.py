"""The update-alignment rules and the controller's memory of effects, on synthetic runs."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from scu_tui.control.controller import REVERSAL_PERIODS, Controller
from scu_tui.control.policy import Diagnosis, Proposal
from scu_tui.control.signals import update_alignment
from scu_tui.protocol import Outcome
from tests.test_control_policy import (
    NOISE,
    SCU,
    TRAINING,
    apply,
    erratic_grad,
    knobs,
    steady_grad,
)

ALIGN_NOISE: list[float] = np.random.default_rng(5).standard_normal(4000).tolist()
Curve = Callable[[int], float]


class AlignedRun:
    """A synthetic run that also reports an alignment per step; answers ``applied``."""

    def __init__(
        self,
        loss: Curve,
        alignment: Curve,
        outcome: Outcome | None = Outcome.APPLIED,
        grad: Curve = steady_grad,
    ) -> None:
        self.controller = Controller(SCU, TRAINING)
        self.loss, self.alignment, self.outcome = loss, alignment, outcome
        self.grad = grad
        self.knobs = knobs()
        self.step = 0

    def until(self, last: int) -> list[Proposal]:
        made = []
        for step in range(self.step + 1, last + 1):
            c = self.controller
            loss, grad, lr = self.loss(step), self.grad(step), self.knobs["lr"]
            c.observe(step, loss, grad, lr, False, self.alignment(step))
            p = c.check_divergence(step, self.knobs) or c.decide(step, self.knobs)
            if p is not None:
                made.append(p)
                if self.outcome is not None:
                    c.record_outcome(p.id, self.outcome)
                    apply(self.knobs, p)
        self.step = last
        return made


def fast_loss(step: int) -> float:
    """Falls 5 % per period: "improving" to every rule that looks at the loss alone."""
    return 2.0 * math.exp(-step * 0.05 / 20) + 0.002 * NOISE[step]


def flat_loss(step: int) -> float:
    return 1.5 + 0.002 * NOISE[step]


def aligned(step: int) -> float:
    return 0.5 + 0.1 * ALIGN_NOISE[step]


def around_zero(step: int) -> float:
    return 0.1 * ALIGN_NOISE[step]


def overshooting(step: int) -> float:
    return -0.1 + 0.1 * ALIGN_NOISE[step]


def test_alignment_statistics() -> None:
    a = update_alignment(np.array([math.nan, 0.4, 0.6, 0.5, 0.5]), period=2)
    assert a.points == 4 and math.isclose(a.mean, 0.5) and math.isclose(a.recent_mean, 0.5)
    assert a.t > 10 and a.positive_share == 1.0
    assert update_alignment(np.array([math.nan]), period=2).points == 0


def test_an_improving_run_with_aligned_updates_gets_a_higher_lr() -> None:
    run = AlignedRun(fast_loss, aligned)  # alignment 0.5: far too low, the largest move
    made = run.until(60)
    assert [p.rule for p in made] == ["raise_lr_aligned"]
    assert made[0].diagnosis == Diagnosis.TOO_LOW_LR and made[0].after == 2.0
    assert made[0].evidence["alignment"] > 0.4
    mildly = AlignedRun(fast_loss, lambda step: 0.2 + 0.03 * ALIGN_NOISE[step]).until(60)
    assert [p.rule for p in mildly] == ["raise_lr_aligned"] and mildly[0].after == 1.5


def test_the_same_run_without_alignment_changes_nothing() -> None:
    assert AlignedRun(fast_loss, lambda step: math.nan).until(200) == []
    assert AlignedRun(fast_loss, around_zero).until(200) == []


def test_a_flat_loss_with_overshooting_updates_settles_with_a_lower_lr() -> None:
    made = AlignedRun(flat_loss, overshooting).until(60)
    assert [p.rule for p in made] == ["settle_lr_overshoot"]
    assert made[0].diagnosis == Diagnosis.STATIONARY and made[0].after < 1.0


def test_a_raised_lr_is_not_cut_back_within_the_reversal_span() -> None:
    """Aligned first (raise), then overshooting: the cut waits REVERSAL_PERIODS periods."""
    switch = 100
    run = AlignedRun(
        lambda s: fast_loss(s) if s <= switch else flat_loss(s),
        lambda s: aligned(s) if s <= switch else overshooting(s),
    )
    made = run.until(switch)
    assert made and made[-1].rule == "raise_lr_aligned"
    raised_at = made[-1].step
    lock_end = raised_at + REVERSAL_PERIODS * SCU.control_frequency
    made = run.until(lock_end - 1)
    assert [p.rule for p in made if p.after < p.before] == []
    why = run.controller.last_analysis
    assert why is not None and "not moved back before step" in why.why
    made = run.until(lock_end + 3 * SCU.control_frequency)
    assert "settle_lr_overshoot" in [p.rule for p in made]


def test_a_move_is_not_repeated_while_its_effect_is_judged() -> None:
    run = AlignedRun(fast_loss, aligned)
    first = run.until(60)
    assert [p.rule for p in first] == ["raise_lr_aligned"]
    record = run.controller.book.get(first[0].id)
    assert record is not None and record.check == "checking"
    # the effect needs EFFECT_MIN_POINTS losses; until then the rule may not act again
    run.until(61)
    assert record.check == "checking"


def test_a_move_without_measurable_effect_backs_its_rule_off() -> None:
    """A flat loss stays flat after the cut: verdict "flat", and the rule waits longer."""
    run = AlignedRun(flat_loss, overshooting)
    first = run.until(60)
    assert [p.rule for p in first] == ["settle_lr_overshoot"]
    run.until(100)
    record = run.controller.book.get(first[0].id)
    assert record is not None and record.effect is not None
    assert record.effect["verdict"] == "flat"
    made = run.until(140)
    assert "settle_lr_overshoot" not in [p.rule for p in made]
    assert run.controller.last_analysis is not None
    assert "backed off" in run.controller.last_analysis.why


def test_variable_gradients_with_steps_too_short_are_noise_not_a_lr_too_high() -> None:
    """Norms spread over two orders of magnitude on a flat loss read as unstable and cut the
    LR; with the updates still pointing along the momentum (the LR is too low) the same
    spread is the batches' noise, and the LR is not cut."""
    cut = AlignedRun(flat_loss, around_zero, grad=erratic_grad).until(60)
    assert cut and cut[0].rule == "cut_lr_unstable" and cut[0].after < cut[0].before
    kept = AlignedRun(flat_loss, aligned, grad=erratic_grad).until(60)
    assert all(p.knob != "lr_multiplier" or p.after > p.before for p in kept)
    assert "cut_lr_unstable" not in [p.rule for p in kept]
