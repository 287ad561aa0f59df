"""Data-parallel training over ``mx.distributed``: one run, several ranks, one S-SCU.

``mlx.launch`` starts one ``scu-tui`` per rank. Rank 0 runs the whole
:class:`~scu_tui.run.Run` (controller, sinks, run folder, control socket); every other
rank runs :func:`follow`: it builds the same model and trainer and does, step by step,
what rank 0 tells it. There is no transport here: every message is an ``all_sum`` in
which the other ranks contribute zeros (MLX has no broadcast).

Rank 0 sends one message before each collective it is about to enter (a training step,
an evaluation, a state sync), carrying the knob changes made since the last one, so all
ranks apply identical changes in the same order. A state sync sends rank 0's trainable
weights, optimizer state and trainer counters to every rank: at the start (so resumed and
fresh runs alike start identical everywhere) and after a rollback; followers therefore
never read rank 0's folder (it may be on another machine).

Faults: the ring backend raises ``RuntimeError`` a few seconds after a peer's socket
closes, and ``mlx.launch`` terminates the other ranks when one exits non-zero; a rank that
hangs without dying is caught by :class:`Watchdog`, which ends the process after
:data:`TIMEOUT_ENV` seconds (default ``max(60, 20 x the median step)``) inside one wait.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scu_tui.errors import UserError

if TYPE_CHECKING:
    import mlx.core as mx

    from scu_tui.config import Settings
    from scu_tui.training.loader import Loader
    from scu_tui.training.trainer import StepResult, Trainer

#: Seconds one rank may wait inside one collective before it gives up (a float; the
#: default is max(60 s, 20 x the median step time)).
TIMEOUT_ENV = "SCU_TUI_RANK_TIMEOUT"
#: A folder where every rank appends its per-step numbers (``rank-N.jsonl``): for tests
#: and for checking by hand that all ranks agree. Never the run folder.
TRACE_ENV = "SCU_TUI_RANK_TRACE"
#: The environment ``mlx.launch`` sets on each rank.
LAUNCH_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_RANK")
DEFAULT_TIMEOUT = 60.0
#: Rank 0 loads the model (and maybe downloads it) while the others wait for their first
#: order: that wait gets longer.
SETUP_TIMEOUT = 1800.0
MESSAGE_BYTES = 1 << 16
HEARTBEAT_SECONDS = 1.0


def launched() -> bool:
    """Whether this process was started by a distributed launcher."""
    return any(name in os.environ for name in LAUNCH_ENV)


def init_group() -> Any:
    """The launcher's group (size 1 without one); ``mx.distributed.Group``."""
    import mlx.core as mx

    try:
        return mx.distributed.init(strict=launched())
    except RuntimeError as exc:
        raise UserError(f"mlx.launch: cannot join the other ranks: {exc}") from None


def check_batch(batch_size: int, world: int) -> None:
    """``training.batch_size`` is the global batch: each rank takes an equal slice."""
    if world > 1 and batch_size % world:
        raise UserError(
            f"training.batch_size = {batch_size} does not divide by the {world} ranks; "
            f"choose a multiple of {world}"
        )


# --- messages -------------------------------------------------------------------------------


class Channel:
    """Small JSON messages from rank 0 to everyone, and arrays likewise, over ``all_sum``."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank = int(group.rank())
        self.world = int(group.size())

    def _all_sum(self, array: mx.array) -> mx.array:
        import mlx.core as mx

        out = mx.distributed.all_sum(array, group=self.group)
        mx.eval(out)
        return out

    def exchange(self, ops: list[list[Any]] | None) -> list[list[Any]]:
        """Rank 0 passes its ops and every rank gets them back; others pass None."""
        import mlx.core as mx
        import numpy as np

        buf = np.zeros(MESSAGE_BYTES, np.uint8)
        if self.rank == 0:
            data = json.dumps(ops, allow_nan=True).encode()
            if len(data) > MESSAGE_BYTES - 4:
                raise RuntimeError(f"a message to the other ranks is too long ({len(data)} B)")
            buf[:4] = np.frombuffer(len(data).to_bytes(4, "little"), np.uint8)
            buf[4 : 4 + len(data)] = np.frombuffer(data, np.uint8)
        got = np.array(self._all_sum(mx.array(buf)), dtype=np.uint8)
        size = int.from_bytes(got[:4].tobytes(), "little")
        result: list[list[Any]] = json.loads(got[4 : 4 + size].tobytes())
        return result

    def share_arrays(self, arrays: dict[str, mx.array]) -> dict[str, mx.array]:
        """Rank 0's arrays on every rank (the others pass theirs only for the shapes)."""
        import mlx.core as mx

        out: dict[str, mx.array] = {}
        for key in sorted(arrays):
            value = arrays[key]
            mine = value if self.rank == 0 else mx.zeros_like(value)
            out[key] = mx.distributed.all_sum(mine, group=self.group).astype(value.dtype)
        mx.eval(out)
        return out


