"""Trying a run's adapters: scu-tui's own generate, and the mlx_lm command it prints."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import TrainedDemo, scu

from scu_tui.generate import example_prompt, generate_with_run, mlx_lm_command
from scu_tui.runfolder import load_run_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(trained_demo: TrainedDemo) -> Path:
    """The session's demo run: generating only reads it."""
    return trained_demo.folder


def test_the_adapters_answer_a_test_prompt_the_base_cannot(trained: Path) -> None:
    settings = load_run_settings(trained)
    prompt, answer = generate_with_run(trained, settings, None)
    assert prompt == example_prompt(settings) == "What is 3 plus 14?"
    assert answer == "3 plus 14 is 17."
    _, base = generate_with_run(trained, settings, prompt, base=True)
    assert base != answer


@pytest.mark.skipif(shutil.which("mlx_lm.generate") is None, reason="mlx-lm's CLI not on PATH")
def test_the_printed_mlx_lm_command_runs_as_printed(trained: Path, tmp_path: Path) -> None:
    settings = load_run_settings(trained)
    command = mlx_lm_command(trained, settings, "What is 3 plus 14?")
    assert "@demo" not in command  # a path mlx-lm can load
    done = subprocess.run(
        shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "3 plus 14 is 17." in done.stdout


def test_scu_tui_generate_answers_from_the_command_line(trained: Path) -> None:
    result = scu("generate", str(trained), "--prompt", "What is 5 plus 7?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["prompt: What is 5 plus 7?", "5 plus 7 is 12."]


@pytest.mark.skipif(shutil.which("mlx_lm.generate") is None, reason="mlx-lm's CLI not on PATH")
def test_the_end_of_a_run_says_where_it_went_and_its_command_runs(
    trained_demo: TrainedDemo, tmp_path: Path
) -> None:
    trained = trained_demo.folder
    tail = trained_demo.stdout.split("done at step 150: completed\n", 1)[1].splitlines()
    assert tail[0] == f"run folder: {trained}"
    assert tail[1].startswith("best validation loss ") and tail[1].endswith(f"{trained}/best")
    assert tail[2] == f"try them:   scu-tui generate {trained}"
    command = tail[3].removeprefix("or with mlx-lm: ")
    assert tail[4] == f"as a model: scu-tui fuse {trained}"
    done = subprocess.run(
        shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "3 plus 14 is 17." in done.stdout
