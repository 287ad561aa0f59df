"""Presets and the command line, as a user runs them: real subprocesses, real exit codes."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from scu_tui.config import Settings, merge
from scu_tui.presets import list_presets, load_preset, save_user_preset


def scu(*args: str, env_home: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if env_home is not None:
        env["XDG_CONFIG_HOME"] = str(env_home)
    return subprocess.run(
        [sys.executable, "-m", "scu_tui", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_shipped_presets_load_and_the_reference_matches_the_seed() -> None:
    names = {p.name: p for p in list_presets()}
    assert {"demo", "qwen3-4b-mlx-4bit"} <= set(names)
    ref = load_preset("qwen3-4b-mlx-4bit")
    assert ref.model.path == "Qwen/Qwen3-4B-MLX-4bit"
    assert (ref.lora.rank, ref.lora.alpha) == (32, 64.0)
    assert (ref.training.batch_size, ref.training.gradient_accumulation_steps) == (2, 4)
    assert ref.training.learning_rate == 2e-4 and ref.training.max_steps == 3000
    assert ref.scu.control_frequency == 50 and ref.scu.target_loss_improvement == 0.01
    assert load_preset("demo").model.path == "@demo"


def test_user_preset_shadows_shipped_and_saves_with_tomli_w(user_config: Path) -> None:
    custom = load_preset("demo").replace({"training.max_steps": 7, "description": "mine"})
    path = save_user_preset(custom, "demo")
    assert path == user_config / "presets" / "demo.toml"
    info = {p.name: p for p in list_presets()}["demo"]
    assert info.origin == "user" and info.description == "mine"
    assert load_preset("demo").training.max_steps == 7


@pytest.mark.slow
def test_cli_version_help_presets(user_config: Path) -> None:
    version = scu("--version", env_home=user_config.parent)
    assert version.returncode == 0 and version.stdout.startswith("scu-tui ")
    help_ = scu("--help", env_home=user_config.parent)
    assert help_.returncode == 0 and "--preset" in help_.stdout and "presets" in help_.stdout
    listing = scu("presets", env_home=user_config.parent)
    assert listing.returncode == 0
    rows = listing.stdout.splitlines()
    assert rows[0].split() == ["NAME", "ORIGIN", "DESCRIPTION"]
    assert any(r.startswith("demo ") and "shipped" in r for r in rows)
    assert any(r.startswith("qwen3-4b-mlx-4bit") for r in rows)


@pytest.mark.slow
def test_presets_show_prints_toml_that_loads_back(user_config: Path) -> None:
    shown = scu("presets", "show", "demo", env_home=user_config.parent)
    assert shown.returncode == 0
    assert merge(Settings(), tomllib.loads(shown.stdout), source="show") == load_preset("demo")


@pytest.mark.parametrize(
    ("preset_text", "expected"),
    [
        ("[training]\nmax_steps = 10\nbatch_size = = 2\n", ":3:"),
        ("[training]\nlearnig_rate = 1e-3\n", "did you mean 'training.learning_rate'"),
        ("[training]\nlearning_rate = -1e-3\n", "training.learning_rate = -0.001: must be > 0"),
    ],
)
@pytest.mark.slow
def test_bad_preset_exits_2_with_a_clear_message(
    tmp_path: Path, preset_text: str, expected: str
) -> None:
    preset = tmp_path / "bad.toml"
    preset.write_text(preset_text, encoding="utf-8")
    result = scu("--headless", "--preset", str(preset), "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert expected in result.stderr and str(preset) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bad_flags_exit_2_without_traceback(tmp_path: Path) -> None:
    for args in (
        ["--headless", "--max-steps", "0"],
        ["--headless", "--set", "training.lr=1"],
        ["--headless", "--preset", "no-such-preset"],
        ["--mode", "turbo"],
        ["presets", "show", "nope"],
    ):
        result = (
            scu(*args, "--output-dir", str(tmp_path / "r")) if args[0] != "presets" else scu(*args)
        )
        assert result.returncode == 2, (args, result.stderr)
        assert "error" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_app_without_a_terminal_says_to_use_headless(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scu_tui", "--preset", "demo", "--output-dir", str(tmp_path / "r")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "needs a terminal" in result.stderr and "--headless" in result.stderr
    assert "\x1b[" not in result.stdout + result.stderr  # no escape codes into a file
    assert not (tmp_path / "r").exists()
