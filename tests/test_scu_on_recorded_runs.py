"""The S-SCU's decisions on recorded event streams: the same verdict on every machine.

A run at 30x the tuned learning rate is chaotic: its per-step losses depend on the BLAS
and the CPU's kernels. What the controller makes of a given history does not, so its
logic is pinned here on histories recorded from real runs of the demo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scu_tui.config import Settings
from scu_tui.presets import load_preset
from scu_tui.replay import replay

DATA = Path(__file__).parent / "data"
#: `scu-tui --headless --preset demo --max-steps 100 --mode observe --set
#: training.learning_rate=3e-2 --set scu.lr_bounds="[1e-5, 1e-1]"`, recorded.
HOT_OBSERVED = DATA / "hot-lr-observe-events.jsonl"


def hot_settings() -> Settings:
    return load_preset("demo").replace(
        {
            "training.learning_rate": 3e-2,
            "scu.lr_bounds": [1e-5, 1e-1],
            "training.max_steps": 100,
            "scu.mode": "observe",
        }
    )


def as_run(tmp_path: Path, recorded: Path) -> Path:
    shutil.copy(recorded, tmp_path / "events.jsonl")
    return tmp_path


def test_erratic_gradients_propose_going_back_with_a_quarter_of_the_lr(tmp_path: Path) -> None:
    proposals, _ = replay(as_run(tmp_path, HOT_OBSERVED), hot_settings())
    first = proposals[0]
    assert (first.rule, first.knob) == ("rollback_erratic", "rollback")
    assert first.diagnosis == "diverging"
    assert first.after == pytest.approx(0.25 * first.before)
    assert first.reason.startswith("Erratic gradients (variability")
    assert first.evidence["grad_variability"] > 0.8
    assert first.step <= 2 * hot_settings().scu.control_frequency


def test_the_replayed_decisions_are_the_ones_the_live_run_logged(tmp_path: Path) -> None:
    """Replay and the live controller share one decision path: same steps, rules, reasons."""
    lines = HOT_OBSERVED.read_text(encoding="utf-8").splitlines()
    logged = [e for e in map(json.loads, lines) if e["type"] == "proposal"]
    replayed, skipped = replay(as_run(tmp_path, HOT_OBSERVED), hot_settings())
    assert skipped == 0
    assert [(p.step, p.rule, p.reason, p.after) for p in replayed] == [
        (e["step"], e["rule"], e["reason"], pytest.approx(e["after"])) for e in logged
    ]
