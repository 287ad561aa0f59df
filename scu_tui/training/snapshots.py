"""Good states kept in memory (the newest, the best, the newest validation pass's), for a
rollback to before damage.

LoRA state is small (a 4B model's r32 adapters with AdamW's two moments: about 0.8 GB),
so a run can keep a few states a few steps apart instead of going back to a checkpoint
on disk, which may be step 0 or already damaged. Which states to keep, and which to go
back to, is the divergence detector's call (:mod:`scu_tui.control.divergence`); this
module only holds and restores them.

A state is everything a rollback puts back: the LoRA weights, the optimizer state (the
moments, its step count, learning rate and weight decay), the trainer's counters, base
schedule and knobs. Not the data position: a rollback goes on past the batches that led
to the damage. MLX arrays are values; a kept state holds its own array objects
(``mx.array(x)``), whose buffers a later update cannot overwrite (MLX reuses a buffer in
place only when nothing else holds it), so training on leaves the kept state as it was.

The kept states are part of every checkpoint of a run with the S-SCU on
(``snapshots.safetensors`` and ``snapshots.json``), so a run resumed after a kill keeps
the same states, and takes the same rollbacks, as the uninterrupted one. A run with it
off neither keeps states nor reads a checkpoint's: nothing of it could roll back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scu_tui.errors import UserError
from scu_tui.training.checkpoint import atomic_write_json

if TYPE_CHECKING:  # MLX loads with the trainer, not with every command that reads runs
    import mlx.core as mx

    from scu_tui.training.trainer import Trainer

ARRAYS_FILE = "snapshots.safetensors"
INDEX_FILE = "snapshots.json"
#: Trainer counters a rollback keeps from the branch it leaves (work done is work done),
#: and the best validation loss: ``best/`` keeps the adapters that reached it, so a later
#: evaluation must beat that, not the older figure of the state gone back to.
KEPT_COUNTERS = ("tokens_seen", "train_seconds", "skipped_steps", "data", "best_val_loss")


@dataclass(frozen=True)
class Snapshot:
    """One kept state: flat name -> array for the adapters and the optimizer, and the
    trainer's portable state (counters, schedule, knobs) at that step."""

    step: int
    adapters: dict[str, mx.array]
    optimizer: dict[str, mx.array]
    trainer: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (*self.adapters.values(), *self.optimizer.values()))


def _own(arrays: Iterable[tuple[str, Any]]) -> dict[str, mx.array]:
    """Arrays of our own, evaluated now (so no later graph reaches back into them)."""
    import mlx.core as mx

    owned = {name: mx.array(value) for name, value in arrays if isinstance(value, mx.array)}
    mx.eval(list(owned.values()))
    return owned


def take(trainer: Trainer) -> Snapshot:
    """The trainer's state as it is now."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    mx.eval(trainer.model.trainable_parameters(), trainer.optimizer.state)
    return Snapshot(
        trainer.step,
        _own(tree_flatten(trainer.model.trainable_parameters())),
        _own(tree_flatten(trainer.optimizer.state)),
        trainer.portable_state(),
    )


def restore(trainer: Trainer, snapshot: Snapshot) -> None:
    """Put ``snapshot`` back into the trainer; the data position and the counters of work
    done (tokens, seconds, skipped steps) stay as they are."""
    from mlx.utils import tree_unflatten

    kept = trainer.portable_state()
    trainer.model.load_weights(list(_own(snapshot.adapters.items()).items()), strict=False)
    trainer.optimizer.state = tree_unflatten(list(_own(snapshot.optimizer.items()).items()))
    state = dict(snapshot.trainer)
    for key in KEPT_COUNTERS:
        state[key] = kept[key]
    trainer.restore_portable_state(state)
    trainer.rebuild()


class Snapshots:
    """The kept states by step; the detector says which to keep."""

    def __init__(self) -> None:
        self._kept: dict[int, Snapshot] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, step: object) -> bool:
        return step in self._kept

    def steps(self) -> list[int]:
        return sorted(self._kept)

    def get(self, step: int) -> Snapshot | None:
        return self._kept.get(step)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._kept.values())

    def take(self, trainer: Trainer) -> Snapshot:
        snapshot = take(trainer)
        self._kept[snapshot.step] = snapshot
        return snapshot

    def retain(self, steps: Iterable[int]) -> None:
        """Keep only the states at ``steps``."""
        wanted = set(steps)
        self._kept = {s: snap for s, snap in self._kept.items() if s in wanted}

    def drop_after(self, step: int) -> None:
        """A rollback to ``step``: the states of the abandoned branch go."""
        self.retain(s for s in self._kept if s <= step)

    def restore(self, trainer: Trainer, step: int) -> bool:
        """Go back to the state kept at ``step``; False when none is kept there."""
        snapshot = self._kept.get(step)
        if snapshot is None:
            return False
        restore(trainer, snapshot)
        self.drop_after(step)
        return True

    # --- in checkpoints -----------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write every kept state into a checkpoint folder being staged."""
        import mlx.core as mx

        arrays: dict[str, mx.array] = {}
        index: list[dict[str, Any]] = []
        for step, snap in sorted(self._kept.items()):
            arrays |= {f"{step}/adapters/{k}": v for k, v in snap.adapters.items()}
            arrays |= {f"{step}/optimizer/{k}": v for k, v in snap.optimizer.items()}
            index.append({"step": step, "trainer": snap.trainer})
        if arrays:
            mx.save_safetensors(str(folder / ARRAYS_FILE), arrays)
        atomic_write_json(folder / INDEX_FILE, {"version": 1, "snapshots": index})

    def load(self, folder: Path) -> None:
        """Read the states a checkpoint kept (none when it has no index: an older run)."""
        import mlx.core as mx

        self._kept = {}
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            return
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            entries = list(index["snapshots"])
            arrays = mx.load(str(folder / ARRAYS_FILE)) if entries else {}
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise UserError(f"checkpoint {folder}: its kept states cannot be read: {exc}") from None
        assert isinstance(arrays, dict)
        for entry in entries:
            step = int(entry["step"])
            adapters, optimizer = f"{step}/adapters/", f"{step}/optimizer/"
            self._kept[step] = Snapshot(
                step,
                {k[len(adapters) :]: v for k, v in arrays.items() if k.startswith(adapters)},
                {k[len(optimizer) :]: v for k, v in arrays.items() if k.startswith(optimizer)},
                dict(entry["trainer"]),
            )
