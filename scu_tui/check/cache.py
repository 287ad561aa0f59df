"""The last check of each set of settings, so the preset picker can show it.

Keyed by what the check depends on (model, LoRA, data and training settings), kept in the
user's scu-tui folder (``checks/``), one small JSON file per key, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from scu_tui.check.units import duration, gb
from scu_tui.config import Settings
from scu_tui.resources import user_dir

KEPT = (
    "peak_memory_gb",
    "memory_limit_gb",
    "fits",
    "verdict",
    "seconds_per_step",
    "eta_seconds",
    "model_source",
)


def settings_key(settings: Settings) -> str:
    """A stable digest of the settings a check's answer depends on."""
    data = settings.to_dict()
    relevant = {k: data[k] for k in ("model", "lora", "data", "training")}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _path(settings: Settings) -> Path:
    return user_dir("checks") / f"{settings_key(settings)}.json"


def record(settings: Settings, result: dict[str, Any]) -> None:
    """Keep the summary of a check (best effort: a read-only home only loses the cache)."""
    summary = {k: result.get(k) for k in KEPT} | {"time": time.time()}
    path = _path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".check-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(summary, fh)
        os.replace(tmp, path)
    except OSError:
        return


def recall(settings: Settings) -> dict[str, Any] | None:
    """The last check's summary for exactly these settings, or None."""
    try:
        data = json.loads(_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the preset picker: peak against the budget, and the ETA."""
    peak, limit = summary.get("peak_memory_gb"), summary.get("memory_limit_gb")
    if not isinstance(peak, int | float) or not isinstance(limit, int | float):
        return "check: unreadable result; press c to check again"
    fits = "fits" if summary.get("fits") else "does not fit"
    line = f"check: peak {gb(peak * 1e9)} of {gb(limit * 1e9)} ({fits})"
    eta = summary.get("eta_seconds")
    if isinstance(eta, int | float):
        return f"{line} · ETA {duration(eta)}"
    return f"{line} · no ETA (from config.json alone)"
