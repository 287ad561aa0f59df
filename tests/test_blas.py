"""The system OpenBLAS is loaded for MLX on Linux, and can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scu_tui.blas import CANDIDATES

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


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not any(Path(p).is_file() for p in CANDIDATES),
    reason="needs Linux with a system OpenBLAS",
)
def test_system_openblas_is_loaded_even_from_a_folder_named_mlx(tmp_path: Path) -> None:
    (tmp_path / "mlx").mkdir()  # a stray folder must not hide the installed wheel
    active, reason = probe({"SCU_TUI_OPENBLAS": ""}, cwd=tmp_path)
    assert reason == "loaded" and "openblas" in active
