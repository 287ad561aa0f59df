"""``val_loss`` is mlx-lm's validation loss: same model, same files, same settings, same number.

mlx-lm's side is its own code end to end: its data set loader on the same folder, wrapped
in ``CacheDataset`` as ``mlx_lm.lora`` wraps it, and ``mlx_lm.tuner.trainer.evaluate``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
import pytest

from scu_tui.config import Settings
from scu_tui.demo import DATA_DIR
from scu_tui.presets import load_preset
from scu_tui.training.data import Split, eval_batch_rows, load_data
from scu_tui.training.model import apply_lora, load_model
from scu_tui.training.trainer import Trainer

# Both sides run the very same forward pass and loss on the very same batches, so each
# batch's loss is the same float32 number; they differ only in how the batches are summed
# (mlx-lm: float32 arrays, here: Python floats), which moves the result by about 1e-7
# relative. 1e-4 leaves room for that and for another BLAS, yet is 8x smaller than what
# leaving out two other rows of the demo's validation split did (8e-4) and 100x smaller
# than the 1 % gap this replaced.
RELATIVE = 1e-4
STEPS = 5


def settings_for(data: str, **updates: Any) -> Settings:
    """The demo preset, evaluating the whole validation split as ``val_batches = -1`` does."""
    return load_preset("demo").replace(
        {"data.path": data, "training.eval_batches": -1, "training.warmup_steps": 0, **updates}
    )


def make_trainer(settings: Settings) -> tuple[Trainer, Any]:
    model, tokenizer = load_model(settings.model.path)
    data = load_data(settings.data, tokenizer, settings.training.seed)
    mx.random.seed(settings.training.seed)
    apply_lora(model, settings.lora, settings.model.path)
    return Trainer(model, data, settings), tokenizer


def mlx_lm_val_loss(trainer: Trainer, tokenizer: Any, folder: Path) -> float:
    """What ``mlx_lm.lora`` reports as ``Val loss`` for the trainer's model and settings."""
    from mlx_lm.tuner.datasets import CacheDataset, load_dataset
    from mlx_lm.tuner.trainer import evaluate

    s = trainer.settings
    args = SimpleNamespace(
        data=str(folder), train=True, test=False, mask_prompt=s.data.mask_prompt
    )
    valid = CacheDataset(load_dataset(args, tokenizer)[1])
    loss = float(
        evaluate(
            model=trainer.model,
            dataset=valid,
            batch_size=s.training.batch_size,
            num_batches=s.training.eval_batches,
            max_seq_length=s.data.max_seq_length,
        )
    )
    trainer.model.train()  # mlx-lm's evaluate leaves the model in eval mode
    return loss


def assert_parity(trainer: Trainer, tokenizer: Any, folder: Path) -> float:
    ours = trainer.evaluate()
    theirs = mlx_lm_val_loss(trainer, tokenizer, folder)
    assert math.isfinite(ours)
    assert ours == pytest.approx(theirs, rel=RELATIVE)
    return ours


@pytest.mark.slow
def test_demo_chat_val_loss_is_mlx_lms_before_and_after_training() -> None:
    trainer, tokenizer = make_trainer(settings_for("@demo"))
    assert len(trainer.data.valid) % trainer.batch_size != 0  # rows are left out, as in mlx-lm
    before = assert_parity(trainer, tokenizer, DATA_DIR)
    for _ in range(STEPS):
        trainer.train_step()
    after = assert_parity(trainer, tokenizer, DATA_DIR)
    assert after < before - 0.1  # the adapters moved: the second check is of a new model


def completions_folder(folder: Path) -> Path:
    """A small completions data set from the demo's one-question chat rows."""
    rows = []
    for line in (DATA_DIR / "valid.jsonl").read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        if [m["role"] for m in messages] == ["user", "assistant"]:
            rows.append({"prompt": messages[0]["content"], "completion": messages[1]["content"]})
    for name, part in (("train", rows[30:50]), ("valid", rows[:30])):
        text = "".join(json.dumps(r) + "\n" for r in part)
        (folder / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.slow
def test_completions_with_mask_prompt_and_truncation_match_mlx_lm(tmp_path: Path) -> None:
    folder = completions_folder(tmp_path)
    settings = settings_for(str(folder), **{"data.mask_prompt": True, "data.max_seq_length": 30})
    trainer, tokenizer = make_trainer(settings)
    valid = trainer.data.valid
    assert trainer.data.format == "completions" and len(valid) == 30
    assert all(offset > 0 for _, offset in valid.sequences)  # the prompts are masked
    assert 0 < valid.truncated < len(valid)  # some rows lose their tail to max_seq_length
    before = assert_parity(trainer, tokenizer, folder)
    for _ in range(STEPS):
        trainer.train_step()
    after = assert_parity(trainer, tokenizer, folder)
    assert after != before


def test_validation_batches_are_consecutive_rows_the_same_on_every_pass() -> None:
    rows = [([7] * (1 + (i * 37) % 90), 0) for i in range(174)]  # lengths in no order
    split = Split("valid", "rows", rows)
    whole = eval_batch_rows(split, 4, -1)
    # mlx-lm's batches: rows in file order, four at a time, the last two rows left out
    assert whole == [list(range(i, i + 4)) for i in range(0, 172, 4)]
    assert eval_batch_rows(split, 4, 43) == eval_batch_rows(split, 4, 1000) == whole
    some = eval_batch_rows(split, 4, 10)
    assert some == eval_batch_rows(split, 4, 10)  # not a fresh draw per pass, as mlx-lm's is
    assert len(some) == 10 and all(batch in whole for batch in some)
    assert some == sorted(some)  # in file order
    tokens = {b[0]: sum(len(rows[i][0]) for i in b) for b in whole}
    shortest, longest = min(tokens, key=tokens.__getitem__), max(tokens, key=tokens.__getitem__)
    assert {shortest, longest} <= {b[0] for b in some}  # spread over short and long batches
    assert eval_batch_rows(Split("valid", "rows", [([1], 0)] * 3), 4, -1) == [[0, 1, 2]]
