"""A run's folder: every file a run writes there, and the checks before it may write at all.

One writer at a time holds the folder's lock; each file appears whole or not at all (a
staging folder or temporary file, published with one rename), so a crash or a kill never
leaves a half checkpoint, half adapters or a half summary. Reading a run's settings is
here too: attach, replay and generate need it without the training engine, so this module
never imports MLX (the trainer's writes come in as callables).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from scu_tui.config import Settings, merge
from scu_tui.errors import ResumeMismatch, UserError
from scu_tui.protocol import RunFile
from scu_tui.runlock import RunLock
from scu_tui.training.checkpoint import (
    atomic_write,
    atomic_write_json,
    checkpoint_name,
    discard_folders,
    list_checkpoints,
    prune_checkpoints,
    publish_folder,
    remove_stale_temporaries,
    staging_folder,
)

#: Free space below which a failed write is put down to a full disk.
FULL_DISK_BYTES = 16 * 1024 * 1024


def default_output_dir(settings: Settings) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{settings.name}-{stamp}"


def load_run_settings(run_dir: Path) -> Settings:
    """The settings a run was started with (its ``simple_training_config.json``)."""
    path = run_dir / RunFile.CONFIG
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such directory")
    if not path.is_file():
        raise UserError(f"{run_dir}: not a scu-tui run (no {RunFile.CONFIG})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return merge(Settings(), data.get("settings", data), source=str(path))


class RunFolder:
    """The folder of one run, as its one writer sees it.

    ``resuming``: the folder holds a run to continue (``--resume``), else a new run starts
    there (``--output-dir``); error messages name the flag the user gave.
    """

    def __init__(self, path: Path, resuming: bool) -> None:
        self.path = path
        self.resuming = resuming
        self.lock = RunLock(path)
        self.saving = False  # inside a checkpoint write: a second signal must not cut it
        self._created = False

    @property
    def flag(self) -> str:
        return "--resume" if self.resuming else "--output-dir"

    # --- holding the folder -------------------------------------------------------------

    def claim(self) -> None:
        """Make sure the folder can be written, lock it, then refuse to mix two runs in it.

        All before the model loads: a bad ``--output-dir`` answers at once, and a live
        run's folder is never joined by a second writer.
        """
        self._created = ensure_writable_dir(self.path, self.flag)
        self.lock.acquire(self.flag)
        if not self.resuming and (
            (self.path / RunFile.EVENTS).exists() or (self.path / RunFile.CONFIG).exists()
        ):
            raise UserError(
                f"--output-dir {self.path}: already holds a run; continue it with "
                f"--resume {self.path} or choose another directory"
            )
        remove_stale_temporaries(self.path)  # a killed writer's; the lock says it is gone

    def release_after_refusal(self) -> None:
        """After a refusal: unlock, and leave no empty folder behind that we made."""
        self.lock.release()
        if self._created:
            with contextlib.suppress(OSError):
                (self.path / RunFile.LOCK).unlink()
                self.path.rmdir()

    def unlock(self) -> None:
        self.lock.release()

    def forget_dead_control(self) -> None:
        """A ``control.json`` left by a killed run goes (this run holds the lock, so no live
        run can be writing there), so that watchers do not take this run for that one."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / RunFile.CONTROL).unlink()

    # --- checkpoints --------------------------------------------------------------------

    def has_checkpoint(self) -> bool:
        return bool(list_checkpoints(self.path))

    def load_newest_intact(self, load: Callable[[Path], None]) -> tuple[Path, list[str]]:
        """Restore (with ``load``) the newest checkpoint that loads; a damaged newer one is
        passed over (a disk fault or an outside edit must not strand a long run). Returns
        the folder used and a warning for each one passed over."""
        damaged: list[str] = []
        for _, folder in reversed(list_checkpoints(self.path)):
            try:
                load(folder)
            except ResumeMismatch:  # intact, and every older one would say the same
                raise
            except (UserError, KeyError, TypeError, ValueError) as exc:
                damaged.append(f"{folder.name} ({exc})")
                continue
            return folder, [
                f"checkpoint {note} is damaged; using {folder.name}" for note in damaged
            ]
        raise UserError(f"{self.path}: no intact checkpoint to go back to: " + "; ".join(damaged))

    def save_checkpoint(
        self, step: int, save_state: Callable[[Path], None], adapter_config: Mapping[str, Any]
    ) -> Path:
        """Write ``checkpoints/step-NNNNNN`` whole or not at all; returns its folder.

        It is the run's newest state, so a checkpoint of a later step is from a branch a
        rollback abandoned (the run went back to this step or before): those go, after
        this one is in place and never before (see :meth:`drop_after`), so that
        ``--resume``, which takes the newest by step, lands on the branch the run is on.
        """
        final = self.path / RunFile.CHECKPOINTS / checkpoint_name(step)
        tmp = staging_folder(final)
        self.saving = True
        try:
            save_or_raise_oserror(lambda: save_state(tmp), tmp)
            self._write_adapter_config(tmp, adapter_config)
            publish_folder(tmp, final)
            self.drop_after(step)
        finally:
            self.saving = False
            if tmp.exists():  # a failed write leaves no half checkpoint behind
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def drop_after(self, step: int) -> None:
        """Remove the checkpoints of steps after ``step`` (an abandoned branch's), each
        whole or not at all: all are renamed out of view before any is deleted, and a kill
        in the middle leaves every checkpoint up to ``step`` as it was."""
        discard_folders(folder for later, folder in list_checkpoints(self.path) if later > step)

    def prune(self, keep: int) -> None:
        prune_checkpoints(self.path, keep)

    # --- adapters, settings, summary, metrics -------------------------------------------

    def write_adapters(
        self, save_adapters: Callable[[Path], None], adapter_config: Mapping[str, Any]
    ) -> None:
        """The top-level adapters and their config: the newest weights, ready to use."""
        atomic_write(self.path / RunFile.ADAPTERS, _adapter_writer(save_adapters))
        self._write_adapter_config(self.path, adapter_config)

    def save_best(
        self,
        save_adapters: Callable[[Path], None],
        adapter_config: Mapping[str, Any],
        step: int,
        val_loss: float,
    ) -> Path:
        """``best/``: the adapters of the best validation loss so far, whole or not at all."""
        final = self.path / RunFile.BEST
        tmp = staging_folder(final)
        try:
            _adapter_writer(save_adapters)(tmp / RunFile.ADAPTERS)
            self._write_adapter_config(tmp, adapter_config)
            atomic_write_json(tmp / "best.json", {"step": step, "val_loss": val_loss})
            publish_folder(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def write_settings(self, settings: Settings, resolved: Mapping[str, Any]) -> None:
        atomic_write_json(
            self.path / RunFile.CONFIG, {"settings": settings.to_dict(), "resolved": dict(resolved)}
        )

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / RunFile.SUMMARY, dict(summary))

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        atomic_write_json(self.path / RunFile.METRICS, records)

    @staticmethod
    def _write_adapter_config(folder: Path, adapter_config: Mapping[str, Any]) -> None:
        atomic_write_json(folder / RunFile.ADAPTER_CONFIG, dict(adapter_config))


