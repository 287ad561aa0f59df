"""Shared fixtures: an isolated user config folder for every test.

``scu_tui`` is imported here, before any test module imports ``mlx.core``, so every test
trains on the same BLAS as the command line does (see scu_tui.blas), whatever the order
in which pytest collects the files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import scu_tui  # noqa: F401 - must precede mlx.core: it picks the BLAS MLX binds to


@pytest.fixture(autouse=True)
def user_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $XDG_CONFIG_HOME at an empty folder so the user's own presets never leak in."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home / "scu-tui"
