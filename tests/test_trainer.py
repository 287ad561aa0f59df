"""The training engine on the embedded demo: knobs that bite, NaN guard, exact resume."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from scu_tui.config import Settings
from scu_tui.errors import UserError
from scu_tui.presets import load_preset
from scu_tui.training.data import load_data
from scu_tui.training.distributed import share_state
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


def make_trainer_with(optimizer: str, **updates: Any) -> Trainer:
    return make_trainer(**{"training.optimizer": optimizer, **updates})


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


#: Every optimizer; the ones added beside AdamW train in their own (slow) cases.
OPTIMIZERS = [
    "adamw",
    pytest.param("schedule_free", marks=pytest.mark.slow),
    pytest.param("prodigy", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_checkpoint_round_trip_continues_exactly(tmp_path: Path, optimizer: str) -> None:
    """Resume and rollback both go through save_state/load_state."""
    make_trainer = partial(make_trainer_with, optimizer)
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


def test_a_checkpoint_of_another_optimizer_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    make_trainer().save_state(folder)
    with pytest.raises(UserError, match=r"training\.optimizer = 'adamw', not 'prodigy'"):
        make_trainer_with("prodigy").load_state(folder)


class RankZeroMirror:
    """Stands in for the collective channel on rank 1 of two: every array comes back as
    rank 0's (what the all_sum of rank 0's values and the others' zeros gives)."""

    rank = 1

    def __init__(self, rank_zero: Trainer) -> None:
        self.arrays = {
            **rank_zero.adapter_weights(),
            **dict(tree_flatten(rank_zero.optimizer.state)),
        }

    def share_arrays(self, arrays: dict[str, mx.array]) -> dict[str, mx.array]:
        assert all(arrays[k].shape == self.arrays[k].shape for k in arrays)
        return {k: mx.array(self.arrays[k]) for k in arrays}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "schedule_free", "prodigy"])
def test_a_state_transfer_makes_another_rank_continue_exactly(optimizer: str) -> None:
    """The ranks' resync (at the start and after a rollback) carries each optimizer's state."""
    rank_zero = make_trainer_with(optimizer, **{"training.weight_decay": 0.01})
    for _ in range(3):
        rank_zero.train_step()
    follower = make_trainer_with(optimizer, **{"training.weight_decay": 0.01})
    follower.train_step()  # somewhere else, to be overwritten
    share_state(RankZeroMirror(rank_zero), follower, rank_zero.portable_state())  # type: ignore[arg-type]
    assert follower.step == 3
    want = [rank_zero.train_step().loss for _ in range(3)]
    got = [follower.train_step().loss for _ in range(3)]
    assert got == want
    assert max_change(params(rank_zero), params(follower)) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "schedule_free", "prodigy"])
def test_the_lr_multiplier_scales_each_optimizers_rate(optimizer: str) -> None:
    """The S-SCU's multiplier reaches the optimizer: for Prodigy as the factor on its own
    step size estimate (1 at multiplier 1), for the others as the LR itself."""
    t = make_trainer_with(optimizer)
    base = 1.0 if optimizer == "prodigy" else t.settings.training.learning_rate
    t.set_knob("lr_multiplier", 2.0)
    t.train_step()
    assert float(t.optimizer.learning_rate) == pytest.approx(2 * base, rel=1e-6)
    t.set_knob("lr_multiplier", 0.0)
    moved = "z" if optimizer == "schedule_free" else None  # its average still moves to z
    before = state_or_params(t, moved)
    t.train_step()
    assert max_change(before, state_or_params(t, moved)) == 0.0


def state_or_params(t: Trainer, key: str | None) -> dict[str, np.ndarray]:
    if key is None:
        return params(t)
    flat = tree_flatten(t.optimizer.state)
    return {k: np.array(v) for k, v in flat if k.endswith("." + key)}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["schedule_free", "prodigy"])
def test_the_weight_decay_knob_shrinks_the_weights_with_each_optimizer(optimizer: str) -> None:
    a, b = make_trainer_with(optimizer), make_trainer_with(optimizer)
    for t in (a, b):
        t.train_step()
    b.set_knob("weight_decay", 0.5)
    a.train_step()
    b.train_step()
    pa, pb = params(a), params(b)

    def norm(p: dict[str, np.ndarray]) -> float:
        return math.sqrt(sum(float((v**2).sum()) for k, v in p.items() if "lora_a" in k))

    assert norm(pb) < norm(pa)


@pytest.mark.slow
def test_schedule_free_evaluates_and_saves_the_average_of_its_iterates(tmp_path: Path) -> None:
    """The model holds x, the average of the z iterates (equal weights at a constant LR
    without warm-up), which validation and the saved adapters see; the gradient is taken
    at another point, y."""
    t = make_trainer_with("schedule_free")
    zs = []
    for _ in range(4):
        t.train_step()
        zs.append(state_or_params(t, "z"))
    x = params(t)
    for k in x:
        mean = np.mean([z[f"{k}.z"] for z in zs], axis=0)
        np.testing.assert_allclose(x[k], mean, rtol=1e-5, atol=1e-7)
    at_x = t.evaluate()
    t.save_adapters(tmp_path / "adapters.safetensors")
    saved = mx.load(str(tmp_path / "adapters.safetensors"))
    assert all(np.array_equal(np.array(saved[k]), x[k]) for k in x)
    y = t.optimizer.gradient_point(t.model.trainable_parameters())
    assert max_change(x, {k: np.array(v) for k, v in tree_flatten(y)}) > 0
    rest = t.model.trainable_parameters()
    t.model.update(y)
    at_y = t.evaluate()
    t.model.update(rest)
    assert at_x != at_y
