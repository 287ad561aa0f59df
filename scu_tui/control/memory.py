"""What the S-SCU controller carries from step to step, and how a checkpoint keeps it.

:class:`Memory` holds the controller's state between steps (its history, the hysteresis,
the locks and strikes, where the start-up search stands); the controller
(:class:`~scu_tui.control.controller.Controller`) is a Memory with the policy on top.
Every field round-trips through JSON by its declared type, so exact resume needs no
per-field code.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_args, get_origin, get_type_hints

#: Validation passes remembered (the trend uses the newest few).
VAL_HISTORY = 8

#: A :class:`Memory` field's metadata flag: an older checkpoint may lack it (it starts afresh).
OPTIONAL = "optional"


@dataclass(eq=False, repr=False)  # a controller compares and hashes by identity
class Memory:
    """What the controller carries from step to step, and so what a checkpoint keeps.

    Every field is saved under its name without the underscore and restored by its
    declared type (:meth:`memory_state`, :meth:`load_memory`): a new field costs one line
    here.
    """

    #: (step, loss, grad norm, lr, alignment): alignment is nan when not reported; the
    #: length limit (``scu.window``) is set by the controller
    _history: deque[tuple[int, float, float, float, float]] = field(default_factory=deque)
    #: (step, validation loss, training-loss level at that time)
    _evals: deque[tuple[int, float, float]] = field(
        default_factory=lambda: deque(maxlen=VAL_HISTORY)
    )
    _last_step: int = -1
    _last_check: int = -1
    _counter: int = 0  # proposals issued, for their ids
    #: the diagnosis of the newest checks and on how many in a row (the hysteresis)
    _streak: tuple[str, int] = ("", 0)
    _knob_moved_at: dict[str, int] = field(default_factory=dict)
    _blocked_until: dict[str, int] = field(default_factory=dict)
    _strikes: dict[str, int] = field(default_factory=dict)
    _last_proposed: dict[str, int] = field(default_factory=dict)
    _no_raise_until: int = -1
    #: the step of the newest gradient spike after the warm-up (-1: none); only such a
    #: spike ends the start-up search (the warm-up's norms ramp with its LR)
    _spike_after_warmup: int = field(default=-1, metadata={OPTIONAL: True})
    #: knob -> (direction, step) of its newest taken move, for the reversal lock
    _knob_direction: dict[str, tuple[int, int]] = field(
        default_factory=dict, metadata={OPTIONAL: True}
    )
    #: rules in MUST_HELP whose move showed no effect told from the noise: off for good
    _retired: set[str] = field(default_factory=set, metadata={OPTIONAL: True})
    #: the step the start-up LR search ended at (-1: still searching)
    _search_ended_at: int = field(default=-1, metadata={OPTIONAL: True})
    #: after a damage rollback: (the step it went back to, proposals in the book then);
    #: (-1, 0) while no settling is under way
    _settle: tuple[int, int] = field(default=(-1, 0), metadata={OPTIONAL: True})
    #: proposals in the book when the start-up LR search (re)started: the warm-up's cut,
    #: back to the run's start, starts it again from the lower LR
    _search_from: int = field(default=0, metadata={OPTIONAL: True})
    #: the step the LR trial started from (-1: none yet)
    _trial_at: int = field(default=-1, metadata={OPTIONAL: True})

    def memory_state(self) -> dict[str, Any]:
        """Every field as JSON data, under its name without the underscore."""
        return {key: _encode(getattr(self, name)) for key, name in _memory_keys()}

    def load_memory(self, data: Mapping[str, Any]) -> None:
        """Restore what :meth:`memory_state` returned (possibly through JSON); a field an
        older state lacks (:data:`OPTIONAL`) starts afresh."""
        data = _upgrade(data)
        hints = get_type_hints(Memory)
        fresh = Memory()
        for f in fields(Memory):
            key = f.name.lstrip("_")
            if key not in data and f.metadata.get(OPTIONAL):
                setattr(self, f.name, getattr(fresh, f.name))
                continue
            setattr(self, f.name, _decode(hints[f.name], data[key], getattr(self, f.name)))
        if "search_ended_at" not in data:  # saved before the search: not started late
            self._search_ended_at = max(self._last_step, 0)


def _memory_keys() -> list[tuple[str, str]]:
    """(key in the saved state, attribute) for every field of :class:`Memory`."""
    return [(f.name.lstrip("_"), f.name) for f in fields(Memory)]


def _encode(value: Any) -> Any:
    """A field's value as JSON data: deques and tuples as lists."""
    if isinstance(value, set | frozenset):
        return sorted(_encode(v) for v in value)
    if isinstance(value, deque | tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(hint: Any, raw: Any, current: Any) -> Any:
    """Saved JSON data back to the field's declared type; a deque keeps the length limit of
    the one it replaces (``current``). Raises ValueError, TypeError or KeyError on a value
    of another shape (a checkpoint of another version)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is deque:
        return deque((_decode(args[0], v, None) for v in raw), maxlen=current.maxlen)
    if origin is tuple:
        if not isinstance(raw, list) or len(raw) != len(args):
            raise ValueError(f"expected {len(args)} values, got {raw!r}")
        return tuple(_decode(a, v, None) for a, v in zip(args, raw, strict=True))
    if origin is set:
        return {_decode(args[0], v, None) for v in raw}
    if origin is dict:
        return {_decode(args[0], k, None): _decode(args[1], v, None) for k, v in raw.items()}
    if hint in (int, float, str):
        return hint(raw)
    raise TypeError(f"no rule to restore a {hint}")


def _upgrade(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A state saved before the trainer reported the update alignment: its history rows
    have four values; the fifth is unknown (nan)."""
    history = data.get("history")
    if not isinstance(history, list) or all(len(h) > 4 for h in history):
        return data
    return {**data, "history": [h if len(h) > 4 else [*h, math.nan] for h in history]}
