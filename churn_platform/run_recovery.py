"""Runs left STARTED by a killed CLI process are marked failed at the next CLI start.

Why: `churn-platform run` executes in its own process; killed (Ctrl-C twice, OOM, reboot) it
never reports an end, and the run would show as running in the UI and history forever. Each
CLI run carries a `churn/process` tag naming its process; a run whose process is gone failed.
"""

from __future__ import annotations

import dagster as dg

from churn_platform.core.ops.log import OpsLog
from churn_platform.core.process_identity import process_alive
from churn_platform.settings import Settings

PROCESS_TAG = "churn/process"
_UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def fail_abandoned_runs(settings: Settings, instance: dg.DagsterInstance) -> list[str]:
    """Mark unfinished CLI runs whose process is gone as FAILED; returns their run ids.

    Runs of other hosts, and runs without the tag (launched by the daemon or the UI, which
    Dagster's own run monitoring covers), are left alone.
    """
    abandoned = [
        run
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=_UNFINISHED))
        if run.tags.get(PROCESS_TAG) and process_alive(run.tags[PROCESS_TAG]) is False
    ]
    if not abandoned:  # the usual case: every CLI start asks, so no log is opened for nothing
        return []
    with OpsLog(settings) as ops:
        for run in abandoned:
            pid = run.tags[PROCESS_TAG].rsplit(":", 2)[1]
            message = (
                f"Abandoned: the CLI process {pid} that ran this run is gone (killed or "
                "crashed); marked failed at the next CLI start."
            )
            instance.report_run_failed(run, message)
            ops.event(
                "dagster.run_abandoned",
                message,
                level="warning",
                outcome="failure",
                dagster_run_id=run.run_id,
                configuration_item=f"dagster_run:{run.run_id}",
            )
    return [run.run_id for run in abandoned]
