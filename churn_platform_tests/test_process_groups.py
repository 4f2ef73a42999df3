"""Stopping child process groups (server, Spark daemons): nothing they started is left behind."""

from __future__ import annotations

import signal
import subprocess
import sys

from churn_platform.core.process_groups import group_alive, stop_groups

# Prints its child's pid once the child runs, then waits; the child only sleeps.
PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(120)\n"
)
IGNORES_SIGINT = (
    "import signal, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


def _leader(script: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, process_group=0
    )
    assert process.stdout is not None
    process.stdout.readline()  # started (and, for PARENT, its child too)
    return process


def test_stopping_a_group_ends_the_processes_its_leader_started() -> None:
    leader = _leader(PARENT)

    assert stop_groups({"parent": leader}, [(signal.SIGTERM, 30.0)]) == []
    assert leader.returncode == -signal.SIGTERM
    assert not group_alive(leader.pid)


def test_a_group_that_ignores_the_first_signal_gets_the_next() -> None:
    leader = _leader(IGNORES_SIGINT)

    stopped = stop_groups({"stubborn": leader}, [(signal.SIGINT, 0.5), (signal.SIGTERM, 30.0)])

    assert stopped == []
    assert leader.returncode == -signal.SIGTERM


def test_a_group_alive_after_the_last_step_is_named() -> None:
    leader = _leader(IGNORES_SIGINT)
    try:
        assert stop_groups({"stubborn": leader}, [(signal.SIGINT, 0.2)]) == ["stubborn"]
    finally:
        stop_groups({"stubborn": leader}, [(signal.SIGKILL, 30.0)])
    assert not group_alive(leader.pid)
