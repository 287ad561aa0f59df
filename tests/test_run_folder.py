"""A run folder has one writer, survives a full disk and a kill, and refuses bad places.

Each test injects the fault a user meets (a second writer, a full disk, a killed run's
leftovers, a damaged checkpoint, a quick double Ctrl-C) and asserts what the user sees
and what is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from helpers import read_events, scu, scu_popen, step_losses, wait_for_line

from scu_tui.presets import load_preset
from scu_tui.protocol import CommandKind
from scu_tui.run import Run
from scu_tui.runfolder import RunFolder
from scu_tui.runlock import RunLock, is_locked
from scu_tui.training.checkpoint import STATE_FILE, list_checkpoints

DEMO = ["--headless", "--preset", "demo", "--set", "scu.enabled=false"]


def long_run(out: Path, *extra: str) -> subprocess.Popen[str]:
    """A headless demo run that goes on until it is stopped; returns once it trains."""
    proc = scu_popen(
        *DEMO, "--max-steps", "100000", "--output-dir", str(out), *extra,
    )  # fmt: skip
    wait_for_line(proc, "step ")  # the first report, after report_every steps
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.communicate(timeout=60)


# --- one writer -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_live_run_refuses_a_second_writer_and_a_killed_one_does_not(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = long_run(out, "--set", "training.save_every=5")
    try:
        assert is_locked(out)
        for attempt in (
            scu("--headless", "--resume", str(out)),
            scu(*DEMO, "--output-dir", str(out)),
        ):
            assert attempt.returncode == 2
            line = attempt.stderr.strip()
            assert line.count("\n") == 0 and "Traceback" not in line
            assert f"process {proc.pid}" in line and f"scu-tui attach {out}" in line
        wait_for_line(proc, "save ")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert not is_locked(out)  # the kernel let go of it with the process
    # what the killed writer was in the middle of: a staging folder and a temporary file
    (out / "checkpoints" / ".step-000099.tmp-4242").mkdir()
    (out / ".adapters.safetensors.tmp-4242").write_bytes(b"half")
    newest = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    resumed = scu("--headless", "--resume", str(out), "--max-steps", str(newest + 5))
    assert resumed.returncode == 0, resumed.stderr
    assert not (out / "checkpoints" / ".step-000099.tmp-4242").exists()
    assert not (out / ".adapters.safetensors.tmp-4242").exists()
    assert read_events(out)[-1]["status"] == "completed"


def test_the_lock_is_exclusive_within_a_process_too(tmp_path: Path) -> None:
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    with pytest.raises(Exception, match="a live run is writing there"):
        second.acquire()
    first.release()
    second.acquire()
    assert is_locked(tmp_path)
    second.release()
    assert not is_locked(tmp_path)


# --- where a run may write -------------------------------------------------------------


@pytest.mark.slow
def test_an_output_dir_that_cannot_hold_a_run_is_refused_before_loading(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for target, words in (
        (a_file, "is a file, not a directory"),
        (a_file / "run", f"{a_file} is a file, not a directory"),
    ):
        result = scu(*DEMO, "--output-dir", str(target))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("scu-tui: error: --output-dir") and words in result.stderr
        assert "Traceback" not in result.stderr
    assert a_file.read_text() == "not a folder"


@contextlib.contextmanager
def tmpfs(where: Path, *options: str) -> Iterator[Path]:
    """A small tmpfs at ``where`` (needs root on Linux; the test is skipped elsewhere)."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
def test_a_read_only_output_dir_is_refused_before_loading(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro", "size=1m") as ro:
        result = scu(*DEMO, "--output-dir", str(ro / "run"))
    assert result.returncode == 2
    assert f"cannot write in {tmp_path / 'ro'}: a read-only file system" in result.stderr


@pytest.mark.slow
def test_a_full_disk_fails_in_one_line_and_the_run_resumes_once_there_is_room(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "size=3m") as disk:
        out = disk / "run"
        args = ["--max-steps", "400", "--set", "training.save_every=10"]
        args += ["--set", "training.keep_checkpoints=0", "--set", "training.eval_every=1000"]
        full = scu(*DEMO, *args, "--output-dir", str(out))
        assert full.returncode == 1, full.stdout + full.stderr
        assert "Traceback" not in full.stdout + full.stderr
        errors = [line for line in full.stdout.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0]
        assert errors[0].startswith(f"error: cannot write {out}")
        leftovers = [p for p in out.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
        assert not leftovers
        assert not (out / "control.json").exists()
        checkpoints = sorted((out / "checkpoints").glob("step-*"))
        assert checkpoints, "the disk should hold at least one checkpoint"
        newest = int(checkpoints[-1].name.split("-")[1])
        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        resumed = scu("--headless", "--resume", str(out), "--max-steps", str(newest + 10))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resuming demo" in resumed.stdout
        assert max(step_losses(out)) == newest + 10
        assert read_events(out)[-1]["status"] == "completed"


# --- checkpoints ---------------------------------------------------------------------------


class Killed(BaseException):
    """The process dies here (as a kill -9 would: no handler runs after it)."""


def checkpoint_at(folder: RunFolder, step: int) -> Path:
    def save_state(tmp: Path) -> None:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step}), encoding="utf-8")

    return folder.save_checkpoint(step, save_state, {"fine_tune_type": "lora"})


def checkpoint_steps(out: Path) -> list[int]:
    return [step for step, _ in list_checkpoints(out)]


