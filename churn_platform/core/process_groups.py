"""Child processes that lead process groups of their own, stopped group by group.

A child started with `subprocess.Popen(..., process_group=0)` leads a new group, and what it
starts (Spark executors, Dagster code servers and run workers) stays in that group unless it
asks otherwise: signalling the group reaches all of them, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

_log = logging.getLogger(__name__)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (a zombie leader counts: reap it first)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def leader_and_group_alive(process: subprocess.Popen[bytes]) -> bool:
    """Whether the group `process` leads still has a process; the leader is reaped if it exited,
    or its zombie would keep the group alive."""
    process.poll()
    return group_alive(process.pid)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_groups(
    processes: Mapping[str, subprocess.Popen[bytes]],
    steps: Sequence[tuple[signal.Signals, float]],
) -> list[str]:
    """Signal every live group with each step's signal in turn, waiting up to its grace
    seconds for all of them to end; returns the names of those alive after the last step.

    Steps after the first are logged as warnings: a child that needs them did not stop cleanly.
    """
    for number, (sig, grace) in enumerate(steps):
        alive = {name: p for name, p in processes.items() if leader_and_group_alive(p)}
        if not alive:
            return []
        if number:
            _log.warning("%s still running; sending %s", ", ".join(alive), sig.name)
        for process in alive.values():
            signal_group(process.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(map(leader_and_group_alive, alive.values())):
            time.sleep(0.1)
    return [name for name, p in processes.items() if leader_and_group_alive(p)]
