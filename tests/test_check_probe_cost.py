"""`scu-tui check` says how long its probe will take before it runs, and gives the
config-only estimate instead when that is too long (a 4B model on a CPU)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from helpers import scu

from scu_tui.check import probe_cost
from scu_tui.check.model_facts import ModelFacts
from scu_tui.check.probe import calibration_widths
from scu_tui.check.units import duration
from scu_tui.presets import load_preset

FACTS = ModelFacts(
    model_type="qwen3", parameters=1_000_000, weight_bytes=4_000_000, trainable=10_000,
    trainable_bytes=40_000, lora_modules=14, lora_rank=8, lora_dropout=False,
    quantization="4-bit, group 64", dtype="float32", act_bytes=4, layers=2, hidden=128,
    intermediate=256, heads=4, kv_heads=2, head_dim=32, vocab=1000, max_positions=512,
    quant_bits=4, quant_group=64,
)  # fmt: skip


def test_the_probe_s_arithmetic_grows_with_the_model_and_its_widths() -> None:
    base = probe_cost.flops_per_token(FACTS, grad_checkpoint=False)
    assert base == 4 * FACTS.parameters  # forward, and the input gradients back
    assert probe_cost.flops_per_token(FACTS, grad_checkpoint=True) == 6 * FACTS.parameters
    full = replace(FACTS, fine_tune_type="full")
    assert probe_cost.flops_per_token(full, grad_checkpoint=False) == 6 * FACTS.parameters
    short, long = calibration_widths(96), calibration_widths(2048)
    assert short == [33, 65, 96] and long == [33, 65, 129, 257]
    assert probe_cost.probe_tokens(4, long) > probe_cost.probe_tokens(4, short)
    assert probe_cost.probe_tokens(8, long) > probe_cost.probe_tokens(1, long)
    slow = probe_cost.probe_cost(
        FACTS, batch=2, widths=long, grad_checkpoint=False, speed=1e8, ran=False
    )
    fast = replace(slow, flops_per_second=1e10)
    assert slow.probe_seconds == pytest.approx(
        probe_cost.probe_tokens(2, long) * 5 * FACTS.parameters / 1e8
    )
    assert slow.step_seconds(1000) == pytest.approx(100 * fast.step_seconds(1000))
    assert duration(4 * 86400) == "4 days" and duration(7200) == "2 h 00 min"


def test_this_machine_is_timed_on_the_model_s_own_kind_of_layer() -> None:
    quantized = probe_cost.layer_speed(FACTS)
    dense = probe_cost.layer_speed(replace(FACTS, quantization="none", quant_bits=0, quant_group=0))
    assert math.isfinite(quantized) and quantized > 1e6
    assert math.isfinite(dense) and dense > 1e6


@pytest.mark.slow
def test_a_probe_too_long_for_this_machine_is_not_run_and_the_check_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scu_tui.check.runner import check

    monkeypatch.setattr(probe_cost, "layer_speed", lambda facts: 1e3)  # a very slow machine
    settings = load_preset("demo")
    result = check(settings)
    assert result.model_source == "config" and result.timing is None
    assert result.probe_cost is not None and not result.probe_cost.ran
    note = " ".join(result.notes)
    assert "would take about" in note and "--probe runs them anyway" in note
    text = " ".join(result.to_text().split())  # the report wraps at 80 columns
    assert "projected, not measured" in text and "steps would take about" in text
    data = result.to_json()
    assert data["probe"]["probe_ran"] is False
    assert data["probe"]["probe_seconds_estimate"] > probe_cost.PROBE_BUDGET_SECONDS

    forced = check(settings, probe_mode="always")  # --probe: run however long
    assert forced.model_source == "weights" and forced.timing is not None
    assert forced.probe_cost is not None and forced.probe_cost.ran


@pytest.mark.slow
def test_config_only_runs_no_step_and_the_default_runs_a_quick_probe() -> None:
    done = scu("check", "--preset", "demo", "--config-only", "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["model_source"] == "config" and data["seconds_per_step"] is None
    assert data["probe"]["probe_ran"] is False
    assert any("--config-only" in note for note in data["notes"])
    done = scu("check", "--preset", "demo", "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["model_source"] == "weights" and data["probe"]["probe_ran"] is True
    assert 0 < data["probe"]["probe_seconds_estimate"] < probe_cost.PROBE_BUDGET_SECONDS
    both = scu("check", "--preset", "demo", "--probe", "--config-only", timeout=60)
    assert both.returncode == 2 and "not allowed with" in both.stderr
