"""The demo-hot preset: the demo with a 10x LR, where the S-SCU's rescue is visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from scu_tui.presets import load_preset
from scu_tui.protocol import DecisionEvent, Event, Outcome, ProposalEvent, RollbackEvent


def test_the_shipped_preset_loads_with_ten_times_the_demo_lr() -> None:
    hot, demo = load_preset("demo-hot"), load_preset("demo")
    assert hot.name == "demo-hot"
    assert hot.training.learning_rate == pytest.approx(10 * demo.training.learning_rate)
    assert hot.scu.enabled and hot.scu.mode == "auto"
    assert "10x" in hot.description


class Keep:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        if event.type != "step":
            self.events.append(event)

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_its_run_rolls_back_for_a_real_reason_in_the_first_third(tmp_path: Path) -> None:
    from scu_tui.run import Run

    settings = load_preset("demo-hot")
    third = settings.training.max_steps // 3
    run = Run(settings.replace({"training.max_steps": third}), output_dir=tmp_path / "run")
    keep = Keep()
    run.add_sink(keep)
    run.execute()
    proposals = [e for e in keep.events if isinstance(e, ProposalEvent)]
    applied = {
        e.id for e in keep.events if isinstance(e, DecisionEvent) and e.outcome == Outcome.APPLIED
    }
    rescue = [p for p in proposals if p.knob == "rollback" and p.id in applied]
    assert rescue and rescue[0].step <= third
    assert rescue[0].after < rescue[0].before  # back with a lower LR
    assert any(isinstance(e, RollbackEvent) for e in keep.events)
