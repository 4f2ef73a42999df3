"""How every operations state file is written, locked, named and time-stamped.

The ops log, incidents, change records, audit reports and the registry lock all live under the
state root (`$CHURN_HOME`), readable by the service group only: folders 0750, files 0640. They
share these helpers so that every state file is written, locked and named the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

DIR_MODE = 0o750
FILE_MODE = 0o640


def local_path(location: str) -> Path | None:
    """A `file:` URL or plain path as a Path; None for any other URL scheme."""
    if location.startswith("file:"):
        return Path(unquote(urlsplit(location).path))
    return None if "://" in location else Path(location)


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a `Z`, so timestamps sort as plain strings."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ensure_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create `path` with exactly `mode`; mkdir alone would apply the process umask."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)
    return path


def fix_mode(fd: int, mode: int) -> os.stat_result:
    """Give the open file exactly `mode` (the umask may have narrowed or widened it)."""
    info = os.fstat(fd)
    if stat.S_IMODE(info.st_mode) != mode:
        os.fchmod(fd, mode)
    return info


def fsync_path(path: Path) -> None:
    """fsync a file or folder, so a rename that publishes it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` in one step, so readers and crashes never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


@contextlib.contextmanager
def locked(lock_path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an flock on `lock_path`; shared locks on a missing lock file lock nothing.

    Why flock: it is per open file, so it serializes threads, processes and OpsLog instances
    alike, and the kernel releases it if a holder dies.
    """
    if shared and not lock_path.exists():
        yield
        return
    if shared:
        fd = os.open(lock_path, os.O_RDONLY)
    else:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        fix_mode(fd, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def next_id(directory: Path, prefix: str, now: datetime) -> str:
    """The next free `PREFIX-YYYYMMDD-NNNN` in `directory`; hold the directory's lock around
    allocating it and writing the file, or two writers get the same id."""
    stem = f"{prefix}-{now:%Y%m%d}"
    taken = [int(p.stem.rsplit("-", 1)[1]) for p in directory.glob(f"{stem}-*.json")]
    return f"{stem}-{max(taken, default=0) + 1:04d}"
