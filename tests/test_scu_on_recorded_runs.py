"""The S-SCU's decisions on recorded event streams: the same verdict on every machine.

A run at 30x the tuned learning rate is chaotic: its per-step losses depend on the BLAS
and the CPU's kernels. What the controller makes of a given history does not, so its
logic is pinned here on histories recorded from real runs of the demo.
"""

from __future__ import annotations

import json
import math
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
            "scu.lr_search": False,  # recorded before the start-up search existed
        }
    )


def as_run(tmp_path: Path, recorded: Path) -> Path:
    shutil.copy(recorded, tmp_path / "events.jsonl")
    return tmp_path


#: `scu-tui --headless --preset demo-hot --max-steps 100 --mode ask`, recorded: the demo at
#: 10x its tuned LR; the damage guard rolled it back at once (ask mode, like auto).
HOT_ASKED = DATA / "demo-hot-ask-events.jsonl"


def demo_hot_settings() -> Settings:
    # recorded before the start-up search existed: replayed as the run was
    return load_preset("demo-hot").replace(
        {"training.max_steps": 100, "scu.mode": "ask", "scu.lr_search": False}
    )


def test_a_loss_clearly_above_a_kept_state_goes_back_to_the_state_before_the_rise(
    tmp_path: Path,
) -> None:
    """demo-hot falls from 6.1 to 1.9 by step 7, then rises to 6-8: the median of the
    newest losses is clearly above the level at step 5, for this run's own noise."""
    proposals, _ = replay(as_run(tmp_path, HOT_ASKED), demo_hot_settings())
    first = proposals[0]
    assert (first.rule, first.knob, first.diagnosis) == ("rollback", "rollback", "diverging")
    assert first.step < demo_hot_settings().scu.control_frequency  # before any analysis
    assert first.evidence["to_step"] == 5  # the last kept state before the rise
    assert first.after == pytest.approx(0.25 * first.before)  # damage: a deep cut
    assert "loss damaged" in first.reason
    e = first.evidence
    assert e["recent_loss"] - e["best_loss"] > 3 * math.hypot(e["recent_se"], e["best_se"])


def test_gradient_variability_alone_does_not_roll_back_but_collapsed_gradients_do(
    tmp_path: Path,
) -> None:
    """At 30x the gradients are erratic (variability ~1, which v2 rolled back on), and the
    loss never sits clearly above a kept state's (the damage came in the first 5 steps,
    before the first kept state but the start): no damage rollback. But the gradients
    collapse: a median norm of 2.3 over the first 5 steps, 0.68 over steps 12-21 and 0.15
    by steps 31-40, while the loss stays at ~90-110 % of theirs (validation 4.43 at step
    100, against ~0.3 at the tuned LR): rollbacks for that only, to the run's start, the
    first by step 21. (Observe mode does not go back, so the collapse is reported again
    on the losses after each report, while the start is kept.)"""
    proposals, _ = replay(as_run(tmp_path, HOT_OBSERVED), hot_settings())
    rollbacks = [p for p in proposals if p.knob == "rollback"]
    assert rollbacks and rollbacks[0].step <= 21
    for back in rollbacks:
        assert back.evidence["collapse"] is True and back.evidence["to_step"] == 0
        assert back.step <= 50 and back.after == pytest.approx(0.1 * back.before)
        assert "gradients collapsed" in back.reason and "loss damaged" not in back.reason


def test_the_replayed_decisions_are_the_ones_the_live_run_logged(tmp_path: Path) -> None:
    """Replay and the live controller share one decision path: same steps, rules, reasons."""
    lines = HOT_ASKED.read_text(encoding="utf-8").splitlines()
    logged = [e for e in map(json.loads, lines) if e["type"] == "proposal"]
    replayed, skipped = replay(as_run(tmp_path, HOT_ASKED), demo_hot_settings())
    assert skipped == 0 and logged
    assert [(p.step, p.rule, p.reason, p.after) for p in replayed] == [
        (e["step"], e["rule"], e["reason"], pytest.approx(e["after"])) for e in logged
    ]


def test_replay_follows_one_timeline_across_a_rollback(tmp_path: Path) -> None:
    """A rollback from step 70 to 40, then a new branch: replay drops what the abandoned
    steps proposed, so its proposals never go back in time."""
    lines = HOT_ASKED.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    first = [e for e in events if e["type"] != "done" and e["step"] <= 70]
    rollback = {"type": "rollback", "step": 70, "time": 0.0, "to_step": 40, "reason": "test"}
    branch = [e for e in events if e["type"] in ("step", "eval") and e["step"] > 40]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in [*first, rollback, *branch]) + "\n")
    proposals, skipped = replay(tmp_path, demo_hot_settings())
    assert skipped == 0 and proposals
    steps = [p.step for p in proposals]
    assert steps == sorted(set(steps))


def test_a_validation_rise_replays_on_the_step_the_live_run_took_it(tmp_path: Path) -> None:
    """A run writes a step's validation pass after the step, but its controller sees the
    pass first: replay reads them in that order, so the rollback for a pass 30 % above the
    one before comes on the pass's own step, back to the earlier pass's state."""
    lines = HOT_ASKED.read_text(encoding="utf-8").splitlines()
    step = json.loads(next(line for line in lines if '"type":"step"' in line))
    events = []
    for n in range(1, 41):
        events.append(step | {"step": n, "loss": 1.0, "grad_norm": 1.0, "alignment": "nan"})
        if n in (20, 40):
            val = 1.0 if n == 20 else 1.3
            events.append({"type": "eval", "step": n, "time": 0.0, "val_loss": val,
                           "best_val_loss": 1.0, "is_best": n == 20, "seconds": 0.1})  # fmt: skip
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    settings = demo_hot_settings().replace({"scu.lr_search": False})
    proposals, skipped = replay(tmp_path, settings)
    rollbacks = [p for p in proposals if p.knob == "rollback"]
    assert skipped == 0
    assert [(p.step, p.evidence["to_step"]) for p in rollbacks] == [(40, 20)]
    assert "validation loss damaged" in rollbacks[0].reason
