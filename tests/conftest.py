"""Shared fixtures: an isolated user config folder for every test, and one trained demo run
for the whole session.

``scu_tui`` is imported here, before any test module imports ``mlx.core``, so every test
trains on the same BLAS as the command line does (see scu_tui.blas), whatever the order
in which pytest collects the files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TrainedDemo, scu

import scu_tui  # noqa: F401 - must precede mlx.core: it picks the BLAS MLX binds to


@pytest.fixture(autouse=True)
def user_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $XDG_CONFIG_HOME at an empty folder so the user's own presets never leak in."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home / "scu-tui"


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedDemo]:
    """The demo trained for 150 steps with the S-SCU off, once per session, as a user would
    (``scu-tui --headless``). Tests only read it; the session fails if one changed it."""
    out = tmp_path_factory.mktemp("trained-demo") / "run"
    # set up before any test's own config folder: give the run an empty one too
    xdg = tmp_path_factory.mktemp("trained-demo-xdg")
    result = scu(
        "--headless", "--preset", "demo", "--max-steps", "150", "--output-dir", str(out),
        "--set", "scu.enabled=false", env={"XDG_CONFIG_HOME": str(xdg)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    before = _files(out)
    yield TrainedDemo(out, result.stdout)
    assert _files(out) == before, f"a test wrote into the shared demo run {out}: copy it first"
