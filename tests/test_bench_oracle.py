"""The controller benchmark's arithmetic against the oracle, on made-up results: the
oracle is the lowest seed-mean final val loss of any arm at any LR, gaps are relative to
it, an LR-free arm stands for the whole grid, and the verdict reads the test tasks."""

from __future__ import annotations

import math

import pytest

from bench.controller.analysis import Result, analyse, oracle_gap
from bench.controller.report import oracle_headline, targets_verdict


def result(task: str, arm: str, factor: float, seed: int, final: float) -> Result:
    return Result(
        task=task,
        arm=arm,
        factor=factor,
        seed=seed,
        status="completed",
        initial=5.0,
        final=final,
        floor=0.0,
        evals=[(0, 5.0), (100, final)],
        rollbacks=0,
        actions={},
        rules={},
        lr_changes=0,
        seconds=1.0,
    )


#: final val loss by (arm, factor), per seed (two seeds)
FINALS = {
    ("constant", 1.0): (1.00, 1.02),
    ("constant", 10.0): (2.00, 2.20),
    ("scu", 1.0): (1.01, 1.01),
    ("scu", 10.0): (1.04, 1.06),
    ("prodigy", 1.0): (1.20, 1.30),  # LR-free: ran once, at x1
}


def made_up(task: str = "sql") -> list[Result]:
    return [
        result(task, arm, factor, seed, value)
        for (arm, factor), values in FINALS.items()
        for seed, value in enumerate(values)
    ]


def test_oracle_is_the_lowest_seed_mean_of_any_arm_at_any_lr() -> None:
    a = analyse(made_up(), {"sql": "val loss"}, {"sql": "test"})
    value, arm, factor = a.oracle("sql")
    assert (arm, factor) == ("constant", 1.0)
    assert value == pytest.approx(1.01)  # mean of 1.00 and 1.02; the S-SCU's 1.01 ties it
    # constant at x10: mean 2.10 -> (2.10 - 1.01) / 1.01
    assert a.gap("sql", 10.0, "constant") == pytest.approx(1.09 / 1.01)
    assert a.worst_gap("sql", "scu") == (pytest.approx(0.04 / 1.01), 10.0)
    assert a.mean_gap("sql", "scu") == pytest.approx((0.0 + 0.04 / 1.01) / 2)
    # at x10 the best judged arm is the S-SCU itself: its gap to the best arm is zero
    assert a.gap_to_best_arm("sql", 10.0, "scu") == pytest.approx(0.0)
    assert a.gap_to_best_arm("sql", 10.0, "constant") == pytest.approx(1.05 / 1.05)


def test_an_lr_free_arm_stands_for_every_lr_and_its_runs_count_once() -> None:
    a = analyse(made_up(), {"sql": "val loss"}, {"sql": "test"})
    assert a.gap("sql", 10.0, "prodigy") == a.gap("sql", 1.0, "prodigy")
    assert a.gap("sql", 1.0, "prodigy") == pytest.approx((1.25 - 1.01) / 1.01)
    assert len(a.runs("prodigy")) == 2  # two seeds, not two seeds x two LRs


def test_a_diverged_run_counts_no_better_than_where_it_started() -> None:
    results = made_up()
    results[2] = result("sql", "constant", 10.0, 0, math.nan)  # non-finite: scores 5.0
    a = analyse(results, {"sql": "val loss"}, {"sql": "test"})
    assert a.cell("sql", 10.0, "constant").val_mean == pytest.approx((5.0 + 2.2) / 2)
    assert a.divergences("constant") == 1


def test_the_verdict_reads_the_test_tasks_and_names_the_worst_cell() -> None:
    results = made_up("sql") + [
        result("json", r.arm, r.factor, r.seed, 9.0 if r.arm == "scu" else r.final)
        for r in made_up("json")
    ]
    a = analyse(results, {"sql": "val loss", "json": "val loss"}, {"sql": "test"})
    assert a.tasks_of("test") == ["sql"] and a.tasks_of("tuning") == ["json"]
    lines, ok = targets_verdict(a)
    text = "\n".join(lines)
    # the S-SCU's terrible json runs are on a tuning task: the verdict does not read them
    assert "within 5 % of the task's oracle: **yes**" in text
    assert "sql +4.0 % at x10" in text
    assert "json" not in text.split("cost under 2 %")[0]
    # the optimizers a run lacks are named as not run, not silently passed
    assert "not run: warmup+cosine, plateau, placebo, Schedule-Free AdamW" in text
    assert not ok or "**no**" not in text
    table = "\n".join(oracle_headline(a, ["sql"]))
    assert "+4.0 % (x10) / +2.0 %" in table  # the S-SCU: worst cell, mean gap


