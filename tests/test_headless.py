"""Real headless runs of the CLI on the embedded demo, as a user would start them."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
from helpers import read_events, scu, scu_popen, step_losses, wait_for_line

from scu_tui.control import trial

pytestmark = pytest.mark.slow

RUN_FILES = (
    "adapters.safetensors",
    "adapter_config.json",
    "events.jsonl",
    "scu_training_metrics.json",
    "scu_training_summary.json",
    "simple_training_config.json",
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    result = scu(
        "--headless",
        "--preset",
        "demo",
        "--max-steps",
        "60",
        "--output-dir",
        str(out),
        "--set",
        "training.eval_every=20",
        "--set",
        "training.save_every=30",
    )
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_headless_run_writes_every_file(demo_run: tuple[Path, str]) -> None:
    out, stdout = demo_run
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "step-000030" / "trainer_state.json").is_file()
    assert (out / "checkpoints" / "step-000060" / "optimizer.safetensors").is_file()
    assert (out / "best" / "adapters.safetensors").is_file()
    assert "step     60/60" in stdout and "eval" in stdout
    summary = json.loads((out / "scu_training_summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 60
    assert summary["world_size"] == 1 and summary["tokens"] > 0
    # the S-SCU's own time is measured, and is a small part of the training time
    assert 0 < summary["scu_seconds"] < summary["train_seconds"]
    config = json.loads((out / "simple_training_config.json").read_text())
    assert config["settings"]["training"]["max_steps"] == 60
    assert isinstance(json.loads((out / "scu_training_metrics.json").read_text()), list)


def test_events_are_well_formed_and_validation_loss_falls(demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    events = read_events(out)
    for e in events:
        assert {"type", "step", "time"} <= set(e)
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 61))
    for key in ("loss", "grad_norm", "lr", "tokens", "tokens_per_second", "peak_memory_gb"):
        assert all(isinstance(e[key], int | float) for e in steps), key
    evals = [e["val_loss"] for e in events if e["type"] == "eval"]
    assert len(evals) == 4  # steps 0, 20, 40, 60
    assert evals[-1] < evals[0] * 0.9
    assert events[-1]["type"] == "done" and events[-1]["status"] == "completed"


def test_adapters_load_and_generate_with_mlx_lm(demo_run: tuple[Path, str]) -> None:
    from mlx_lm import generate, load

    from scu_tui.demo import MODEL_DIR

    out, _ = demo_run
    model, tokenizer = load(str(MODEL_DIR), adapter_path=str(out))[:2]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False
    )
    text = generate(model, tokenizer, prompt=prompt, max_tokens=8)
    assert isinstance(text, str)
    best_model, _ = load(str(MODEL_DIR), adapter_path=str(out / "best"))[:2]
    assert best_model is not None


def test_kill_9_then_resume_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    common = [
        "--headless",
        "--preset",
        "demo",
        "--max-steps",
        "24",
        "--set",
        "training.save_every=8",
        "--set",
        "training.eval_every=100",
        "--set",
        "scu.enabled=false",
    ]
    reference = tmp_path / "reference"
    assert scu(*common, "--output-dir", str(reference)).returncode == 0

    killed = tmp_path / "killed"
    proc = scu_popen(*common, "--output-dir", str(killed))
    wait_for_line(proc, "save      8")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = scu("--headless", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr

    want, got = step_losses(reference), step_losses(killed)
    assert sorted(got) == list(range(1, 25))
    # Same seed, same data order, restored optimizer and RNG state: on the CPU backend the
    # arithmetic is the same sequence of operations, so the match is exact up to float32
    # rounding noise; 1e-5 relative leaves room for a BLAS that reorders sums by thread.
    for step in range(1, 25):
        assert got[step] == pytest.approx(want[step], rel=1e-5), step


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = scu_popen(
        "--headless",
        "--preset",
        "demo",
        "--max-steps",
        "500",
        "--output-dir",
        str(out),
        "--set",
        "training.report_every=1",
    )
    wait_for_line(proc, "step      3/")
    proc.send_signal(signal.SIGINT)
    _stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    events = read_events(out)
    assert events[-1]["type"] == "done" and events[-1]["status"] == "interrupted"
    saved = [e for e in events if e["type"] == "checkpoint" and e["reason"] == "signal"]
    assert saved and Path(saved[0]["path"]).is_dir()
    assert math.isfinite(step_losses(out)[saved[0]["step"]])


def test_existing_run_dir_is_refused_and_resume_of_non_run_is_refused(
    demo_run: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = demo_run
    again = scu("--headless", "--preset", "demo", "--output-dir", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr
    not_a_run = scu("--headless", "--resume", str(tmp_path))
    assert not_a_run.returncode == 2 and "not a scu-tui run" in not_a_run.stderr


def test_replay_reproduces_the_proposals_of_an_observed_run(tmp_path: Path) -> None:
    """Whatever a hot observed run does on this machine's BLAS (should it blow up, the
    guard pauses it and it is interrupted), replay proposes exactly what it logged."""
    out = tmp_path / "run"
    hot = ["--set", "training.learning_rate=3e-2", "--set", "scu.lr_bounds=[1e-5, 1e-1]"]
    proc = scu_popen(
        "--headless", "--preset", "demo", "--max-steps", "80", "--mode", "observe",
        "--output-dir", str(out), *hot,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "training paused" in line:  # a blow-up in observe mode: nothing else will come
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) in (0, 130)
    proposed = [e for e in read_events(out) if e["type"] == "proposal"]
    replayed = scu("replay", str(out))
    assert replayed.returncode == 0, replayed.stderr
    lines = [line for line in replayed.stdout.splitlines() if line.startswith("SCU Step")]
    assert [int(line.split()[2].rstrip(":")) for line in lines] == [p["step"] for p in proposed]
    assert all(p["reason"] in line for p, line in zip(proposed, lines, strict=True))
    assert scu("replay", str(tmp_path)).returncode == 2


def test_the_shipped_demo_learns_and_the_scu_leaves_it_alone(tmp_path: Path) -> None:
    """The README's first command, as shipped: real learning at a tuned LR, which the
    S-SCU analyses every period and, with nothing to fix, leaves alone (demo-hot is where
    it acts: test_demo_hot.py)."""
    out = tmp_path / "run"
    result = scu("--headless", "--preset", "demo", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    events = read_events(out)
    evals = [e["val_loss"] for e in events if e["type"] == "eval"]
    assert evals[-1] < evals[0] / 5
    # at the warm-up's end the run compares its LR with half on the same batches (the LR
    # trial, 2 x 20 steps of the 800), and keeps its LR
    trials = [e for e in events if e["type"] == "message" and "LR trial:" in e["text"]]
    assert len(trials) == 1 and "the LR stays" in trials[0]["text"]
    analyses = [e for e in events if e["type"] == "analysis"]
    periods = (800 - 2 * trial.TRIAL_STEPS) // 20
    assert len(analyses) >= periods - 1 and all(a["why"] for a in analyses)
    assert not [e for e in events if e["type"] in ("proposal", "knob", "rollback")]
    assert "SCU Step" not in result.stdout
    assert events[-1]["type"] == "done" and events[-1]["status"] == "completed"
    # its replay sees the run the controller saw: the trial's second branch starting again
    # from the trial's first state is not damage
    replayed = scu("replay", str(out))
    assert replayed.returncode == 0 and "SCU Step" not in replayed.stdout
    assert "0 proposals on replay" in replayed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["schedule_free", "prodigy"])
def test_the_demo_trains_with_each_optimizer(tmp_path: Path, optimizer: str) -> None:
    """``training.optimizer`` from the command line: the run trains, with the S-SCU on, and
    its settings file says which optimizer it used."""
    out = tmp_path / "run"
    result = scu(
        "--headless",
        "--preset",
        "demo",
        "--max-steps",
        "40",
        "--set",
        f"training.optimizer={optimizer}",
        "--set",
        "training.compare_at_end=false",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    evals = [e["val_loss"] for e in read_events(out) if e["type"] == "eval"]
    assert len(evals) == 3 and evals[-1] < 0.8 * evals[0]
    steps = [e for e in read_events(out) if e["type"] == "step"]
    assert all(-1.0 <= e["alignment"] <= 1.0 for e in steps[1:])  # the S-SCU's signal
    config = json.loads((out / "simple_training_config.json").read_text(encoding="utf-8"))
    assert config["settings"]["training"]["optimizer"] == optimizer
