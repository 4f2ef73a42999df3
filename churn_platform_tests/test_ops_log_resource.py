"""Every asset of a run writes to one ops log, closed (its syslog socket too) when the run ends."""

import json
import socket
from pathlib import Path

import dagster as dg
import pytest

from churn_platform.core.ops.log import OpsLog
from churn_platform.resources import OpsLogResource
from churn_platform.settings import load_settings


def test_a_run_shares_one_ops_log_and_closes_it_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[OpsLog] = []
    real_close = OpsLog.close

    def spy_close(self: OpsLog) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(OpsLog, "close", spy_close)
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
