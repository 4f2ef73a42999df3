"""Which process ran something, recorded so that a later process can tell whether it still runs.

A bare pid is not enough: pids are reused, and they restart after a reboot. The token adds the
host, the kernel's boot id and the process start time, which together name one process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _start_time(pid: int) -> str | None:
    """Clock ticks after boot at which `pid` started (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold ")"


def _boot_id() -> str:
    return _BOOT_ID.read_text().strip()


def process_token(pid: int | None = None) -> str:
    """`host:boot_id:pid:start_time` of this (or another live) process."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{_boot_id()}:{pid}:{_start_time(pid)}"


def process_alive(token: str) -> bool | None:
    """Whether the process named by `token` still runs; None when this host cannot tell."""
    try:
        host, boot_id, pid, start = token.rsplit(":", 3)
    except ValueError:
        return None
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return boot_id == _boot_id() and _start_time(int(pid)) == start
