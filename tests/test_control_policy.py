"""The S-SCU policy and controller on synthetic runs: every rule, and every safety rail."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from scu_tui.config import ScuSettings, TrainingSettings
from scu_tui.control.controller import Controller
from scu_tui.control.policy import (
    MAX_LR_UP,
    WEIGHT_DECAY_START,
    Diagnosis,
    Knobs,
    Proposal,
    bounded_value,
    moves,
)
from scu_tui.protocol import ProposalEvent

SCU = ScuSettings(
    control_frequency=20,
    window=64,
    levels=3,
    cooldown=40,
    proposal_ttl=40,
    lr_bounds=[1e-5, 1e-2],
    target_loss_improvement=0.01,
)
TRAINING = TrainingSettings(learning_rate=1e-3, warmup_steps=0, eval_every=20)
NOISE: list[float] = np.random.default_rng(0).standard_normal(4000).tolist()
NOISE2: list[float] = np.random.default_rng(1).standard_normal(4000).tolist()
UNIFORM: list[float] = np.random.default_rng(2).uniform(0.1, 1.9, 4000).tolist()
LOG_UNIFORM: list[float] = np.exp(np.random.default_rng(3).uniform(-2.5, 2.5, 4000)).tolist()

Curve = Callable[[int], float]


def knobs(lr: float = 1e-3, **values: float) -> dict[str, float]:
    base = {"lr": lr, "lr_multiplier": 1.0, "weight_decay": 0.0, "dropout": 0.0}
    return base | {"accumulation": 1.0} | values


def apply(current: dict[str, float], p: Proposal) -> None:
    if p.knob in ("lr_multiplier", "rollback"):
        base = current["lr"] / current["lr_multiplier"]
        current["lr_multiplier"], current["lr"] = p.after, base * p.after
    else:
        current[p.knob] = p.after


class Run:
    """A synthetic run: feeds a controller step by step and answers its proposals."""

    def __init__(
        self,
        loss: Curve,
        grad: Curve,
        *,
        scu: ScuSettings = SCU,
        training: TrainingSettings = TRAINING,
        outcome: str | None = "applied",
        current: dict[str, float] | None = None,
        val: Curve | None = None,
        dropout: bool = True,
    ) -> None:
        self.controller = Controller(scu, training, dropout=dropout)
        self.controller.snapshot_taken(0)  # as a run keeps its start
        self.loss, self.grad, self.val = loss, grad, val
        self.outcome = outcome
        self.knobs = current or knobs()
        self.step = 0
        self.proposals: list[Proposal] = []

    def until(self, last: int) -> list[Proposal]:
        """Steps up to ``last``; the proposals made on the way."""
        made: list[Proposal] = []
        for step in range(self.step + 1, last + 1):
            self.controller.observe(step, self.loss(step), self.grad(step), self.knobs["lr"])
            if self.val is not None and step % TRAINING.eval_every == 0:
                self.controller.observe_eval(step, self.val(step))
            # as in a run: the divergence guard on every step, then the control check
            p = self.controller.check_divergence(step, self.knobs) or self.controller.decide(
                step, self.knobs
            )
            if p is not None:
                made.append(p)
                self.answer(p)
            if self.controller.snapshot_due(step):
                self.controller.snapshot_taken(step)
        self.step = last
        self.proposals += made
        return made

    def answer(self, p: Proposal) -> None:
        if self.outcome is None:
            return
        self.controller.record_outcome(p.id, self.outcome)
        if self.outcome in ("applied", "accepted"):
            apply(self.knobs, p)


# --- synthetic curves (index by step) --------------------------------------------------------


def slow_loss(step: int) -> float:
    return 2.0 - 0.0002 * step + 0.001 * NOISE[step]


def decaying_loss(step: int) -> float:
    return 1.0 + 2.0 * math.exp(-step / 200) + 0.01 * NOISE[step]


def flat_noisy_loss(step: int) -> float:
    return 2.0 + 0.05 * NOISE[step]


def rising_loss(step: int) -> float:
    """A slow, steady rise: significant on the trend, but under the damage detector's 5 %
    above the best kept state by step 60 (a larger rise is rolled back, see below)."""
    return 2.0 + 0.0015 * step + 0.01 * NOISE[step]


def steady_grad(step: int) -> float:
    return 1.0 + 0.1 * NOISE2[step]


def near_constant_grad(step: int) -> float:
    return 1.0 + 0.001 * NOISE2[step]


def noisy_grad(step: int) -> float:
    return UNIFORM[step]


def erratic_grad(step: int) -> float:
    """Norms spread over two orders of magnitude: robust variability far above 0.8."""
    return LOG_UNIFORM[step]


def spiky_grad(step: int) -> float:
    return 10.0 if step % 20 in (5, 12) else steady_grad(step)


def rules(ps: list[Proposal]) -> list[str]:
    return [p.rule for p in ps]


# --- every rule is reachable and moves its knob the right way --------------------------------


def test_slow_improvement_with_validation_still_falling_raises_lr() -> None:
    val = lambda step: 2.1 - 0.0002 * step  # noqa: E731  (follows the training loss)
    p = Run(slow_loss, steady_grad, val=val).until(60)[0]
    assert (p.rule, p.diagnosis) == ("raise_lr_slow", "slow")


def test_slow_improvement_with_flat_validation_leaves_the_lr_alone() -> None:
    """A converged run: a faster descent of the training loss would only fit noise."""
    val = lambda step: 2.1 + 0.0001 * NOISE2[step]  # noqa: E731
    run = Run(slow_loss, steady_grad, val=val)
    assert all(p.rule != "raise_lr_slow" for p in run.until(200))
    assert run.controller.last_diagnosis is not None


def test_slow_improvement_raises_lr() -> None:
    run = Run(slow_loss, steady_grad)
    p = run.until(60)[0]
    assert (p.rule, p.knob, p.diagnosis) == ("raise_lr_slow", "lr_multiplier", "slow")
    assert p.after == pytest.approx(1.5 * p.before)
    assert p.reason == "Slow loss improvement with stable gradients - increasing LR"
    assert p.action == "lr x1.5"
    assert p.evidence["relative_improvement"] < SCU.target_loss_improvement


def test_no_lr_raise_the_run_has_no_room_to_judge_but_a_cut_still_comes() -> None:
    """The slow run above, ending 30 steps after the analysis that raised its LR: too
    soon for an effect check and a period at the LR it leaves, so the LR stays, and the
    analysis says why. A cut near the end settles the run, and still comes."""
    short = dataclasses.replace(TRAINING, max_steps=90)
    run = Run(slow_loss, steady_grad, training=short)
    assert run.until(60) == []
    analysis = run.controller.last_analysis
    assert analysis is not None and analysis.diagnosis == "slow"
    assert "could not be judged and undone before the run's end (90)" in analysis.why
    assert run.until(90) == []
    room = dataclasses.replace(short, max_steps=100)
    assert rules(Run(slow_loss, steady_grad, training=room).until(60)) == ["raise_lr_slow"]
    assert rules(Run(rising_loss, steady_grad, training=short).until(60)) == ["cut_lr_degrading"]


def test_degrading_loss_cuts_lr() -> None:
    p = Run(rising_loss, steady_grad).until(60)[0]
    assert (p.rule, p.diagnosis) == ("cut_lr_degrading", "degrading")
    assert p.after == pytest.approx(0.5 * p.before)
    assert p.reason.startswith("Loss degradation with")


def test_a_rise_past_the_damage_margin_goes_back_to_the_best_state_before_it() -> None:
    """The same rise, faster: more than 5 % above the best kept state (the start, which
    the newest states alone would have dropped by then) is damage, rolled back there."""
    p = Run(lambda step: 2.0 + 0.003 * step + 0.01 * NOISE[step], steady_grad).until(60)[0]
    assert (p.rule, p.diagnosis) == ("rollback", "diverging")
    assert p.evidence["to_step"] <= 10 and p.after == pytest.approx(0.25 * p.before)


def test_gradient_spikes_cut_lr() -> None:
    p = Run(flat_noisy_loss, spiky_grad).until(60)[0]
    assert (p.rule, p.diagnosis, p.knob) == ("cut_lr_unstable", "unstable", "lr_multiplier")
    assert p.after < p.before
    assert p.evidence["spikes"] >= 2


def test_noisy_plateau_reduces_lr() -> None:
    p = Run(flat_noisy_loss, steady_grad).until(100)[0]
    assert (p.rule, p.diagnosis) == ("reduce_lr_plateau", "plateau")
    assert p.after == pytest.approx(0.8 * p.before)


def test_too_stable_plateau_explores_with_a_small_lr_raise() -> None:
    p = Run(flat_noisy_loss, near_constant_grad).until(100)[0]
    assert (p.rule, p.diagnosis) == ("explore_too_stable", "too_stable")
    assert p.after == pytest.approx(1.2 * p.before)
    assert p.reason == "Training too stable - encouraging exploration"


def test_overfitting_raises_weight_decay_then_dropout() -> None:
    rising_val = lambda step: 1.5 + 0.002 * step  # noqa: E731
    p = Run(decaying_loss, steady_grad, val=rising_val).until(60)[0]
    assert (p.rule, p.diagnosis, p.knob) == ("raise_weight_decay", "overfitting", "weight_decay")
    assert (p.before, p.after) == (0.0, WEIGHT_DECAY_START)

    at_max = knobs(weight_decay=SCU.weight_decay_bounds[1])
    p = Run(decaying_loss, steady_grad, val=rising_val, current=at_max).until(60)[0]
    assert (p.rule, p.knob, p.before, p.after) == ("raise_dropout", "dropout", 0.0, 0.05)

    both = knobs(weight_decay=SCU.weight_decay_bounds[1], dropout=SCU.dropout_bounds[1])
    assert Run(decaying_loss, steady_grad, val=rising_val, current=both).until(100) == []


def test_overfitting_without_dropout_to_move_proposes_no_dropout() -> None:
    """Full fine-tuning has no dropout: with weight decay at its limit nothing is left."""
    rising_val = lambda step: 1.5 + 0.002 * step  # noqa: E731
    at_max = knobs(weight_decay=SCU.weight_decay_bounds[1])
    run = Run(decaying_loss, steady_grad, val=rising_val, current=at_max, dropout=False)
    assert [p.knob for p in run.until(200)] == []


@pytest.mark.parametrize("rule", ["raise_weight_decay", "raise_dropout"])
def test_a_regularisation_move_without_an_effect_retires_its_rule_for_the_run(rule: str) -> None:
    """Validation keeps rising at the same pace after the move: its effect cannot be told
    from the run's noise, so the rule never moves its knob again, and a resumed run
    remembers that."""
    rising_val = lambda step: 1.5 + 0.002 * step  # noqa: E731
    at_max = SCU.weight_decay_bounds[1]
    current = knobs() if rule == "raise_weight_decay" else knobs(weight_decay=at_max)
    run = Run(decaying_loss, steady_grad, val=rising_val, current=current)
    made = [p for p in run.until(1500) if p.rule == rule]
    assert len(made) == 1, [p.step for p in made]
    why = run.controller.last_analysis.why if run.controller.last_analysis else ""
    assert "not used again in this run" in why
    resumed = Controller(SCU, TRAINING)
    resumed.load_state(json.loads(json.dumps(run.controller.state())))
    assert resumed._rule_blocked(rule, 1500) is not None


def test_a_regularisation_move_that_helped_may_repeat() -> None:
    """A flat start (the validation noise is learnt), then overfitting; once weight decay
    comes in, validation falls by far more than its own noise: that move helped."""
    seen: dict[str, int] = {}

    def loss(step: int) -> float:
        return 2.0 + 0.001 * NOISE[step] if step <= 100 else 2.0 - 0.002 * (step - 100)

    def val(step: int) -> float:
        if step <= 100:
            return 1.5 + 0.002 * NOISE[step]
        if run.knobs["weight_decay"] == 0:
            return 1.5 + 0.002 * (step - 100)
        since = seen.setdefault("since", step - 20)
        return 1.5 + 0.002 * (since - 100) - 0.01 * (step - since)

    run = Run(loss, steady_grad, val=val)
    (first,) = [p for p in run.until(200) if p.rule == "raise_weight_decay"]
    run.until(400)
    record = run.controller.book.get(first.id)
    assert record is not None and record.effect["verdict"] == "helped"
    assert run.controller._rule_blocked("raise_weight_decay", 400) is None


def test_noisy_gradients_while_improving_raise_accumulation() -> None:
    p = Run(decaying_loss, noisy_grad).until(60)[0]
    assert (p.rule, p.diagnosis, p.knob) == ("raise_accumulation", "noisy", "accumulation")
    assert (p.before, p.after) == (1.0, 2.0)
    assert p.action == "accumulation 1 -> 2"


def test_non_finite_loss_proposes_a_rollback_on_its_own_step() -> None:
    loss = lambda step: math.nan if step == 35 else slow_loss(step)  # noqa: E731
    run = Run(loss, steady_grad, outcome=None)
    p = run.until(40)[0]
    assert (p.rule, p.knob, p.diagnosis, p.step) == ("rollback", "rollback", "diverging", 35)
    assert p.after == pytest.approx(0.5 * p.before)
    # the state at 30 may hold the cause (its window reaches the non-finite step): 25
    assert p.evidence["to_step"] == 25
    assert p.reason == (
        "Divergence (non-finite loss or gradients) - rolling back to step 25 with a lower LR"
    )
    assert p.action == "rollback, lr x0.5"


def test_non_finite_values_in_a_period_also_diagnose_divergence() -> None:
    """Had nobody rolled back (observe mode), the control check sees them too."""
    loss = lambda step: math.nan if step == 35 else slow_loss(step)  # noqa: E731
    run = Run(loss, steady_grad, outcome="observed")
    made = run.until(40)
    assert [(p.rule, p.step) for p in made] == [("rollback", 35), ("rollback", 40)]
    assert made[1].reason == "Non-finite loss or gradients - rolling back with lower LR"


def test_loss_damage_rolls_back_on_its_own_step_to_a_state_before_it() -> None:
    loss = lambda step: 10.0 if step > 55 else slow_loss(step)  # noqa: E731
    (p,) = [p for p in Run(loss, steady_grad).until(70) if p.knob == "rollback"]
    # the median of the newest 10 losses is past the kept levels on 5 steps in a row
    assert 60 < p.step <= 66
    assert p.rule == "rollback" and "loss damaged" in p.reason and p.after == 0.25 * p.before
    assert 40 <= p.evidence["to_step"] <= 50  # the newest kept state before the damage


def test_one_spike_in_the_loss_is_not_a_blow_up() -> None:
    loss = lambda step: 10.0 if step in (45, 47) else slow_loss(step)  # noqa: E731
    assert all(p.knob != "rollback" for p in Run(loss, steady_grad).until(100))


def test_erratic_gradients_alone_do_not_roll_back_a_falling_loss() -> None:
    """Gradient statistics differ in scale from task to task: only the loss judges damage."""
    assert all(p.knob != "rollback" for p in Run(decaying_loss, erratic_grad).until(200))


def test_noisy_gradients_do_not_roll_back() -> None:
    assert all(p.knob != "rollback" for p in Run(decaying_loss, noisy_grad).until(200))


def test_improving_run_is_left_alone() -> None:
    run = Run(decaying_loss, steady_grad)
    assert run.until(200) == []
    assert run.controller.last_diagnosis is Diagnosis.IMPROVING


# --- safety ---------------------------------------------------------------------------------


def test_bounds_clamp_the_lr() -> None:
    p = Run(slow_loss, steady_grad, current=knobs(lr=8e-3)).until(60)[0]
    assert p.after == pytest.approx(1.25)  # 8e-3 x 1.25 = the 1e-2 upper bound
    assert p.action == "lr x1.25"


def test_a_move_clamped_to_nothing_is_skipped() -> None:
    assert Run(slow_loss, steady_grad, current=knobs(lr=1e-2)).until(200) == []


def test_one_action_moves_a_knob_by_at_most_its_limit() -> None:
    k = Knobs(lr=1e-4, lr_multiplier=1.0)
    assert bounded_value("lr_multiplier", 1.0, 10.0, k, SCU) == MAX_LR_UP
    assert bounded_value("accumulation", 16.0, 100.0, k, SCU) == 32.0
    assert bounded_value("accumulation", 1.0, 3.3, k, SCU) == 2.0
    assert bounded_value("weight_decay", 0.0, 1.0, k, SCU) == WEIGHT_DECAY_START
    assert bounded_value("dropout", 0.0, 0.9, k, SCU) == pytest.approx(0.1)
    # already below the lr floor: a cut would become a raise, which moves() refuses
    low = Knobs(lr=1e-6, lr_multiplier=1.0)
    assert not moves(1.0, bounded_value("lr_multiplier", 1.0, 0.5, low, SCU), -1)


def test_cooldown_blocks_a_second_move_of_the_same_knob() -> None:
    steps = [p.step for p in Run(slow_loss, steady_grad).until(200)]
    assert steps[:2] == [60, 100]  # 100 = 60 + cooldown 40
    long = dataclasses.replace(SCU, cooldown=100)
    steps = [p.step for p in Run(slow_loss, steady_grad, scu=long).until(200)]
    assert steps == [60, 160]


def test_hysteresis_needs_the_same_diagnosis_on_two_checks() -> None:
    run = Run(slow_loss, steady_grad)
    assert run.until(40) == []  # first check with enough history
    assert run.controller.last_diagnosis is Diagnosis.SLOW
    assert [p.step for p in run.until(60)] == [60]


def test_no_lr_raise_right_after_a_spike() -> None:
    run = Run(slow_loss, steady_grad)
    run.until(30)
    run.controller.notify_spike(30)
    assert run.until(200)[0].step == 80  # spike + cooldown 40 = 70


def test_detected_spike_blocks_lr_raises() -> None:
    grad = lambda step: 10.0 if step == 35 else steady_grad(step)  # noqa: E731
    assert Run(slow_loss, grad).until(200)[0].step == 80


def test_no_lr_raise_right_after_a_rollback() -> None:
    run = Run(slow_loss, steady_grad)
    run.until(50)
    run.controller.notify_rollback(50)
    assert run.until(200)[0].step >= 90


def test_rollback_forgets_the_abandoned_steps() -> None:
    run = Run(slow_loss, steady_grad, outcome=None)
    run.until(60)
    run.controller.notify_rollback(40)
    assert run.controller.signals().window == 40
    run.controller.observe(41, 1.9, 1.0, 1e-3)  # and a resumed step continues from there
    assert run.controller.signals().window == 41


def test_damage_left_alone_is_reported_once_per_fresh_window() -> None:
    """Nobody rolled back (observe mode): the same damage is judged again only on losses
    after the report, not on every step."""
    loss = lambda step: 10.0 if step > 55 else slow_loss(step)  # noqa: E731
    made = [p for p in Run(loss, steady_grad, outcome=None).until(90) if p.rule == "rollback"]
    steps = [p.step for p in made]
    assert steps and all(b - a >= 10 for a, b in itertools.pairwise(steps))


def test_effect_check_reverts_a_harmful_action() -> None:
    bumped = {"from": 10**9}
    # +4 %: clearly worse for the effect check, under the damage margin of a rollback
    loss = lambda step: slow_loss(step) + (0.08 if step > bumped["from"] else 0.0)  # noqa: E731
    run = Run(loss, steady_grad)
    (raised,) = run.until(60)
    bumped["from"] = 60
    revert = run.until(80)[0]
    assert (revert.rule, revert.knob, revert.step) == ("revert_raise_lr_slow", "lr_multiplier", 80)
    assert (revert.before, revert.after) == (raised.after, raised.before)
    assert revert.reason.startswith("Loss rose from") and revert.reason.endswith("- reverting")
    assert revert.evidence["reverts"] == raised.id
    later = [p.step for p in run.until(400) if p.rule == "raise_lr_slow"]
    assert not later or later[0] >= 80 + 2 * SCU.cooldown  # the rule backed off


def test_a_harmless_action_is_kept() -> None:
    run = Run(slow_loss, steady_grad)
    assert not any(p.rule.startswith("revert_") for p in run.until(300))


def test_vetoed_rule_backs_off() -> None:
    expired = [p.step for p in Run(slow_loss, steady_grad, outcome="expired").until(200)]
    assert expired[:2] == [60, 100]  # an expired rule may repeat after a cooldown
    vetoed = [p.step for p in Run(slow_loss, steady_grad, outcome="vetoed").until(400)]
    assert vetoed[:3] == [60, 140, 300]  # blocked 2 cooldowns, then twice as long


def test_observed_proposals_do_not_start_a_cooldown() -> None:
    run = Run(slow_loss, steady_grad, outcome="observed")
    run.until(60)
    assert run.knobs["lr_multiplier"] == 1.0
    assert run.until(200)[0].step == 100


def test_warmup_and_non_control_steps_never_propose() -> None:
    warm = TrainingSettings(learning_rate=1e-3, warmup_steps=100, eval_every=20)
    assert Run(slow_loss, steady_grad, training=warm).until(200)[0].step == 140
    run = Run(slow_loss, steady_grad, outcome=None)
    run.until(59)
    controller = run.controller
    controller.observe(60, slow_loss(60), 1.0, 1e-3)
    assert controller.decide(61, knobs()) is None
    assert controller.decide(60, knobs()) is not None
    assert controller.decide(60, knobs()) is None  # one proposal per period


def test_outcomes_are_checked() -> None:
    controller = Controller(SCU, TRAINING)
    controller.record_outcome("p9999", "applied")  # unknown ids are ignored
    with pytest.raises(ValueError, match="unknown outcome"):
        controller.record_outcome("p0001", "maybe")


# --- integration ----------------------------------------------------------------------------


def test_proposal_is_a_proposal_event() -> None:
    p = Run(slow_loss, steady_grad).until(60)[0]
    event = ProposalEvent(**p.to_dict())
    assert event.id == p.id == "p0001" and event.diagnosis == "slow"
    json.loads(event.to_json())


def test_state_round_trip_resumes_exactly() -> None:
    grad = lambda step: 10.0 if step == 130 else steady_grad(step)  # noqa: E731
    val = lambda step: 1.5 + 0.001 * step  # noqa: E731
    original = Run(slow_loss, grad, val=val, outcome="applied")
    original.until(30)
    saved = json.loads(json.dumps(original.controller.state(), allow_nan=False))
    resumed = Run(slow_loss, grad, val=val, outcome="applied", current=dict(original.knobs))
    resumed.controller.load_state(saved)
    resumed.step = original.step
    expected = [p.to_dict() for p in original.until(300)]
    assert expected and [p.to_dict() for p in resumed.until(300)] == expected
    assert resumed.controller.state() == original.controller.state()


HEAVY = ("mlx", "mlx_lm", "textual", "datasets", "transformers")


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        # the decision path is pure: numbers in, proposals out
        ("scu_tui.control", HEAVY),
        ("scu_tui.control.controller", HEAVY),
        ("scu_tui.control.steering", HEAVY),
        # the protocol is the bottom layer: nothing of the product above it
        ("scu_tui.protocol", (*HEAVY, "scu_tui.config", "scu_tui.control", "scu_tui.run")),
        # the run imports no MLX until it trains, and never the control socket above it
        ("scu_tui.run", (*HEAVY, "scu_tui.remote", "scu_tui.app")),
        # a run's folder and settings are read (attach, replay) without the engine or the run
        ("scu_tui.runfolder", (*HEAVY, "scu_tui.run", "scu_tui.control", "scu_tui.remote")),
    ],
)
@pytest.mark.slow
def test_imports_point_down(module: str, forbidden: tuple[str, ...]) -> None:
    code = (
        f"import sys, {module}; "
        f"bad = sorted(m for m in sys.modules for f in {forbidden!r} "
        "if m == f or m.startswith(f + '.')); "
        "print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, f"importing {module} imports {done.stdout.strip()}{done.stderr}"
