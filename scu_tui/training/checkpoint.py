"""Atomic files and checkpoint folders: a crash or kill never leaves a half-written one.

A checkpoint is written into a hidden temporary folder and renamed into place; the
rename is atomic, so ``checkpoints/step-NNNNNN/`` either exists whole or not at all. One
that goes is first renamed out of view, then deleted, so it too is whole or gone. A
folder replaced by a newer one of its name is moved aside before the new one moves in:
a kill between the two renames leaves the old one aside, and the next writer puts it
back (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CHECKPOINT_RE = re.compile(r"^step-(\d{6,})$")
#: A folder :func:`publish_folder` set aside while its replacement moves in.
OLD_RE = re.compile(r"^\.(.+)\.old-\d+$")
STATE_FILE = "trainer_state.json"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise named(exc, path) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def named(exc: OSError, path: Path) -> OSError:
    """``exc`` with the file it was about: a failed ``write()`` does not say which."""
    if exc.filename is not None and not str(exc.filename).startswith(str(path.parent / ".")):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def publish_folder(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place, replacing an older one of the same name."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def staging_folder(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def discard_folders(folders: Iterable[Path]) -> None:
    """Delete ``folders`` so that a kill at any moment leaves each whole or out of view:
    each is renamed to a hidden ``.NAME.gone-PID`` first (one atomic rename; a stale
    temporary the next writer clears), all of them before any is deleted. Raises OSError
    when one cannot be renamed."""
    gone = []
    for folder in folders:
        hidden = folder.with_name(f".{folder.name}.gone-{os.getpid()}")
        if hidden.exists():
            shutil.rmtree(hidden, ignore_errors=True)
        try:
            os.replace(folder, hidden)
        except FileNotFoundError:
            continue
        gone.append(hidden)
    for parent in {hidden.parent for hidden in gone}:
        _fsync_dir(parent)
    for hidden in gone:
        shutil.rmtree(hidden, ignore_errors=True)


def is_stale_temporary(name: str) -> bool:
    """A hidden ``.NAME.tmp-PID`` / ``.NAME.old-PID`` / ``.NAME.gone-PID`` entry (or a
    write probe) that a writer leaves only when it was killed mid-write."""
    return name.startswith(".") and (
        ".tmp-" in name or ".old-" in name or ".gone-" in name or name.startswith(".write-probe-")
    )


def _set_aside(name: str) -> str | None:
    """The name of the folder a ``.NAME.old-PID`` entry was (see :func:`publish_folder`)."""
    match = OLD_RE.match(name)
    return match.group(1) if match else None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove what killed writers left in a run folder; call only while holding its lock.

    A folder set aside by :func:`publish_folder` whose replacement never moved in (a kill
    between the two renames) is whole: it goes back to its name instead."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for child in list(folder.iterdir()):
            if not is_stale_temporary(child.name):
                continue
            original = _set_aside(child.name)
            if (
                original is not None
                and child.is_dir()
                and not child.is_symlink()
                and not (folder / original).exists()
            ):
                with contextlib.suppress(OSError):  # else a later writer puts it back
                    os.replace(child, folder / original)
                    _fsync_dir(folder)
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
            removed.append(child)
    return removed


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / "checkpoints"
    found = []
    if root.is_dir():
        for child in root.iterdir():
            m = CHECKPOINT_RE.match(child.name)
            if m and (child / STATE_FILE).is_file():
                found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (0 keeps all); remove stale temporaries."""
    root = run_dir / "checkpoints"
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".") and ".tmp-" in child.name:
                pid = child.name.rsplit("-", 1)[-1]
                if pid != str(os.getpid()):
                    shutil.rmtree(child, ignore_errors=True)
    if keep > 0:
        with contextlib.suppress(OSError):
            discard_folders(path for _, path in list_checkpoints(run_dir)[:-keep])
