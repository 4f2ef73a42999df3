"""A CLI run whose process was killed does not stay STARTED: the next CLI start fails it."""

from __future__ import annotations

import json
import subprocess
import sys

import dagster as dg

from churn_platform.core.process_identity import process_alive, process_token
from churn_platform.run_recovery import PROCESS_TAG
from churn_platform.runner import open_instance
from churn_platform.settings import Settings


def _dead_process_token() -> str:
    """The token of a process that has exited (it ran with this very start time)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    token = process_token(child.pid)
    child.kill()
    child.wait()
    return token


def _started_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> str:
    run = instance.add_run(
        dg.DagsterRun(job_name="__ASSET_JOB", status=dg.DagsterRunStatus.STARTED, tags=tags)
    )
    return run.run_id


def test_process_tokens_tell_live_from_dead_processes() -> None:
    assert process_alive(process_token()) is True
    assert process_alive(_dead_process_token()) is False
    assert process_alive("another-host:boot:1:1") is None


def test_the_next_cli_start_fails_runs_whose_process_is_gone(settings: Settings) -> None:
    instance = open_instance(settings)
    killed = _started_run(instance, {PROCESS_TAG: _dead_process_token()})
    alive = _started_run(instance, {PROCESS_TAG: process_token()})
    launched = _started_run(instance, {"dagster/schedule_name": "retrain"})

    instance = open_instance(settings)  # as every CLI command that runs Dagster starts

    status = {r: instance.get_run_by_id(r).status for r in (killed, alive, launched)}
    assert status == {
        killed: dg.DagsterRunStatus.FAILURE,
        alive: dg.DagsterRunStatus.STARTED,
        launched: dg.DagsterRunStatus.STARTED,
    }
    failure = instance.all_logs(killed, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "CLI process" in (failure[0].message or "")
    events = [e for e in _ops_events(settings) if e["event_code"] == "dagster.run_abandoned"]
    assert [e["dagster_run_id"] for e in events] == [killed]


def _ops_events(settings: Settings) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(settings.logs.glob("ops-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
