"""Bytes and durations as people read them (no heavy imports: the app uses these too)."""

from __future__ import annotations


def gb(value: float) -> str:
    """``1.2 GB``, ``0.35 GB`` or ``3.1 MB``."""
    if value >= 100e9:
        return f"{value / 1e9:.0f} GB"
    if value >= 1e9:
        return f"{value / 1e9:.1f} GB"
    return f"{value / 1e9:.2f} GB" if value >= 10e6 else f"{value / 1e6:.1f} MB"


def duration(seconds: float) -> str:
    """``44 s``, ``12 min``, ``2 h 05 min`` or, from three days on, ``12 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    if minutes >= 72 * 60:
        return f"{minutes / 1440:,.0f} days"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h {rest:02d} min"
