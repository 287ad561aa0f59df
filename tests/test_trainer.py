"""The training engine on the embedded demo: knobs that bite, NaN guard, exact resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from scu_tui.config import Settings
from scu_tui.presets import load_preset
from scu_tui.training.data import load_data
from scu_tui.training.model import apply_lora, load_model
from scu_tui.training.trainer import Trainer, gradient_stats

pytestmark = pytest.mark.slow


def make_trainer(**updates: Any) -> Trainer:
    settings: Settings = load_preset("demo").replace(
        {"training.max_steps": 50, "training.warmup_steps": 0, **updates}
    )
    model, tokenizer = load_model(settings.model.path)
    data = load_data(settings.data, tokenizer, settings.training.seed)
    mx.random.seed(settings.training.seed)
    apply_lora(model, settings.lora, settings.model.path)
    return Trainer(model, data, settings)


def params(trainer: Trainer) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(trainer.model.trainable_parameters())}


def max_change(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_steps_report_loss_grad_norm_and_tokens() -> None:
    t = make_trainer()
    first = t.train_step()
    assert first.step == 1 and math.isfinite(first.loss) and first.grad_norm > 0
    assert first.tokens > 0 and not first.skipped
    for _ in range(9):
        last = t.train_step()
    assert last.loss < first.loss


def test_learning_rate_change_takes_effect_in_the_update() -> None:
    t = make_trainer()
    t.train_step()
    t.set_knob("lr_multiplier", 0.0)
    before = params(t)
    result = t.train_step()
    assert result.lr == 0.0
    assert max_change(before, params(t)) == 0.0  # no update at lr 0
    t.set_knob("lr_multiplier", 1.0)
    t.train_step()
    assert max_change(before, params(t)) > 0.0


def test_weight_decay_change_takes_effect_in_the_update() -> None:
    a, b = make_trainer(), make_trainer()
    a.train_step()
    b.train_step()
    assert max_change(params(a), params(b)) == 0.0  # same seed, same run
    b.set_knob("weight_decay", 0.5)
    a.train_step()
    b.train_step()
    pa, pb = params(a), params(b)

    def norm(p):
        return math.sqrt(sum(float((v**2).sum()) for k, v in p.items() if "lora_a" in k))

    assert norm(pb) < norm(pa)  # decoupled decay shrank the weights


def test_dropout_change_takes_effect_in_the_forward_pass() -> None:
    # LoRA's B matrix starts at zero, so dropout on the LoRA input only shows once B moved.
    a, b, c = make_trainer(), make_trainer(), make_trainer()
    for t in (a, b, c):
        t.train_step()
    b.set_knob("dropout", 0.5)
    c.set_knob("dropout", 0.5)
    c.set_knob("dropout", 0.0)
    la, lb, lc = a.train_step().loss, b.train_step().loss, c.train_step().loss
    assert la != pytest.approx(lb, rel=1e-6)  # dropout changed the forward pass
    assert la == pytest.approx(lc, rel=1e-6)  # and setting it back restores it


def test_accumulation_change_consumes_more_micro_batches() -> None:
    t = make_trainer()
    t.train_step()
    position = t.stream.position
    t.set_knob("accumulation", 3)
    result = t.train_step()
    assert t.stream.position == position + 3
    assert result.tokens > 0


def test_non_finite_loss_skips_the_update() -> None:
    t = make_trainer()
    t.train_step()
    name, value = tree_flatten(t.model.trainable_parameters())[0]
    t.model.update(tree_unflatten([(name, value * mx.array(math.nan))]))  # poison one weight
    frozen = params(t)
    result = t.train_step()
    assert result.skipped and not math.isfinite(result.loss)
    assert t.skipped_steps == 1
    after = params(t)
    assert all(np.array_equal(frozen[k], after[k], equal_nan=True) for k in frozen)


def test_checkpoint_round_trip_continues_exactly(tmp_path: Path) -> None:
    first = make_trainer()
    for _ in range(3):
        first.train_step()
    first.set_knob("weight_decay", 0.01)
    reference2 = make_trainer()
    for _ in range(3):
        reference2.train_step()
    reference2.set_knob("weight_decay", 0.01)
    expected = [reference2.train_step().loss for _ in range(3)]
    folder = tmp_path / "ckpt"
    folder.mkdir()
    first.save_state(folder)

    resumed = make_trainer()
    resumed.load_state(folder)
    assert resumed.step == 3 and resumed.knobs.weight_decay == 0.01
    got = [resumed.train_step().loss for _ in range(3)]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_gradient_stats_are_the_squared_norm_and_the_cosine_with_the_first_moment() -> None:
    rng = np.random.default_rng(0)
    g = {"a": rng.normal(size=(3, 4)), "b": {"c": rng.normal(size=5)}}
    m = {"a": rng.normal(size=(3, 4)), "b": {"c": rng.normal(size=5)}}
    flat_g = np.concatenate([g["a"].ravel(), g["b"]["c"]])
    flat_m = np.concatenate([m["a"].ravel(), m["b"]["c"]])
    expected = flat_g @ flat_m / np.linalg.norm(flat_g) / np.linalg.norm(flat_m)
    grads = {"a": mx.array(g["a"]), "b": {"c": mx.array(g["b"]["c"])}}
    # AdamW's state: a dict per parameter with its first moment m (and v, step, ...)
    state = {
        "step": mx.array(3),
        "a": {"m": mx.array(m["a"]), "v": mx.ones((3, 4))},
        "b": {"c": {"m": mx.array(m["b"]["c"]), "v": mx.ones(5)}},
    }
    g2, align = gradient_stats(grads, state)
    assert float(g2) == pytest.approx(float(flat_g @ flat_g), rel=1e-5)
    assert float(align) == pytest.approx(expected, rel=1e-5)
    zero = {"a": {"m": mx.zeros((3, 4))}, "b": {"c": {"m": mx.zeros(5)}}}
    g2, align = gradient_stats(grads, zero)
    assert float(g2) == pytest.approx(float(flat_g @ flat_g), rel=1e-5)
    assert math.isnan(float(align))  # the first step: m is all zeros
    assert math.isnan(float(gradient_stats(grads, {"step": mx.array(1)})[1]))  # no moments


def test_each_step_reports_its_alignment_after_the_first() -> None:
    trainer = make_trainer()
    results = [trainer.train_step() for _ in range(4)]
    assert math.isnan(results[0].alignment)
    assert all(-1.0 <= r.alignment <= 1.0 for r in results[1:])