def test_gap_arithmetic() -> None:
    assert oracle_gap(1.05, 1.0) == pytest.approx(0.05)
    assert oracle_gap(1.0, 1.0) == 0.0


def test_the_plan_runs_an_lr_free_arm_once_and_variants_on_their_split_only() -> None:
    from bench.controller.running import plan

    runs = plan(
        {"json": "tuning", "sql": "test"},
        [0.1, 1.0, 10.0],
        [0, 1],
        ["constant", "scu", "prodigy", "scu_cf10", "scu_sf"],
    )
    # constant and scu at 3 LRs, prodigy at x1 only; cf10 on the test task, scu_sf on tuning
    assert runs == {"json": 2 * (3 + 3 + 1 + 3), "sql": 2 * (3 + 3 + 1 + 3)}
    only_test = plan({"json": "tuning"}, [1.0], [0], ["scu_cf10"])
    assert only_test == {"json": 0}


def test_every_arm_gives_settings_the_product_accepts() -> None:
    from bench.controller.arms import ARM_SPECS, arm_settings
    from bench.controller.tasks import Task
    from scu_tui.presets import load_preset

    task = Task("t", "", 1e-3, "", "val loss", load_preset("demo"))
    for arm in ARM_SPECS:
        for factor in (0.1, 10.0):
            s = arm_settings(task, arm, factor, seed=0)  # raises on a value out of range
            assert s.scu.enabled == ARM_SPECS[arm].scu
    prodigy = arm_settings(task, "prodigy", 10.0, seed=0)
    assert prodigy.training.optimizer == "prodigy"
    assert prodigy.training.learning_rate == 1.0  # its own LR, whatever the grid's factor
    assert arm_settings(task, "scu_cf10", 1.0, 0).scu.control_frequency == 10


def test_a_trace_writes_each_step_and_what_the_controller_did() -> None:
    """`--trace` writes a line a step (alignment, loss, LR) and one for each rollback,
    message and analysis, in the order the run emitted them."""
    import dataclasses

    from helpers import step_event

    from bench.controller.running import Tracer
    from scu_tui.protocol import AnalysisEvent, MessageEvent, MessageLevel, RollbackEvent

    lines: list[str] = []
    tracer = Tracer(lines.append)
    tracer.emit(dataclasses.replace(step_event(9, loss=2.5), alignment=-0.125))
    tracer.emit(RollbackEvent(10, to_step=5, reason="damage"))
    tracer.emit(MessageEvent(6, level=MessageLevel.INFO, text="search over"))
    tracer.emit(
        AnalysisEvent(
            20, diagnosis="unstable", why="2 gradient spikes; not yet", period=20, window=40,
            nonfinite=0, trend={}, gradients={}, wavelet={}, validation={},
        )
    )
    assert lines[0].startswith("step     9  alignment -0.125  loss 2.5000")
    assert "lr 0.001" in lines[0]
    assert lines[1:] == [
        "  rollback at 10 to step 5",
        "  message at 6: search over",
        "  analysis at 20: unstable: 2 gradient spikes; not yet",
    ]


def test_the_lowest_collapse_ratio_reads_the_first_branch_the_detector_judges() -> None:
    """Gradients at a tenth of their start from step 6 while the loss holds: the ratio the
    detector would judge is 0.1; a rollback before its first full window leaves nothing
    judged (nan), and steps after the start's span do not count."""
    from helpers import step_event

    from bench.controller.running import lowest_collapse_ratio
    from scu_tui.control.divergence import START_SPAN
    from scu_tui.protocol import RollbackEvent

    def norm(step: int) -> float:
        return 2.0 if step <= 5 else 0.2

    steps = [step_event(s, loss=4.0, grad=norm(s)) for s in range(1, 61)]
    assert lowest_collapse_ratio(steps) == pytest.approx(0.1)
    rolled = [*steps[:12], RollbackEvent(12, to_step=0, reason="test"), *steps]
    assert math.isnan(lowest_collapse_ratio(rolled))
    late = [step_event(s, loss=4.0, grad=2.0 if s <= START_SPAN else 0.01) for s in range(1, 99)]
    assert lowest_collapse_ratio(late) == pytest.approx(1.0)
