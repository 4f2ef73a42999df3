"""Temporary folders that a later run can tell apart from ones a killed process left behind.

Why a lock and not an age: a backup of a large state root may take hours, while a folder of a
killed one must go at the next run. Each folder holds an flock on its `.owner` file for as long
as its creator lives; the kernel drops it when the creator dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

OWNER = ".owner"
# A folder whose creator died before it could take the lock (a window of microseconds).
UNLOCKED_GRACE_SECONDS = 3600.0


@contextlib.contextmanager
def owned_tempdir(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh folder under `parent`, locked while in use and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd = os.open(folder / OWNER, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def remove_abandoned(parent: Path, prefixes: tuple[str, ...]) -> list[Path]:
    """Delete the folders under `parent` named with `prefixes` whose creator is gone."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for folder in sorted(parent.iterdir()):
        if folder.name.startswith(prefixes) and not folder.is_symlink() and folder.is_dir():
            if _abandoned(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _abandoned(folder: Path) -> bool:
    try:
        fd = os.open(folder / OWNER, os.O_RDONLY)
    except FileNotFoundError:
        return time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_SECONDS
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
