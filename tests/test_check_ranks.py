"""`scu-tui check --ranks N`: one rank against N over loopback, and what N machines give.

The arms are real runs (``python -m scu_tui`` and ``mlx.launch --backend ring``); every
wait is bounded by the arm's own limit.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from helpers import scu

from scu_tui.check import ranks
from scu_tui.check.ranks import (
    Arm,
    ArmFailed,
    Measured,
    RankReport,
    compare,
    expectation,
    lean_flags,
    run_arm,
)
from scu_tui.check.report import WIDTH, _rank_lines

needs_launcher = pytest.mark.skipif(
    ranks.ring_missing() != "", reason="mlx.launch or the ring backend is missing"
)
DEMO_GRADIENT_BYTES = 65_536 * 4  # the demo's LoRA parameters, float32


@needs_launcher
@pytest.mark.slow
def test_demo_check_with_two_ranks_reports_both_arms_and_what_two_machines_give() -> None:
    done = scu("check", "--preset", "demo", "--ranks", "2", "--json", timeout=900)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    report = data["ranks"]
    assert report["ranks"] == 2 and report["backend"] == "ring" and report["note"] is None
    one, two = report["arms"]
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert one["error"] is None and two["error"] is None, report
    assert one["tokens_per_second"] > 0 and two["tokens_per_second"] > 0
    assert report["ratio"] == pytest.approx(two["tokens_per_second"] / one["tokens_per_second"])
    # the one-rank arm is the run's own loop: the same order as the check's timed steps
    assert 0.1 < one["tokens_per_second"] / data["tokens_per_second"] < 10
    assert 1.0 < report["estimated_speedup_on_machines"] <= 2.0
    assert "no speed-up is expected" in report["expectation"]
    assert data["peak_memory_gb"] > 0  # the rest of the check is still there


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--ranks", "1"], "--ranks 1: expected a number of ranks >= 2"),
        (
            ["--ranks", "2", "--set", "training.batch_size=3"],
            "training.batch_size = 3 does not divide by the 2 ranks",
        ),
    ],
)
@pytest.mark.slow
def test_bad_ranks_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    done = scu("check", "--preset", "demo", *args, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scu-tui: error: ") and says in lines[0]
    assert done.stdout == ""


@needs_launcher
@pytest.mark.slow
def test_an_arm_past_its_limit_is_stopped_with_all_its_ranks(tmp_path: Path) -> None:
    folder = tmp_path / "arm"
    folder.mkdir()
    flags = ["--preset", "demo", *lean_flags(100_000)]
    with pytest.raises(ArmFailed, match="did not finish within 3 s"):
        run_arm(2, flags, folder, timeout=3)
    # no launcher, no rank left running: every one was sent SIGKILL, and a killed process
    # leaves the process table once the kernel has torn it down and it is reaped (on a
    # loaded machine not always before the next line runs), so allow that a few seconds
    deadline = time.monotonic() + 30
    while True:
        left = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True)
        if left.returncode == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left.returncode == 1, left.stdout


@needs_launcher
@pytest.mark.slow
def test_a_failed_rank_is_reported_although_mlx_launch_exits_0(tmp_path: Path) -> None:
    folder = tmp_path / "arm"
    folder.mkdir()
    flags = ["--preset", "demo", "--set", "training.batch_size=3", *lean_flags(20)]
    with pytest.raises(ArmFailed, match="does not divide by the 2 ranks"):
        run_arm(2, flags, folder, timeout=300)


@pytest.mark.slow
def test_without_mlx_launch_one_rank_runs_and_the_report_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ranks, "launcher", lambda: None)  # as on a machine without it
    flags = ["--preset", "demo", *lean_flags(ranks.WARMUP + 8)]
    report = compare(flags, 2, gradient_bytes=DEMO_GRADIENT_BYTES, timeout=300)
    assert [arm.ranks for arm in report.arms] == [1]
    measured = report.arms[0].measured
    assert measured is not None and measured.tokens_per_second > 0 and measured.steps == 7
    assert report.note == "mlx.launch is not installed (it comes with mlx): one rank only"
    assert report.ratio is None and report.speedup is not None
    text = "\n".join(_rank_lines(report))
    assert "mlx.launch is not installed" in text and "ratio" in text


def test_two_machines_nearly_double_a_long_step_and_lose_on_a_tiny_one() -> None:
    long_step, text = expectation(2, 1.0, 1_000_000)
    assert 1.99 < long_step < 2.0
    assert "at most 2.00x" in text and "no speed-up is expected" in text
    tiny_step, text = expectation(2, 0.001, 10_000_000)  # 8 ms of gradients per 1 ms step
    assert tiny_step < 0.2 and f"at most {tiny_step:.2f}x" in text
    four, _ = expectation(4, 1.0, 1_000_000)
    assert 3.9 < four < 4.0


def test_the_ranks_section_is_a_table_in_80_columns() -> None:
    report = RankReport(
        2,
        arms=[
            Arm(1, Measured(3061.4, 0.044, 30)),
            Arm(2, None, "did not finish within 300 s (stopped)"),
        ],
    )
    report.speedup, report.expectation = expectation(2, 0.044, DEMO_GRADIENT_BYTES)
    lines = _rank_lines(report)
    assert max(len(line) for line in lines) <= WIDTH
    assert "  ranks       tok/s    ratio" in lines
    assert "      1       3,061     1.00" in lines
    assert "      2           -        -" in lines
    assert "  2 rank(s): did not finish within 300 s (stopped)" in lines
    data = report.to_dict()
    assert data["ratio"] is None and data["arms"][1]["error"].startswith("did not finish")
    both = RankReport(2, arms=[Arm(1, Measured(3000, 0.04, 30)), Arm(2, Measured(750, 0.3, 30))])
    assert both.ratio == pytest.approx(0.25)
