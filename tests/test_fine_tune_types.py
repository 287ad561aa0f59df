"""``lora.type``: LoRA, DoRA and full fine-tuning through mlx-lm's own layers, as
``mlx_lm.lora --fine-tune-type`` trains them; resumed exactly, loaded by mlx-lm."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from helpers import scu
from mlx.utils import tree_flatten

from scu_tui.check.memory import estimate, from_config
from scu_tui.check.model_facts import facts_from_config
from scu_tui.config import LoraSettings, Settings
from scu_tui.presets import load_preset
from scu_tui.training.data import load_data
from scu_tui.training.model import apply_lora, load_model
from scu_tui.training.trainer import Trainer

TYPES = {"dora": {"lora.type": "dora"}, "full": {"lora.type": "full", "lora.num_layers": 2}}


def make_trainer(kind: str, **updates: Any) -> Trainer:
    settings: Settings = load_preset("demo").replace(
        {"training.max_steps": 50, "training.warmup_steps": 0, **TYPES[kind], **updates}
    )
    model, tokenizer = load_model(settings.model.path)
    data = load_data(settings.data, tokenizer, settings.training.seed)
    mx.random.seed(settings.training.seed)
    apply_lora(model, settings.lora, settings.model.path)
    return Trainer(model, data, settings)


def test_dora_trains_magnitudes_and_full_trains_the_top_blocks_weights() -> None:
    dora = dict(tree_flatten(make_trainer("dora").model.trainable_parameters()))
    assert any(k.endswith(".m") for k in dora) and any(k.endswith("lora_a") for k in dora)
    full = make_trainer("full").model
    trained = dict(tree_flatten(full.trainable_parameters()))
    top = [f"model.layers.{i}." for i in (2, 3)]  # num_layers = 2 of the demo's 4 blocks
    assert not any("lora_" in k for k in trained)
    assert all(any(k.startswith(p) for p in top) for k in trained)
    blocks = sum(v.size for i in (2, 3) for _, v in tree_flatten(full.layers[i].parameters()))
    assert sum(v.size for v in trained.values()) == blocks


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TYPES))
def test_checkpoint_round_trip_continues_exactly(kind: str, tmp_path: Path) -> None:
    first, reference = make_trainer(kind), make_trainer(kind)
    for t in (first, reference):
        for _ in range(3):
            t.train_step()
        t.set_knob("weight_decay", 0.01)
    expected = [reference.train_step().loss for _ in range(3)]
    folder = tmp_path / "ckpt"
    folder.mkdir()
    first.save_state(folder)
    resumed = make_trainer(kind)
    resumed.load_state(folder)
    assert resumed.step == 3
    got = [resumed.train_step().loss for _ in range(3)]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.slow
def test_dora_dropout_bites_and_full_has_none_to_move() -> None:
    a, b = make_trainer("dora"), make_trainer("dora")
    for t in (a, b):
        t.train_step()
    b.set_knob("dropout", 0.5)
    assert a.train_step().loss != pytest.approx(b.train_step().loss, rel=1e-6)
    full = make_trainer("full")
    assert a.has_dropout and not full.has_dropout
    with pytest.raises(ValueError, match="no dropout"):
        full.set_knob("dropout", 0.1)


def base_loss(settings: Settings, run: Path, adapters: bool) -> float:
    """The test-split loss of the run's model as mlx-lm loads it (with the run's
    adapters, or without any)."""
    from mlx_lm import load

    from scu_tui.compare import _split_loss, load_test_set
    from scu_tui.demo import MODEL_DIR

    model, tokenizer = load(str(MODEL_DIR), adapter_path=str(run) if adapters else None)[:2]
    return _split_loss(model, load_test_set(settings, tokenizer).split, settings)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TYPES))
def test_a_run_of_each_type_writes_adapters_mlx_lm_loads(kind: str, tmp_path: Path) -> None:
    from scu_tui.runfolder import load_run_settings

    out = tmp_path / "run"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TYPES[kind].items()]
    result = scu("--headless", "--preset", "demo", "--max-steps", "20", "--output-dir",
                 str(out), "--set", "training.eval_every=10", "--set", "scu.enabled=false",
                 "--set", "training.compare_samples=0", *sets)  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == kind
    settings = load_run_settings(out)
    comparison = json.loads((out / "comparison.json").read_text())
    # the run's last adapters, loaded by mlx-lm, are what it trained ...
    tuned = base_loss(settings, out, adapters=True)
    assert tuned < base_loss(settings, out, adapters=False)
    # ... and the end-of-run comparison's "base" is the base model itself
    assert comparison["base_loss"] == pytest.approx(base_loss(settings, out, False), rel=1e-5)


@pytest.mark.slow
def test_full_on_a_quantized_base_is_refused_unless_dequantized(tmp_path: Path) -> None:
    from mlx_lm.convert import convert

    from scu_tui.demo import MODEL_DIR

    q4 = tmp_path / "q4"
    convert(str(MODEL_DIR), str(q4), quantize=True, q_bits=4, q_group_size=64)
    args = ["--headless", "--preset", "demo", "--model", str(q4), "--max-steps", "3",
            "--set", "lora.type='full'", "--set", "scu.enabled=false",
            "--set", "training.compare_at_end=false"]  # fmt: skip
    refused = scu(*args, "--output-dir", str(tmp_path / "refused"))
    assert refused.returncode == 2
    assert "lora.dequantize=true" in refused.stderr and "Traceback" not in refused.stderr
    done = scu(*args, "--output-dir", str(tmp_path / "run"), "--set", "lora.dequantize=true")
    assert done.returncode == 0, done.stderr


def test_a_bad_type_lists_the_allowed_ones() -> None:
    result = scu("check", "--preset", "demo", "--set", "lora.type='qlora'")
    assert result.returncode == 2
    assert "lora.type" in result.stderr and "'lora', 'dora', 'full'" in result.stderr


def test_full_with_dropout_is_refused() -> None:
    model, _ = load_model("@demo")
    with pytest.raises(Exception, match="full fine-tuning has no adapter layers"):
        apply_lora(model, LoraSettings(type="full", dropout=0.1), "@demo")


def test_the_check_counts_dora_magnitudes_and_full_training_state() -> None:
    from scu_tui.demo import MODEL_DIR

    lora = facts_from_config(MODEL_DIR, LoraSettings(), "@demo")
    dora = facts_from_config(MODEL_DIR, LoraSettings(type="dora"), "@demo")
    full = facts_from_config(MODEL_DIR, LoraSettings(type="full"), "@demo")
    # DoRA: LoRA's matrices and one magnitude per output row of each adapted layer
    assert dora.trainable > lora.trainable and dora.dora_elements > 0
    assert dora.weight_bytes == lora.weight_bytes  # magnitudes are not counted as weights
    # full: every block's weights train; they are the weights (no adapter term), and their
    # gradients and AdamW's two moments come on top
    assert full.trainable > 0 and full.trainable_bytes < full.weight_bytes
    terms = {t.name: t.bytes for t in estimate(full, from_config(full, False), 1, 64).terms}
    assert "LoRA weights" not in terms and terms["weights"] == full.weight_bytes
    assert terms["optimizer state"] == 2 * full.trainable_bytes
    assert terms["gradients, buffers"] >= full.trainable_bytes
    assert "DoRA weights" in {t.name for t in estimate(dora, from_config(dora, False), 1, 64).terms}
    # on a quantized base DoRA dequantizes each adapted weight and keeps that copy
    q = dataclasses.replace(dora, quantization="4-bit, group 64")
    terms = {t.name: t.bytes for t in estimate(q, from_config(q, False), 1, 64).terms}
    assert terms["DoRA float weight copies"] == dora.dora_elements * dora.act_bytes
