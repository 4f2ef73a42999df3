"""Every asset of a run, and every sensor evaluation, writes to one ops log, closed (its syslog
socket too) when the run or the evaluation ends."""

import json
import socket
from pathlib import Path

import dagster as dg
import pytest

from churn_platform import automation
from churn_platform.core.ops.incidents import IncidentStore
from churn_platform.core.ops.log import OpsLog
from churn_platform.definitions import build_definitions
from churn_platform.resources import OpsLogResource
from churn_platform.settings import Settings, load_settings


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[OpsLog]:
    """Every OpsLog closed during the test, in order."""
    closed: list[OpsLog] = []
    real_close = OpsLog.close

    def spy_close(self: OpsLog) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(OpsLog, "close", spy_close)
    return closed


def test_a_run_shares_one_ops_log_and_closes_it_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed: list[OpsLog]
) -> None:
    used: list[OpsLog] = []

    @dg.asset
    def first(context: dg.AssetExecutionContext, ops_log: OpsLogResource) -> None:
        used.append(ops_log.log())
        ops_log.log().event("etl.ingest.completed", "first", context=context)
        assert closed == []  # still open for the next asset of the run

    @dg.asset(deps=[first])
    def second(context: dg.AssetExecutionContext, ops_log: OpsLogResource) -> None:
        used.append(ops_log.log())
        ops_log.log().event("etl.clean.completed", "second", context=context)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        settings = load_settings(
            {
                "CHURN_HOME": str(tmp_path),
                "CHURN_SYSLOG_ADDRESS": f"127.0.0.1:{server.getsockname()[1]}",
            }
        )
        result = dg.materialize(
            [first, second],
            resources={"ops_log": OpsLogResource(platform=settings)},
            instance=dg.DagsterInstance.ephemeral(),
        )
        forwarded = [server.recv(65536).decode() for _ in range(2)]

    assert result.success
    assert len(used) == 2 and used[0] is used[1]
    assert closed == [used[0]]
    lines = [line for p in settings.logs.glob("ops-*.jsonl") for line in p.read_text().splitlines()]
    records = [json.loads(line) for line in lines]
    assert [r["event_code"] for r in records] == ["etl.ingest.completed", "etl.clean.completed"]
    assert {r["dagster_run_id"] for r in records} == {result.run_id}
    assert all("etl." in datagram for datagram in forwarded)


def test_the_run_failure_sensor_logs_through_the_ops_log_resource(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, closed: list[OpsLog]
) -> None:
    """The sensor takes the definitions' ops_log resource (one OpsLog per evaluation, closed at
    its end) rather than opening a log of its own."""
    handed_out: list[OpsLog] = []
    real_log = OpsLogResource.log

    def spy_log(self: OpsLogResource) -> OpsLog:
        handed_out.append(real_log(self))
        return handed_out[-1]

    monkeypatch.setattr(OpsLogResource, "log", spy_log)

    @dg.asset
    def flaky() -> None:
        raise RuntimeError("source unreachable")

    defs = build_definitions(settings)
    resources = {name: defs.resources[name] for name in ("state", "ops_log")}
    with dg.instance_for_test() as instance:
        result = dg.materialize([flaky], instance=instance, raise_on_error=False)
        # Entered as the daemon enters it: the resource lives for one evaluation.
        with dg.build_run_status_sensor_context(
            sensor_name="incident_on_run_failure",
            dagster_event=result.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(result.run_id),
            resources=resources,
        ) as context:
            automation.incident_on_run_failure(context.for_run_failure())

    (incident,) = IncidentStore(settings).list(status="open")
    assert incident.configuration_item == "asset:flaky"
    assert handed_out and closed == [handed_out[0]]  # the resource's one log, closed once
    logged = settings.logs.glob("ops-*.jsonl")
    assert any(incident.id in path.read_text() for path in logged)
