"""Preset discovery: shipped presets, shadowed by the user's of the same name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scu_tui.config import ConfigError, Settings, file_name, load_file, parse_toml, save_toml
from scu_tui.resources import shipped_dir, user_dir


@dataclass(frozen=True)
class PresetInfo:
    name: str
    description: str
    origin: str  # "shipped" or "user"
    path: Path


def _scan(folder: Path, origin: str) -> dict[str, PresetInfo]:
    found: dict[str, PresetInfo] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.toml")):
        description = ""
        try:
            data = parse_toml(path.read_text(encoding="utf-8"), str(path))
            description = str(data.get("description", ""))
        except (ConfigError, OSError, UnicodeDecodeError):
            description = "(unreadable: run `scu-tui presets show " + path.stem + "` for details)"
        found[path.stem] = PresetInfo(path.stem, description, origin, path)
    return found


def list_presets() -> list[PresetInfo]:
    """All presets by name; a user preset shadows a shipped one of the same name."""
    presets = _scan(shipped_dir("presets"), "shipped")
    presets.update(_scan(user_dir("presets"), "user"))
    return sorted(presets.values(), key=lambda p: (p.origin != "shipped", p.name))


def find_preset(name_or_file: str) -> Path:
    """The file for a preset name or a path to a ``.toml`` file."""
    candidate = Path(name_or_file).expanduser()
    if name_or_file.endswith(".toml") or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate
        raise ConfigError(f"{name_or_file}: no such preset file")
    for preset in list_presets():
        if preset.name == name_or_file:
            return preset.path
    names = ", ".join(p.name for p in list_presets()) or "none"
    raise ConfigError(f"unknown preset '{name_or_file}' (available: {names})")


def load_preset(name_or_file: str) -> Settings:
    """Settings from a preset over the defaults; the name defaults to the file's stem."""
    path = find_preset(name_or_file)
    settings = load_file(path)
    if settings.name == Settings().name:
        settings = settings.replace({"name": path.stem}, source=f"{path} (its file name)")
    return settings


def save_user_preset(settings: Settings, name: str) -> Path:
    """Save settings as a user preset called ``name``; returns its path."""
    problem = file_name(name)
    if problem:
        raise ConfigError(f"'{name}' is not a valid preset name: it must be {problem}")
    path = user_dir("presets") / f"{name}.toml"
    save_toml(settings.replace({"name": name}), path)
    return path
