"""Themes are data: shipped TOML files, the user's own folder, and a clear error for a typo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import scu

from scu_tui.errors import UserError
from scu_tui.resources import shipped_dir
from scu_tui.themes import (
    COLOR_KEYS,
    available_themes,
    find_theme,
    parse_theme,
    theme_names,
    to_textual,
)

SHIPPED = ("scu-contrast", "scu-dark", "scu-light")

MINE = """
name = "mine"
description = "a test theme"
dark = false

[colors]
primary = "#112233"
warning = "#aabbcc"
"""


def test_shipped_themes_load_with_every_colour() -> None:
    themes = available_themes()
    assert set(SHIPPED) <= set(themes)
    for name in SHIPPED:
        spec = themes[name]
        assert spec.origin == "shipped" and spec.description
        assert set(spec.colors) >= set(COLOR_KEYS) - {"boost"}
        theme = to_textual(spec)
        assert theme.name == name and theme.primary == spec.colors["primary"]
    assert find_theme("scu-light").dark is False
    assert theme_names()[: len(SHIPPED)] == list(SHIPPED)


def test_a_user_theme_is_found_and_shadows_a_shipped_one(user_config: Path) -> None:
    folder = user_config / "themes"
    folder.mkdir(parents=True)
    (folder / "mine.toml").write_text(MINE, encoding="utf-8")
    shadow = (shipped_dir("themes") / "scu-dark.toml").read_text(encoding="utf-8")
    (folder / "scu-dark.toml").write_text(shadow.replace("#5fafff", "#010203"), encoding="utf-8")
    mine = find_theme("mine")
    assert mine.origin == "user" and mine.dark is False and mine.colors["warning"] == "#aabbcc"
    assert find_theme("scu-dark").colors["primary"] == "#010203"
    assert theme_names() == [*SHIPPED, "mine"]  # a shadowed name keeps its place
    assert to_textual(mine).primary == "#112233"


def test_unknown_theme_lists_the_available_ones() -> None:
    with pytest.raises(UserError) as caught:
        find_theme("scu-drak")
    message = str(caught.value)
    assert "unknown theme 'scu-drak'" in message
    assert all(name in message for name in SHIPPED)


def test_a_broken_user_theme_says_where_and_does_not_hide_the_others(user_config: Path) -> None:
    folder = user_config / "themes"
    folder.mkdir(parents=True)
    (folder / "broken.toml").write_text('name = "broken"\n[colors]\nprimary = "blue"\n')
    assert set(SHIPPED) <= set(available_themes())
    with pytest.raises(UserError, match=r"broken\.toml: colors\.primary = 'blue'"):
        find_theme("broken")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name = 'x'\n[colors]\nsecondary = '#000000'\n", "colors.primary is required"),
        ("name = 'x'\n[colors]\nprimary = '#000000'\npink = '#ffffff'\n", "unknown colour"),
        ("name = 'x'\ncolour = 1\n", "unknown key 'colour'"),
        ("name = 'x'\ndark = 'yes'\n[colors]\nprimary = '#000000'\n", "dark must be"),
        ("name = \n", "invalid TOML"),
    ],
)
def test_theme_files_are_checked(text: str, problem: str) -> None:
    with pytest.raises(UserError, match=problem):
        parse_theme(text, "t.toml")


@pytest.mark.slow
def test_cli_refuses_an_unknown_theme_before_the_app_starts() -> None:
    result = scu("--preset", "demo", "--theme", "nope", timeout=120)
    assert result.returncode == 2
    assert "unknown theme 'nope'" in result.stderr and "scu-dark" in result.stderr
    assert "\x1b[?1049h" not in result.stdout  # never switched to the app's screen


@pytest.mark.slow
def test_themes_module_does_not_import_textual() -> None:
    code = (
        "import sys, scu_tui.themes as t; t.find_theme('scu-dark'); print('textual' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