def share_state(channel: Channel, trainer: Trainer, state: dict[str, Any]) -> None:
    """Make ``trainer`` hold rank 0's weights, optimizer and counters (``state`` is rank
    0's :meth:`Trainer.portable_state`, already delivered in the message)."""
    from mlx.utils import tree_flatten, tree_unflatten

    if channel.rank != 0:
        trainer.restore_portable_state(state)
    weights = channel.share_arrays(trainer.adapter_weights())
    optimizer = channel.share_arrays(dict(tree_flatten(trainer.optimizer.state)))
    if channel.rank != 0:
        trainer.model.load_weights(list(weights.items()), strict=False)
        trainer.optimizer.state = tree_unflatten(list(optimizer.items()))
        trainer.rebuild()


# --- the watchdog ---------------------------------------------------------------------------


class Watchdog:
    """Ends this process when one wait on the other ranks lasts too long (MLX's
    collectives have no timeout). ``on_timeout`` runs on the watchdog's thread first."""

    def __init__(self, rank: int, on_timeout: Callable[[str], None] | None = None) -> None:
        self.rank = rank
        self.on_timeout = on_timeout
        self.fixed = _timeout_setting()
        self.seconds: list[float] = []
        self._since: float | None = None
        self._limit = 0.0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="rank-watchdog", daemon=True)
        self._thread.start()

    def limit(self) -> float:
        if self.fixed is not None:
            return self.fixed
        median = statistics.median(self.seconds[-50:]) if self.seconds else 0.0
        return max(DEFAULT_TIMEOUT, 20 * median)

    @contextmanager
    def waiting(self, limit: float | None = None) -> Iterator[None]:
        """Guard one wait (a step, an evaluation, a message)."""
        with self._lock:
            self._since = time.monotonic()
            self._limit = self.limit() if limit is None else max(limit, self.limit())
        try:
            yield
        finally:
            with self._lock:
                self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(0.25)
            with self._lock:
                since, limit = self._since, self._limit
            if since is None or time.monotonic() - since < limit:
                continue
            text = f"rank {self.rank}: the other ranks stopped answering for {limit:.0f} s"
            if self.on_timeout is not None:
                with suppress(Exception):  # nothing may keep the process from ending
                    self.on_timeout(text)
            with suppress(Exception):
                sys.stderr.write(f"scu-tui: error: {text}\n")
                sys.stderr.flush()
            os._exit(1)


def _timeout_setting() -> float | None:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds > 0")
    return value


# --- the per-rank trace (tests) -------------------------------------------------------------


def tracer(rank: int, trainer: Trainer) -> Callable[[StepResult], None] | None:
    """When :data:`TRACE_ENV` names a folder, a hook that appends each step there."""
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return None
    path = Path(folder) / f"rank-{rank}.jsonl"

    def trace(result: StepResult) -> None:
        line = {
            "rank": rank,
            "pid": os.getpid(),
            "step": result.step,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "lr": result.lr,
            "tokens": result.tokens,
            **trainer.knobs.values(),
        }
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    return trace


# --- rank 0 ---------------------------------------------------------------------------------