def test_a_checkpoint_removes_those_of_later_steps_after_it_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback went back to step 5 while steps 10 and 20 (the damage) were on disk: once
    step 5 is saved they go, and a kill while they go leaves step 5 and nothing later."""
    out = tmp_path / "run"
    folder = RunFolder(out, resuming=False)
    for step in (0, 10, 20):
        checkpoint_at(folder, step)

    def killed(*_: Any, **__: Any) -> None:
        raise Killed

    monkeypatch.setattr(shutil, "rmtree", killed)  # dies at the first deletion
    with pytest.raises(Killed):
        checkpoint_at(folder, 5)
    monkeypatch.undo()
    assert checkpoint_steps(out) == [0, 5]  # what --resume sees: the branch the run is on
    again = RunFolder(out, resuming=True)
    again.claim()  # the next writer clears what the killed one left
    try:
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
            "step-000000",
            "step-000005",
        ]
        checkpoint_at(again, 3)  # and a later rollback, without the kill
        assert checkpoint_steps(out) == [0, 3]
    finally:
        again.unlock()


def test_a_kill_between_the_renames_of_a_replaced_checkpoint_puts_the_old_one_back(
    tmp_path: Path,
) -> None:
    """Rewriting step 5 moves the old step 5 aside before the new one moves in: killed in
    between, the next writer puts the old one back, whole (it may be the only one)."""
    out = tmp_path / "run"
    root = out / "checkpoints"
    checkpoint_at(RunFolder(out, resuming=False), 5)
    os.replace(root / "step-000005", root / ".step-000005.old-4242")
    (root / ".step-000005.tmp-4242").mkdir()  # the new one, maybe half written
    checkpoint_at(RunFolder(out, resuming=False), 7)
    (root / ".step-000007.old-4242").mkdir()  # aside, and its replacement moved in
    assert checkpoint_steps(out) == [7]
    folder = RunFolder(out, resuming=True)
    folder.claim()
    try:
        assert sorted(p.name for p in root.iterdir()) == ["step-000005", "step-000007"]
        saved = json.loads((root / "step-000005" / STATE_FILE).read_text(encoding="utf-8"))
        assert saved == {"step": 5}
    finally:
        folder.unlock()


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = scu(*DEMO, "--max-steps", "20", "--set", "training.save_every=10",
                "--output-dir", str(out))  # fmt: skip
    assert first.returncode == 0, first.stderr
    damaged = out / "checkpoints" / "step-000020" / "optimizer.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a torn write or a bad disk block
    resumed = scu("--headless", "--resume", str(out), "--max-steps", "25")
    assert resumed.returncode == 0, resumed.stderr
    assert "warning: checkpoint step-000020" in resumed.stdout
    assert "damaged; using step-000010" in resumed.stdout
    steps = [e["step"] for e in read_events(out) if e["type"] == "step"]
    assert steps[20:] == list(range(11, 26))  # trained again from step 10


@pytest.mark.slow
def test_a_quick_second_sigint_does_not_lose_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = long_run(out)
    assert proc.stderr is not None
    proc.send_signal(signal.SIGINT)
    assert "stopping after this step with a checkpoint" in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)  # a double Ctrl-C: the second lands while stopping
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    events = read_events(out)
    assert events[-1]["type"] == "done" and events[-1]["status"] == "interrupted"
    saved = [e for e in events if e["type"] == "checkpoint" and e["reason"] == "signal"]
    assert saved and (Path(saved[0]["path"]) / "trainer_state.json").is_file()
    summary = json.loads((out / "scu_training_summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == saved[0]["step"]


def test_a_stop_request_between_any_two_lines_of_taking_a_command_does_not_deadlock(
    tmp_path: Path,
) -> None:
    """A signal handler runs between two bytecodes of the thread it interrupts, which may
    be inside the command queue's get(). The stop request it makes must not wait on a lock
    that this very thread holds (a headless run stuck forever after Ctrl-C)."""
    run = Run(load_preset("demo"), output_dir=tmp_path / "run")
    landed: list[str] = []

    def between_lines(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":  # what a handler does, at every point one could land
            landed.append(frame.f_code.co_name)
            run.request_stop()
        return between_lines

    taken: list[Any] = []

    def take_commands() -> None:  # what the training loop does between two steps
        sys.settrace(between_lines)
        try:
            taken.append(run.commands.get(block=False))
        finally:
            sys.settrace(None)

    run.request_stop()
    worker = threading.Thread(target=take_commands, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), f"deadlocked inside the queue after {landed}"
    assert taken and taken[0].kind == CommandKind.STOP


def test_a_checkpoint_the_settings_cannot_continue_is_not_passed_over(tmp_path: Path) -> None:
    """Another optimizer (or model) is not damage: the error is said once, for the newest
    checkpoint, instead of once per checkpoint before "no intact checkpoint"."""
    from scu_tui.errors import ResumeMismatch
    from scu_tui.runfolder import RunFolder
    from scu_tui.training.checkpoint import STATE_FILE

    run = tmp_path / "run"
    for step in (10, 20, 30):
        folder = run / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / STATE_FILE).write_text("{}", encoding="utf-8")
    tried: list[str] = []

    def load(folder: Path) -> None:
        tried.append(folder.name)
        raise ResumeMismatch(f"checkpoint {folder}: trained with another optimizer")

    with pytest.raises(ResumeMismatch, match="step-000030"):
        RunFolder(run, resuming=True).load_newest_intact(load)
    assert tried == ["step-000030"]
