"""The system OpenBLAS is loaded for MLX on Linux, and can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scu_tui.blas import CANDIDATES

NEEDS_OPENBLAS = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not any(Path(p).is_file() for p in CANDIDATES),
    reason="needs Linux with a system OpenBLAS",
)

pytestmark = pytest.mark.slow

PROBE = "import scu_tui, scu_tui.blas as b; print(b.active); print(b.reason)"


def probe(env: dict[str, str], cwd: Path | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


def test_can_be_turned_off() -> None:
    assert probe({"SCU_TUI_OPENBLAS": "0"}) == ["None", "disabled by SCU_TUI_OPENBLAS=0"]


@NEEDS_OPENBLAS
def test_system_openblas_is_loaded_even_from_a_folder_named_mlx(tmp_path: Path) -> None:
    (tmp_path / "mlx").mkdir()  # a stray folder must not hide the installed wheel
    active, reason = probe({"SCU_TUI_OPENBLAS": ""}, cwd=tmp_path)
    assert reason == "loaded" and "openblas" in active



def test_the_test_process_trains_on_the_same_blas_as_the_command_line() -> None:
    """conftest imports scu_tui first, whatever order pytest collects the test files in."""
    import scu_tui.blas as b

    cli = subprocess.run(
        [sys.executable, "-m", "scu_tui", "--version"], capture_output=True, text=True, check=True
    )
    assert not b.late_import()
    assert f"BLAS: {b.active or 'bundled (' + b.reason + ')'}" in cli.stdout


@NEEDS_OPENBLAS
def test_importing_mlx_first_is_said_loudly_at_import_and_in_the_run(tmp_path: Path) -> None:
    code = (
        "import mlx.core, sys\n"
        "from scu_tui.cli import main\n"
        "sys.exit(main(['--headless', '--max-steps', '2', '--output-dir', sys.argv[1]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        env={**os.environ, "SCU_TUI_OPENBLAS": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "RuntimeWarning: scu-tui: mlx.core was imported before scu_tui" in out.stderr
    assert "warning: mlx.core was imported before scu_tui" in out.stdout
    summary = (tmp_path / "run" / "scu_training_summary.json").read_text()
    assert "import scu_tui before mlx" in summary