class Leader:
    """Rank 0's side: what :class:`~scu_tui.run.Run` calls (its ``peers``)."""

    def __init__(self, group: Any, settings: Settings) -> None:
        self.channel = Channel(group)
        self.group = group
        self.world_size = self.channel.world
        self.pending: list[list[Any]] = []
        self.need_sync = True  # every run starts from rank 0's state, fresh or resumed
        self.lost = False
        self.trainer: Trainer | None = None
        self.watchdog = Watchdog(0)
        self._last_sent = 0.0
        self._send([["hello", settings.to_dict()]])

    def attach(self, trainer: Trainer, on_timeout: Callable[[str], None]) -> None:
        """The run's trainer is built: trace it, and say how to end the run on a hang."""
        self.trainer = trainer
        self.watchdog.on_timeout = on_timeout
        trainer.after_step = _chain(tracer(0, trainer), self._record_step)

    def _record_step(self, result: StepResult) -> None:
        self.watchdog.seconds.append(result.seconds)

    def share(self, op: list[Any]) -> None:
        """A change every rank makes before the next collective (a knob, say)."""
        self.pending.append(op)

    def resync(self) -> None:
        """Rank 0's state changed wholesale (a rollback): send it with the next order."""
        self.need_sync = True

    @contextmanager
    def collective(self, op: str) -> Iterator[None]:
        """Tell every rank to do ``op`` (``step`` or ``eval``), then do it here."""
        ops, self.pending = [*self.pending], []
        sync = self.need_sync and self.trainer is not None
        if sync:
            assert self.trainer is not None
            ops.append(["sync", self.trainer.portable_state()])
        ops.append([op])
        self._send(ops, limit=SETUP_TIMEOUT if sync else None)
        if sync:
            assert self.trainer is not None
            with self.watchdog.waiting():
                share_state(self.channel, self.trainer, ops[-2][1])
            self.need_sync = False
        try:
            with self.watchdog.waiting():
                yield
        except RuntimeError:  # the ring's "connection to a peer was lost"
            self.lost = True
            raise

    def heartbeat(self) -> None:
        """While paused: let the others know rank 0 is alive (they wait on it)."""
        if time.monotonic() - self._last_sent >= HEARTBEAT_SECONDS:
            ops, self.pending = [*self.pending, ["noop"]], []
            self._send(ops)

    def finish(self, code: int) -> None:
        """The run is over: every rank ends with rank 0's exit code (best effort)."""
        if self.lost:
            return
        try:
            self._send([["stop", int(code)]])
        except RuntimeError:
            self.lost = True

    def _send(self, ops: list[list[Any]], limit: float | None = None) -> None:
        try:
            with self.watchdog.waiting(limit):
                self.channel.exchange(ops)
        except RuntimeError:
            self.lost = True
            raise
        self._last_sent = time.monotonic()


def _chain(
    *hooks: Callable[[StepResult], None] | None,
) -> Callable[[StepResult], None]:
    live = [hook for hook in hooks if hook is not None]

    def call(result: StepResult) -> None:
        for hook in live:
            hook(result)

    return call


# --- the other ranks ------------------------------------------------------------------------


def follow(group: Any, loader: Loader | None = None) -> int:
    """A rank > 0: build the model rank 0 describes, then do what it says until it stops.
    Writes nothing but the trace; returns rank 0's exit code."""
    from scu_tui.config import Settings, merge
    from scu_tui.training.loader import MlxLmLoader
    from scu_tui.training.trainer import Trainer

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # rank 0 decides when to stop, and says so
    channel = Channel(group)
    rank = channel.rank
    watchdog = Watchdog(rank)
    try:
        with watchdog.waiting(SETUP_TIMEOUT):
            hello = channel.exchange(None)
        if hello[0][0] == "stop":  # rank 0 refused the command line: it says why
            return int(hello[0][1])
        settings = merge(Settings(), hello[0][1], source="rank 0")
        loaded = (loader or MlxLmLoader()).load(settings)
        trainer = Trainer(loaded.model, loaded.data, settings, group=group)
        trainer.after_step = _chain(
            tracer(rank, trainer), lambda r: watchdog.seconds.append(r.seconds)
        )
        limit: float | None = SETUP_TIMEOUT  # rank 0 may still be loading
        while True:
            with watchdog.waiting(limit):
                ops = channel.exchange(None)
            limit = None
            for op in ops:
                kind = op[0]
                if kind == "stop":
                    return int(op[1])
                with watchdog.waiting():
                    if kind == "set":
                        trainer.set_knob(op[1], float(op[2]))
                    elif kind == "sync":
                        share_state(channel, trainer, op[1])
                    elif kind == "step":
                        trainer.train_step()
                    elif kind == "eval":
                        trainer.evaluate()
    except RuntimeError as exc:
        if "[ring]" not in str(exc) and "peer" not in str(exc):
            raise
        sys.stderr.write(f"scu-tui: error: rank {rank}: lost the other ranks ({exc})\n")
        return LOST


#: A rank's exit code when the others are gone (training failed).
LOST = 1