def _adapter_writer(save_adapters: Callable[[Path], None]) -> Callable[[Path], None]:
    """Adapters written to ``tmp`` by ``save_adapters``, which (as
    ``mx.save_safetensors``) appends ".safetensors" unless the name already ends with it."""

    def write(tmp: Path) -> None:
        target = tmp.with_name(tmp.name + ".safetensors")
        try:
            save_or_raise_oserror(lambda: save_adapters(target), target)
            target.replace(tmp)
        finally:
            with contextlib.suppress(OSError):
                target.unlink()

    return write


# --- failed writes and folder checks --------------------------------------------------------


def write_failure_text(exc: OSError) -> str:
    """One line for a failed write: which file, and the system's words (``No space left on
    device``)."""
    where = exc.filename or "the run folder"
    return f"cannot write {where}: {exc.strerror or exc}"


def save_or_raise_oserror(save: Any, path: Path) -> None:
    """Call ``save()``; MLX reports a failed write as a bare RuntimeError ("[write] Unable
    to write ..."): turn it into the OSError it is, naming the file and, when the disk
    is full, saying so."""
    try:
        save()
    except RuntimeError as exc:
        if "write" not in str(exc).lower() and "open" not in str(exc).lower():
            raise
        code = errno.ENOSPC if _nearly_full(path) else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None


def _nearly_full(path: Path) -> bool:
    folder = path if path.is_dir() else path.parent
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


def check_output_dir(path: Path, flag: str = "--output-dir") -> None:
    """Refuse, without touching anything, a folder no run could be written to: one that is
    a file, lies under a file, or sits where this user may not write."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a directory")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(ancestor).f_flag & os.ST_RDONLY)
        why = "a read-only file system" if read_only else "no permission"
        raise UserError(f"{flag} {path}: cannot write in {ancestor}: {why}")


def ensure_writable_dir(path: Path, flag: str) -> bool:
    """Create ``path`` if needed and prove it writable; returns whether it was created.

    A path that is a file, lies under a file or cannot be written is the user's mistake:
    :class:`UserError`, before anything loads.
    """
    check_output_dir(path, flag)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write there: {exc.strerror or exc}") from None
    return created
