"""One writer per run folder: an OS lock held for the life of a run.

``DIR/.lock`` is locked with ``flock``; the kernel releases it when the process ends,
``kill -9`` included, so a dead run never leaves a folder locked and a live one can
never be joined by a second writer (``--resume`` of a live run, a new run into it).
The file also names its holder (pid, host) so a refusal can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from scu_tui.errors import UserError
from scu_tui.protocol import RunFile

#: A watcher's liveness probe holds a shared lock for microseconds: a writer that finds the
#: lock taken tries again a few times before it concludes that a run is live.
PROBE_RETRIES = 5
PROBE_RETRY_SECONDS = 0.05


def holder_info(run_dir: Path) -> dict[str, Any]:
    """Who wrote the lock file last (pid, host, since); empty when unknown."""
    try:
        data = json.loads((run_dir / RunFile.LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds the run folder's lock (a live run writes there)."""
    path = run_dir / RunFile.LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's own shared lock
    return False


def live_run_error(run_dir: Path, what: str) -> UserError:
    """The refusal for a second writer: who holds the folder, and how to watch it instead."""
    info = holder_info(run_dir)
    who = ""
    if info.get("pid"):
        host = f" on {info['host']}" if info.get("host") else ""
        who = f" (process {info['pid']}{host})"
    return UserError(
        f"{what} {run_dir}: a live run is writing there{who}; watch and steer it with "
        f"'scu-tui attach {run_dir}', or stop it first"
    )


class RunLock:
    """The exclusive lock on a run folder; :meth:`acquire` refuses a live folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fd: int | None = None

    def acquire(self, what: str = "--output-dir") -> None:
        """Lock the folder (created if needed) or raise :class:`UserError` naming the holder."""
        path = self.run_dir / RunFile.LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"{what} {self.run_dir}: cannot lock {path}: {exc.strerror}") from None
        for attempt in range(PROBE_RETRIES + 1):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt == PROBE_RETRIES:
                    os.close(fd)
                    raise live_run_error(self.run_dir, what) from None
                time.sleep(PROBE_RETRY_SECONDS)  # a watcher's is_locked() probe is brief
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)}
        with contextlib.suppress(OSError):  # the name is a courtesy; the lock is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
