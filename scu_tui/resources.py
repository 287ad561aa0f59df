"""Where shipped data lives (presets, themes) and where the user's own goes.

Installed from a wheel, ``presets/`` and ``themes/`` sit inside the package; in an
editable install or a source checkout they sit at the repository root. Both are found.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The shipped ``presets`` or ``themes`` folder, installed or in a checkout."""
    inside = PACKAGE_DIR / name
    if inside.is_dir():
        return inside
    return PACKAGE_DIR.parent / name


def user_config_dir() -> Path:
    """``$XDG_CONFIG_HOME/scu-tui`` (default ``~/.config/scu-tui``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "scu-tui"


def user_dir(name: str) -> Path:
    return user_config_dir() / name
