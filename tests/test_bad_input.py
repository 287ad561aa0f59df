"""Bad input exits 2 with one line and no traceback; valid input is never refused.

Real subprocesses, as a user runs them: the exit code and stderr are what they see.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import read_events, scu

from scu_tui.demo import MODEL_DIR

QA = [(f"What is {a} plus {b}?", str(a + b)) for a in range(8) for b in range(5)]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``scu-tui: error: ...`` line of a run refused as bad input."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scu-tui: error: "), result.stderr
    return lines[0]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "training.learning_rate=nan"], "training.learning_rate = nan: must be finite"),
        (["--set", "lora.alpha=inf"], "lora.alpha = inf: must be finite and > 0"),
        (["--seed", "4294967296"], "training.seed = 4294967296: must be an integer from 0 to"),
        (["--seed", "-3"], "training.seed = -3: must be an integer from 0 to 4294967295"),
        (["--max-steps", "10" + "0" * 30], "training.max_steps = 1000"),
        (["--set", "name=../../outside"], 'name = "../../outside": must be a plain file name'),
        (["--set", "scu.lr_bounds=[1e-5]"], "scu.lr_bounds = [1e-05]: must be [low, high]"),
        (
            ["--set", "training.optimizer=sgd"],
            "training.optimizer = \"sgd\": must be one of 'adamw', 'schedule_free', 'prodigy'",
        ),
    ],
)
@pytest.mark.slow
def test_bad_settings_exit_2_in_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    out = tmp_path / "run"
    line = one_error_line(scu("--headless", *args, "--output-dir", str(out)))
    assert fragment in line
    assert not out.exists()


@pytest.mark.slow
def test_a_preset_whose_name_escapes_runs_is_refused_with_its_file_and_line(
    tmp_path: Path,
) -> None:
    preset = tmp_path / "evil.toml"
    preset.write_text('description = "x"\nname = "../../../tmp/x"\n', encoding="utf-8")
    line = one_error_line(scu("--headless", "--preset", str(preset)))
    assert f"{preset}:2: name = " in line and "must be a plain file name" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_output_dir_with_resume_must_be_the_run_itself(tmp_path: Path) -> None:
    run = tmp_path / "run"
    line = one_error_line(
        scu("--headless", "--resume", str(run), "--output-dir", str(tmp_path / "other"))
    )
    assert f"--output-dir {tmp_path / 'other'} with --resume {run}" in line
    same = scu("--headless", "--resume", str(run), "--output-dir", f"{run}/.")
    assert "no such directory" in one_error_line(same)  # got past the check: the same folder


@pytest.mark.slow
def test_an_output_dir_that_is_a_file_is_refused_before_loading(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "run"):
        line = one_error_line(scu("--headless", "--output-dir", str(out)))
        assert line.startswith(f"scu-tui: error: --output-dir {out}: ")


@pytest.mark.slow
def test_an_error_message_is_one_line_even_when_the_input_has_newlines(tmp_path: Path) -> None:
    line = one_error_line(
        scu("--headless", "--set", "training.seed=1\nx", "--output-dir", str(tmp_path / "r"))
    )
    assert "training.seed" in line


# --- events -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def observed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real run in observe mode, hot enough for the S-SCU to propose."""
    out = tmp_path_factory.mktemp("observed") / "run"
    result = scu(
        "--headless",
        "--max-steps",
        "80",
        "--mode",
        "observe",
        "--set",
        "training.learning_rate=3e-2",
        "--set",
        "scu.lr_bounds=[1e-5, 1e-1]",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out


def proposals_on_replay(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("SCU Step")]


@pytest.mark.slow
def test_replay_of_a_damaged_events_file_works_on_the_good_lines(
    observed_run: Path, tmp_path: Path
) -> None:
    clean = scu("replay", str(observed_run))
    assert clean.returncode == 0 and clean.stderr == ""
    expected = proposals_on_replay(clean.stdout)
    assert expected, "the hot run should draw proposals"

    run = tmp_path / "run"
    shutil.copytree(observed_run, run)
    events = run / "events.jsonl"
    lines = events.read_bytes().splitlines(keepends=True)
    step = json.loads(next(line for line in lines if b'"type":"step"' in line))
    damage = [
        b"[1, 2, 3]\n",  # valid JSON, not an event object
        b'"just a string"\n',
        b"\xff\xfe not utf-8 \x80\n",
        json.dumps({**step, "loss": "abc"}).encode() + b"\n",  # a wrongly typed field
        json.dumps({**step, "step": "x"}).encode() + b"\n",
        b'{"type": "step", "step": 7, "loss": 0.',  # cut short by a kill ...
        b"\n",  # ... and ended by the resumed run
    ]
    events.write_bytes(b"".join(lines[:5] + damage + lines[5:]) + b'{"type": "ste')
    damaged = scu("replay", str(run))
    assert damaged.returncode == 0 and "Traceback" not in damaged.stderr
    assert proposals_on_replay(damaged.stdout) == expected
    assert damaged.stderr.strip() == (
        f"scu-tui: note: 6 lines were not events and skipped ({events})"
    )


@pytest.mark.slow
def test_replay_of_a_file_with_no_events_is_one_clear_line(
    observed_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(observed_run, run)
    (run / "events.jsonl").write_bytes(b"\x00\x01\x02\n[]\n\xff\n")
    line = one_error_line(scu("replay", str(run)))
    assert "events.jsonl: none of its 3 lines is an event" in line


# --- data: valid input is never refused ----------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "rows"),
    [
        ("text", [{"text": f"{q} {a}"} for q, a in QA]),
        ("completions", [{"prompt": q, "completion": a} for q, a in QA]),
    ],
)
@pytest.mark.parametrize("flag", ["--data", "--dataset-path"])
@pytest.mark.slow
def test_data_named_on_the_command_line_is_detected_from_its_rows(
    tmp_path: Path, fmt: str, rows: list[dict[str, str]], flag: str
) -> None:
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", rows[:32])
    write_jsonl(data / "valid.jsonl", rows[32:])
    out = tmp_path / "run"
    result = scu(
        "--headless",
        "--model",
        str(MODEL_DIR),
        flag,
        str(data),
        "--max-steps",
        "3",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "simple_training_config.json").read_text())
    assert config["settings"]["data"]["format"] == "auto"
    steps = [e for e in read_events(out) if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]


@pytest.mark.slow
def test_a_preset_that_pins_a_format_does_not_bind_data_from_the_command_line(
    tmp_path: Path,
) -> None:
    preset = tmp_path / "chatty.toml"
    preset.write_text('[data]\nformat = "chat"\n[training]\neval_every = 2\n', encoding="utf-8")
    data = tmp_path / "all.jsonl"  # one file: validation is held out of it
    write_jsonl(data, [{"prompt": q, "completion": a} for q, a in QA])
    args = ["--headless", "--preset", str(preset), "--data", str(data), "--max-steps", "2"]
    ok = scu(*args, "--output-dir", str(tmp_path / "run"))
    assert ok.returncode == 0, ok.stderr
    forced = scu(*args, "--set", "data.format=chat", "--output-dir", str(tmp_path / "r2"))
    line = one_error_line(forced)
    assert "format 'chat' expects keys ['messages'], found ['completion', 'prompt']" in line
    assert "they fit format 'completions'" in line


def test_the_demo_preset_detects_its_chat_data() -> None:
    from scu_tui.presets import load_preset

    demo = load_preset("demo")
    assert demo.data.format == "auto"
    assert json.loads(
        (Path(__file__).parent.parent / "scu_tui/demo/data/train.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()[0]
    ).keys() == {"messages"}
