"""Colour themes as data: TOML files in the shipped ``themes/`` folder and the user's own.

A theme file names the colours Textual derives its whole palette from::

    name = "scu-dark"
    description = "Dark, low-glare colours"
    dark = true

    [colors]
    primary = "#5fafff"      # required; the rest are optional
    secondary = "#87afd7"    # ... accent, foreground, background, surface, panel,
                             #     boost, success, warning, error

    [variables]              # optional extra Textual CSS variables
    footer-key-foreground = "#ffaf5f"

Parsing does not import Textual, so the command line can refuse an unknown theme name
before the terminal is taken over; :func:`to_textual` builds the ``textual.theme.Theme``.
A user theme shadows a shipped one of the same name, like presets do.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scu_tui.errors import UserError
from scu_tui.resources import shipped_dir, user_dir

if TYPE_CHECKING:
    from textual.theme import Theme

#: The colour keys a theme file may set (Textual's ``Theme`` base colours).
COLOR_KEYS = (
    "primary",
    "secondary",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
    "success",
    "warning",
    "error",
)
DEFAULT_THEME = "scu-dark"

_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")


@dataclass(frozen=True)
class ThemeSpec:
    """One theme file, parsed and checked; plain data (no Textual)."""

    name: str
    description: str
    dark: bool
    colors: dict[str, str]
    variables: dict[str, str] = field(default_factory=dict)
    origin: str = "shipped"  # "shipped" or "user"
    path: Path | None = None


def parse_theme(text: str, label: str, origin: str = "shipped") -> ThemeSpec:
    """Parse and check one theme file's text; errors name the file and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{label}: invalid TOML: {exc}") from None
    unknown = set(data) - {"name", "description", "dark", "colors", "variables"}
    if unknown:
        raise UserError(f"{label}: unknown key '{sorted(unknown)[0]}' in a theme file")
    name = data.get("name", Path(label).stem)
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{label}: name must be a non-empty string")
    description = data.get("description", "")
    dark = data.get("dark", True)
    if not isinstance(description, str):
        raise UserError(f"{label}: description must be a string")
    if not isinstance(dark, bool):
        raise UserError(f"{label}: dark must be true or false")
    colors = _colour_table(data.get("colors", {}), "colors", label)
    bad = set(colors) - set(COLOR_KEYS)
    if bad:
        raise UserError(
            f"{label}: unknown colour 'colors.{sorted(bad)[0]}' (known: {', '.join(COLOR_KEYS)})"
        )
    if "primary" not in colors:
        raise UserError(f"{label}: colors.primary is required")
    variables = _colour_table(data.get("variables", {}), "variables", label, hex_only=False)
    path = Path(label) if label.endswith(".toml") else None
    return ThemeSpec(name, description, dark, colors, variables, origin, path)


def _colour_table(value: Any, table: str, label: str, hex_only: bool = True) -> dict[str, str]:
    if not isinstance(value, dict):
        raise UserError(f"{label}: [{table}] must be a table")
    out: dict[str, str] = {}
    for key, colour in value.items():
        if not isinstance(colour, str):
            raise UserError(f"{label}: {table}.{key} must be a string")
        if hex_only and not _HEX.fullmatch(colour):
            raise UserError(f"{label}: {table}.{key} = {colour!r}: expected '#rrggbb'")
        out[str(key)] = colour
    return out


def load_theme_file(path: Path, origin: str = "shipped") -> ThemeSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read theme: {exc}") from None
    return parse_theme(text, str(path), origin)


def _scan(folder: Path, origin: str) -> dict[str, ThemeSpec]:
    """Every readable theme in a folder; a broken user file must not hide the others."""
    found: dict[str, ThemeSpec] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.toml")):
        try:
            spec = load_theme_file(path, origin)
        except UserError:
            continue
        found[spec.name] = spec
    return found


def available_themes() -> dict[str, ThemeSpec]:
    """Shipped themes, then the user's (``$XDG_CONFIG_HOME/scu-tui/themes``) over them."""
    themes = _scan(shipped_dir("themes"), "shipped")
    themes.update(_scan(user_dir("themes"), "user"))
    return themes


def theme_names() -> list[str]:
    """Names in the order ``t`` cycles through them: shipped names first, then the user's."""
    shipped = set(_scan(shipped_dir("themes"), "shipped"))
    return sorted(available_themes(), key=lambda n: (n not in shipped, n))


def find_theme(name: str) -> ThemeSpec:
    """The theme called ``name``; an unknown name lists what there is."""
    themes = available_themes()
    if name in themes:
        return themes[name]
    names = ", ".join(theme_names()) or "none"
    broken = _broken_user_theme(name)
    if broken:
        raise UserError(broken)
    raise UserError(f"unknown theme '{name}' (available: {names})")


def _broken_user_theme(name: str) -> str | None:
    """The error of a theme file named ``name`` that failed to load, if there is one."""
    for folder, origin in ((user_dir("themes"), "user"), (shipped_dir("themes"), "shipped")):
        path = folder / f"{name}.toml"
        if path.is_file():
            try:
                load_theme_file(path, origin)
            except UserError as exc:
                return str(exc)
    return None


def to_textual(spec: ThemeSpec) -> Theme:
    """The Textual theme for a spec (imports Textual: call it from the app only)."""
    from textual.theme import Theme

    c = spec.colors
    return Theme(
        name=spec.name,
        primary=c["primary"],
        secondary=c.get("secondary"),
        accent=c.get("accent"),
        foreground=c.get("foreground"),
        background=c.get("background"),
        surface=c.get("surface"),
        panel=c.get("panel"),
        boost=c.get("boost"),
        success=c.get("success"),
        warning=c.get("warning"),
        error=c.get("error"),
        dark=spec.dark,
        variables=dict(spec.variables),
    )


def textual_themes() -> list[Theme]:
    """Every available theme as a Textual theme, in cycling order."""
    themes = available_themes()
    return [to_textual(themes[name]) for name in theme_names()]
