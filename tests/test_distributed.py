"""Data-parallel training on two ranks (mlx.launch, ring backend over loopback).

Each test starts real ``scu-tui`` processes through ``mlx.launch``; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import read_events, scu, step_losses

from scu_tui.protocol import Command, CommandKind, Decider, Knob, RunFile
from scu_tui.remote.attach import RemoteRun

LAUNCH = shutil.which("mlx.launch") or str(Path(sys.executable).with_name("mlx.launch"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(LAUNCH).exists(), reason="mlx.launch is not installed"),
]

#: Losses of the same steps on one and on two ranks. The two sum the same per-token terms
#: in another order (two halves, then all_sum) in float32: observed differences are ~1e-6
#: relative; Adam's normalised updates can grow a rounding difference over steps, so
#: 1e-3 leaves room while a real fault (an unweighted mean, a missing slice, a rank on
#: other weights) moves the loss by percent from the first step on.
LOSS_RTOL = 1e-3
#: Bounds for waiting on real training processes: on a two-core machine under a load of 15
#: (other jobs), two ranks took two minutes to start and 5-10 s per step.
START_TIMEOUT = 600.0
DEMO = ("--headless", "--set", "lora.dropout=0.0", "--set", "scu.enabled=false")


def port(offset: int) -> str:
    """Ports above 20000, apart per test and per process (parallel test runs)."""
    return str(20000 + (os.getpid() % 1000) * 40 + 8 * offset)


def launch(
    offset: int, trace: Path, *args: str, timeout_env: str = ""
) -> subprocess.Popen[str]:
    env = {**os.environ, "SCU_TUI_RANK_TRACE": str(trace)}
    if timeout_env:
        env["SCU_TUI_RANK_TIMEOUT"] = timeout_env
    trace.mkdir(parents=True, exist_ok=True)
    cmd = [LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", port(offset), "--"]
    return subprocess.Popen(
        [*cmd, sys.executable, "-m", "scu_tui", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = START_TIMEOUT) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mlx.launch did not end within {timeout} s:\n{out[-3000:]}")
    return out


def trace_lines(trace: Path, rank: int) -> list[dict[str, Any]]:
    path = trace / f"rank-{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_two_ranks_follow_the_one_rank_trajectory(tmp_path: Path) -> None:
    settings = (*DEMO, "--max-steps", "16", "--set", "training.eval_every=8")
    one = tmp_path / "one"
    assert scu(*settings, "--output-dir", str(one)).returncode == 0
    two = tmp_path / "two"
    proc = launch(0, tmp_path / "trace", *settings, "--output-dir", str(two))
    out = finish(proc)
    single, double = step_losses(one), step_losses(two)
    assert sorted(double) == list(range(1, 17)), out[-2000:]
    for step, loss in single.items():
        assert double[step] == pytest.approx(loss, rel=LOSS_RTOL), step
    # both ranks saw the same (globally reduced) loss at every step
    ranks = [trace_lines(tmp_path / "trace", r) for r in (0, 1)]
    assert [line["loss"] for line in ranks[0]] == [line["loss"] for line in ranks[1]]
    summary = [json.loads((d / RunFile.SUMMARY).read_text()) for d in (one, two)]
    assert summary[1]["world_size"] == 2 and summary[0]["world_size"] == 1
    assert summary[1]["last_val_loss"] == pytest.approx(summary[0]["last_val_loss"], rel=0.01)
    start = next(e for e in read_events(two) if e["type"] == "start")
    assert start["world_size"] == 2


def test_a_batch_that_does_not_divide_is_refused(tmp_path: Path) -> None:
    proc = launch(
        1, tmp_path / "trace", *DEMO, "--set", "training.batch_size=3",
        "--output-dir", str(tmp_path / "run"),
    )
    out = finish(proc)
    assert "scu-tui: error: training.batch_size = 3 does not divide by the 2 ranks" in out
    assert "Traceback" not in out
    assert not (tmp_path / "run").exists()


def test_attach_pauses_and_resumes_both_ranks_and_an_accepted_proposal_reaches_both(
    tmp_path: Path,
) -> None:
    run_dir, trace = tmp_path / "run", tmp_path / "trace"
    # a tenth of the demo's LR: the start-up search proposes a doubling right after the
    # warm-up (step 15), where at the tuned LR the first proposal may be hundreds of steps
    # away, too far for a loaded machine at several seconds a step
    args = ("--headless", "--set", "lora.dropout=0.0", "--mode", "ask", "--max-steps", "100000",
            "--set", "training.learning_rate=0.0001")  # fmt: skip
    proc = launch(2, trace, *args, "--set", "scu.proposal_ttl=100000", "--output-dir", str(run_dir))
    try:
        wait_until(lambda: len(trace_lines(trace, 1)) >= 3, START_TIMEOUT, "three steps")
        wait_until(lambda: (run_dir / RunFile.CONTROL).exists(), 30, "the control socket")
        remote = RemoteRun(run_dir)
        assert remote.live
        remote.submit(Command(CommandKind.PAUSE, by=Decider.USER))
        wait_until(
            lambda: any(e["type"] == "pause" for e in read_events(run_dir)), 60, "the pause"
        )
        counts = [len(trace_lines(trace, r)) for r in (0, 1)]
        time.sleep(3)  # nothing to await: a paused run is one that does not move
        assert [len(trace_lines(trace, r)) for r in (0, 1)] == counts
        remote.submit(Command(CommandKind.RESUME, by=Decider.USER))
        wait_until(
            lambda: all(len(trace_lines(trace, r)) >= counts[r] + 3 for r in (0, 1)),
            60,
            "steps after the resume",
        )

        def knob_proposal() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in read_events(run_dir)
                    if e["type"] == "proposal" and e["knob"] in {k.value for k in Knob}
                ),
                None,
            )

        wait_until(lambda: knob_proposal() is not None, START_TIMEOUT, "a proposal")
        proposal = knob_proposal()
        assert proposal is not None
        remote.submit(Command(CommandKind.ACCEPT, value=proposal["id"], by=Decider.USER))
        wait_until(
            lambda: any(e["type"] == "knob" for e in read_events(run_dir)), 60, "the change"
        )
        changed = next(e for e in read_events(run_dir) if e["type"] == "knob")
        assert changed["knob"] == proposal["knob"]
        wait_until(
            lambda: all(len(trace_lines(trace, r)) > changed["step"] + 1 for r in (0, 1)),
            60,
            "steps after the change",
        )
        for rank in (0, 1):  # asserted from each rank's own numbers
            lines = trace_lines(trace, rank)
            assert lines[changed["step"]][proposal["knob"]] == pytest.approx(changed["after"])
            assert lines[changed["step"] - 1][proposal["knob"]] == pytest.approx(
                changed["before"]
            )
        remote.submit(Command(CommandKind.STOP, by=Decider.USER))
        out = finish(proc, 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = [e for e in read_events(run_dir) if e["type"] == "done"]
    assert done and done[-1]["status"] == "stopped", out[-2000:]
    steps = [len(trace_lines(trace, r)) for r in (0, 1)]
    assert steps[0] == steps[1]  # both ranks stopped at the same step


def test_a_killed_rank_ends_the_job_and_the_checkpoint_resumes(tmp_path: Path) -> None:
    run_dir, trace = tmp_path / "run", tmp_path / "trace"
    proc = launch(
        3, trace, *DEMO, "--max-steps", "100000", "--set", "training.save_every=2",
        "--output-dir", str(run_dir), timeout_env="20",
    )
    try:
        wait_until(lambda: len(trace_lines(trace, 1)) >= 5, START_TIMEOUT, "five steps")
        os.kill(trace_lines(trace, 1)[-1]["pid"], signal.SIGKILL)
        killed = time.monotonic()
        out = finish(proc, 90)
        ended = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert ended < 60, out[-2000:]
    done = [e for e in read_events(run_dir) if e["type"] == "done"]
    assert done and done[-1]["status"] == "failed", out[-2000:]
    saved = [e["step"] for e in read_events(run_dir) if e["type"] == "checkpoint"]
    assert saved and max(saved) >= 4
    target = max(saved) + 2
    result = scu("--headless", "--resume", str(run_dir), "--max-steps", str(target))
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / RunFile.SUMMARY).read_text())
    assert summary["status"] == "completed" and summary["steps"] == target


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is the answer
    return state != "Z"


@pytest.mark.parametrize(
    ("sig", "offset"), [(signal.SIGINT, 4), (signal.SIGHUP, 5)], ids=["ctrl-c", "hangup"]
)
def test_a_signal_to_the_launchers_group_stops_every_rank_with_a_checkpoint(
    tmp_path: Path, sig: signal.Signals, offset: int
) -> None:
    """Ctrl-C at a terminal (SIGINT) or closing it (SIGHUP) signals the foreground process
    group: ``mlx.launch`` and every rank. ``mlx.launch`` dies of it (at once on SIGHUP,
    after the ranks on SIGINT); rank 0 stops after its step with a checkpoint and tells
    the others, even with its output pipe gone."""
    run_dir, trace = tmp_path / "run", tmp_path / "trace"
    proc = launch(
        offset, trace, *DEMO, "--max-steps", "100000", "--output-dir", str(run_dir),
        timeout_env="60",
    )
    pids: list[int] = []
    try:
        wait_until(lambda: len(trace_lines(trace, 1)) >= 3, START_TIMEOUT, "three steps")
        pids = [trace_lines(trace, rank)[0]["pid"] for rank in (0, 1)]
        os.killpg(proc.pid, sig)  # the launcher's session: the group a terminal signals
        sent = time.monotonic()
        out = finish(proc, 120)
        wait_until(lambda: not any(running(pid) for pid in pids), 120, "both ranks to end")
        ended = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of this test's group is left
        proc.wait()
    assert ended < 90, out[-2000:]  # one step and a checkpoint, on a busy machine
    done = [e for e in read_events(run_dir) if e["type"] == "done"]
    assert done and done[-1]["status"] == "interrupted", out[-2000:]
    stop = done[-1]["step"]
    saved = [e for e in read_events(run_dir) if e["type"] == "checkpoint"]
    assert saved[-1]["reason"] == "signal" and saved[-1]["step"] == stop >= 3
    assert (run_dir / RunFile.CHECKPOINTS / f"step-{stop:06d}").is_dir()
    assert [len(trace_lines(trace, rank)) for rank in (0, 1)] == [stop, stop]
    # no traceback from scu-tui's code (mlx.launch prints its own on SIGINT)
    assert re.search(r'File "[^"]*/scu_tui/[a-z_/]+\.py"', out) is None, out[-3000:]
    result = scu("--headless", "--resume", str(run_dir), "--max-steps", str(stop + 2))
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / RunFile.SUMMARY).read_text())
    assert summary["status"] == "completed" and summary["steps"] == stop + 2
