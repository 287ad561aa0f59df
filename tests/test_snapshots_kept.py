"""Good states kept in memory for a rollback: copies that training on cannot touch, a
restore that continues exactly as the state did, and a round trip through a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_trainer import make_trainer, params

from scu_tui.training.snapshots import Snapshots

pytestmark = pytest.mark.slow  # each test trains the demo model a few steps


def optimizer_arrays(trainer) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {k: np.array(v) for k, v in tree_flatten(trainer.optimizer.state)}


def test_training_on_leaves_a_kept_state_as_it_was() -> None:
    trainer = make_trainer()
    for _ in range(2):
        trainer.train_step()
    kept = Snapshots()
    snap = kept.take(trainer)
    weights, moments = params(trainer), optimizer_arrays(trainer)
    for _ in range(3):
        trainer.train_step()
    assert any(not np.array_equal(weights[k], v) for k, v in params(trainer).items())
    for name, value in snap.adapters.items():
        assert np.array_equal(np.array(value), weights[name]), name
    for name, value in snap.optimizer.items():
        assert np.array_equal(np.array(value), moments[name]), name
    assert snap.step == 2 and snap.nbytes > 0


def test_a_restored_state_continues_as_it_did_past_other_batches() -> None:
    """Back to step 2 with the knobs of then; the data goes on from where it was (a
    rollback skips the batches that led to the damage), work counters stay."""
    trainer, twin = make_trainer(), make_trainer()
    for t in (trainer, twin):
        for _ in range(2):
            t.train_step()
    kept = Snapshots()
    kept.take(trainer)
    trainer.set_knob("weight_decay", 0.05)
    for _ in range(3):
        trainer.train_step()
    trainer.best_val_loss = 0.5  # an evaluation on the branch left: best/ holds it
    tokens = trainer.tokens_seen
    assert kept.restore(trainer, 2)
    assert trainer.step == 2 and trainer.knobs.weight_decay == twin.knobs.weight_decay
    assert trainer.tokens_seen == tokens and trainer.best_val_loss == 0.5
    for name, value in params(twin).items():
        assert np.array_equal(params(trainer)[name], value)
    twin.stream.load_state(trainer.stream.state())  # the same batches from here on
    assert trainer.train_step().loss == pytest.approx(twin.train_step().loss, rel=1e-6)
    assert not kept.restore(trainer, 7)


def test_kept_states_go_through_a_checkpoint_folder(tmp_path: Path) -> None:
    trainer = make_trainer()
    kept = Snapshots()
    for _ in range(2):
        trainer.train_step()
        kept.take(trainer)
    kept.save(tmp_path)
    again = Snapshots()
    again.load(tmp_path)
    assert again.steps() == [1, 2]
    for step in (1, 2):
        a, b = kept.get(step), again.get(step)
        assert a is not None and b is not None
        assert json.dumps(a.trainer) == json.dumps(b.trainer)  # nan == nan as text
        for name in a.adapters:
            assert np.array_equal(np.array(a.adapters[name]), np.array(b.adapters[name]))
        for name in a.optimizer:
            assert np.array_equal(np.array(a.optimizer[name]), np.array(b.optimizer[name]))
    kept.retain([2])
    assert kept.steps() == [2]
    empty = Snapshots()
    empty.load(tmp_path / "nothing")  # an older checkpoint without kept states
    assert len(empty) == 0
