"""Incidents open once per failure, get their ITIL matrix priority and resolve on success."""

from pathlib import Path

import pytest

from churn_platform.core.ops.changes import list_changes
from churn_platform.core.ops.incidents import Incident, IncidentStore, format_incidents
from churn_platform.core.ops.log import OpsLog
from churn_platform.runner import materialize_selection
from churn_platform.settings import Settings
from churn_platform_tests.test_ops_log import clear_ambient_ops_env, ops_log_file, ops_records


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_ambient_ops_env(monkeypatch)


def _open(
    store: IncidentStore, key: str = "asset_failed:features", ci: str = "features"
) -> Incident:
    return store.open(
        key, "sensor:run_failure", "pipeline_failure", ci, "high", "medium", "Features failed",
        {"step": "features"},
    )  # fmt: skip


def test_opening_an_incident_twice_gives_one_incident(settings: Settings, ops: OpsLog) -> None:
    store = IncidentStore(settings, ops)
    first, second = _open(store), _open(store)
    assert first.id == second.id and first.id.startswith("INC-")
    (only,) = store.list()
    assert only.occurrences == 2 and only.priority == "P2"
    assert store.get(only.id).to_dict() == only.to_dict()
    assert only.id in format_incidents(store.list())
    opened = [
        r for r in ops_records(ops_log_file(settings)) if r["event_code"] == "incident.opened"
    ]
    assert len(opened) == 1


@pytest.mark.parametrize(
    ("impact", "urgency", "priority"),
    [
        ("high", "high", "P1"),
        ("High", "low", "P3"),
        ("medium", "medium", "P3"),
        ("low", "low", "P5"),
    ],
)
def test_priority_comes_from_the_itil_matrix(
    settings: Settings, impact: str, urgency: str, priority: str
) -> None:
    assert IncidentStore(settings).priority(impact, urgency) == priority


def test_priority_matrix_file_overrides_the_default(
    settings: Settings, ops: OpsLog, tmp_path: Path
) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text("critical: {now: P1, later: P2}\nroutine: {now: P3, later: P4}\n")
    settings = settings.model_copy(update={"priority_matrix": matrix})
    store = IncidentStore(settings, ops)
    assert store.open("k", "cli", "data", "raw", "routine", "now", "late file").priority == "P3"
    with pytest.raises(ValueError, match="known impacts"):
        store.priority("high", "high")
    matrix.write_text("critical: {now: P1, later: P2}\nroutine: {now: P3}\n")
    with pytest.raises(ValueError, match="same urgencies"):
        IncidentStore(settings)


def test_success_of_the_same_asset_resolves_its_incidents(settings: Settings, ops: OpsLog) -> None:
    store = IncidentStore(settings, ops)
    features = _open(store)
    scoring = _open(store, key="asset_failed:scores", ci="scores")
    (resolved,) = store.resolve_for("features", "features materialized successfully")
    assert resolved.id == features.id
    assert [h["status"] for h in resolved.history] == ["open", "resolved"]
    assert resolved.history[0]["ts"] <= resolved.history[1]["ts"] == resolved.resolved_at
    assert [i.id for i in store.list(status="open")] == [scoring.id]
    assert _open(store).id != features.id
    log_text = ops_log_file(settings).read_text()
    assert "incident.resolved" in log_text and "Features failed" not in log_text


def test_a_store_without_an_ops_log_reads_but_does_not_write(
    settings: Settings, ops: OpsLog
) -> None:
    opened = _open(IncidentStore(settings, ops))
    reader = IncidentStore(settings)
    assert [i.id for i in reader.list(status="open")] == [opened.id]
    with pytest.raises(RuntimeError, match="without an ops log"):
        _open(reader, key="another")
    with pytest.raises(RuntimeError, match="without an ops log"):
        reader.resolve(opened.id, "fixed")
    assert reader.get(opened.id).status == "open"


def test_a_failed_cli_run_records_its_configuration_and_opens_an_incident(
    settings: Settings,
) -> None:
    """`churn-platform run` and `backup` runs get the records the daemon's sensors give its runs:
    the configuration they ran with (the first is the baseline), and an incident when they fail
    (here: an audit report with no champion, which needs no Spark)."""
    result = materialize_selection(settings, "audit_report")
    assert not result.success
    assert [c.configuration_item for c in list_changes(settings)] == ["platform_config"]
    (incident,) = IncidentStore(settings).list(status="open")
    assert incident.details["run_id"] == result.run_id
    assert incident.configuration_item == "asset:audit_report"
