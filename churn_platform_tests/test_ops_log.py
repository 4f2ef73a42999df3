"""Ops records stay tamper-evident, private and one per line; incidents and changes stay sane."""

import json
import multiprocessing
import os
import socket
import stat
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from churn_platform.ops_log import (
    GENESIS_HASH,
    RECORD_FIELDS,
    Incident,
    IncidentStore,
    OpsLog,
    format_incidents,
    format_verify_report,
    list_changes,
    prune_logs,
    pseudonym_key,
    pseudonymize,
    read_chain_heads,
    record_change,
    record_config_change_if_any,
    sanitize,
    verify_logs,
)
from churn_platform.settings import Settings, load_settings

RAW_ID = "7590-VHVEG"


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHURN_SYSLOG_ADDRESS", "CHURN_PRIORITY_MATRIX", "CHURN_LOG_RETENTION_DAYS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ops(settings: Settings) -> Iterator[OpsLog]:
    log = OpsLog(settings)
    yield log
    log.close()


def _log_file(settings: Settings) -> Path:
    (path,) = settings.logs.glob("ops-*.jsonl")
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_events(ops: OpsLog, count: int) -> Path:
    for index in range(count):
        ops.event(
            "training.completed", f"model {index} trained", metrics={"auc": 0.8 + index / 100}
        )
    return _log_file(ops.settings)


def _only_broken(settings: Settings) -> tuple[int | None, str]:
    report = verify_logs(settings.logs)
    (check,) = report.files
    assert not report.ok and not check.ok
    return check.line, check.reason or ""


def test_records_carry_the_schema_and_a_valid_chain(ops: OpsLog, settings: Settings) -> None:
    ops.event(
        "etl.ingest.rows_quarantined", "3 rows quarantined", level="warning", metrics={"rows": 3}
    )
    try:
        int(RAW_ID)
    except ValueError as exc:
        ops.event("inference.batch.failed", "scoring failed", error=exc, asset_key=["scores"])
    records = _records(_log_file(settings))
    assert [list(r) for r in records] == [list(RECORD_FIELDS)] * 2
    assert [r["seq"] for r in records] == [1, 2]
    assert records[0]["prev_hash"] == GENESIS_HASH
    assert records[1]["prev_hash"] == records[0]["hash"]
    assert records[0]["ts"].endswith("Z") and records[0]["component"] == "etl"
    assert [r["itil_event_type"] for r in records] == ["warning", "exception"]
    assert records[1]["asset_key"] == records[1]["configuration_item"] == "scores"
    assert records[1]["error_type"] == "ValueError" and records[1]["outcome"] == "failure"
    assert "'<redacted>'" in records[1]["error_message"]
    assert verify_logs(settings.logs).ok
    assert read_chain_heads(settings.logs)[_log_file(settings).name].hash == records[1]["hash"]


def test_verify_reports_an_edited_record(ops: OpsLog, settings: Settings) -> None:
    path = _write_events(ops, 5)
    lines = path.read_text().splitlines()
    record = json.loads(lines[2])
    record["metrics"]["auc"] = 0.99
    lines[2] = json.dumps(record, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    line, reason = _only_broken(settings)
    assert line == 3 and "edited" in reason


def test_verify_reports_a_deleted_record(ops: OpsLog, settings: Settings) -> None:
    path = _write_events(ops, 5)
    lines = path.read_text().splitlines()
    del lines[2]
    path.write_text("\n".join(lines) + "\n")
    line, reason = _only_broken(settings)
    assert line == 3 and "deleted" in reason


def test_verify_reports_reordered_records(ops: OpsLog, settings: Settings) -> None:
    path = _write_events(ops, 5)
    lines = path.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines) + "\n")
    line, reason = _only_broken(settings)
    assert line == 2 and "reordered" in reason


def test_verify_reports_truncation_even_after_later_appends(
    ops: OpsLog, settings: Settings
) -> None:
    path = _write_events(ops, 5)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n")
    line, reason = _only_broken(settings)
    assert line == 4 and "truncated" in reason
    ops.event("training.completed", "appended after the truncation")
    line, reason = _only_broken(settings)
    assert line == 4 and "prev_hash" in reason


def test_append_after_a_crash_before_the_head_update_adopts_the_record(
    ops: OpsLog, settings: Settings
) -> None:
    heads_path = settings.logs / "chain_heads.json"
    _write_events(ops, 2)
    stale_heads = heads_path.read_text()
    ops.event("training.completed", "appended, then the process died")
    heads_path.write_text(stale_heads)
    line, reason = _only_broken(settings)
    assert line == 3 and "without updating the chain head" in reason
    ops.event("training.completed", "next event after the restart")
    assert verify_logs(settings.logs).ok


def test_verify_reports_a_deleted_file(ops: OpsLog, settings: Settings) -> None:
    _write_events(ops, 2).unlink()
    report = verify_logs(settings.logs)
    assert not report.ok and "missing" in (report.files[0].reason or "")
    assert "BROKEN" in format_verify_report(report)


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_modes_do_not_depend_on_umask(
    umask: int, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHURN_PSEUDONYM_KEY")
    previous = os.umask(umask)
    try:
        bare = load_settings(os.environ)
        ops = OpsLog(bare)
        ops.event("backup.completed", "backup written")
        ops.pseudonymize(RAW_ID)
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(settings.logs) == 0o750
    assert mode(_log_file(settings)) == 0o640
    assert mode(settings.logs / "chain_heads.json") == 0o640
    assert mode(settings.home / "secrets") == 0o700
    assert mode(settings.home / "secrets" / "pseudonym.key") == 0o600


def _append_from_worker(home: str, worker: int, count: int, start: Event) -> None:
    settings = load_settings({"CHURN_HOME": home, "CHURN_PSEUDONYM_KEY": "k"})
    ops = OpsLog(settings)
    start.wait()
    for index in range(count):
        ops.event("inference.batch.completed", f"worker {worker} batch {index}", actor=f"w{worker}")
    ops.close()


def test_concurrent_appends_from_processes_keep_one_chain(settings: Settings) -> None:
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Event()
    workers, count = 4, 20
    processes = [
        spawn.Process(target=_append_from_worker, args=(str(settings.home), w, count, start))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * workers
    records = _records(_log_file(settings))
    assert [r["seq"] for r in records] == list(range(1, workers * count + 1))
    assert sorted(r["message"] for r in records) == sorted(
        f"worker {w} batch {i}" for w in range(workers) for i in range(count)
    )
    assert verify_logs(settings.logs).ok


def test_injected_newline_and_fake_json_stay_one_record(ops: OpsLog, settings: Settings) -> None:
    fake = json.dumps({"event_code": "registry.alias.set", "seq": 99, "hash": "0" * 64})
    ops.event("etl.ingest.completed", f"done\n{fake}\r\n\x1b[2J\u2028next", component="etl\nx")
    raw = _log_file(settings).read_bytes()
    assert raw.count(b"\n") == 1 and raw.isascii()
    (record,) = _records(_log_file(settings))
    assert record["event_code"] == "etl.ingest.completed"
    assert record["message"].startswith("done\\n{") and "\\x1b[2J\\u2028next" in record["message"]
    assert record["component"] == "etl\\nx"
    assert sanitize("a\u202eb\tc") == "a\\u202eb\\tc"
    assert verify_logs(settings.logs).ok


def test_pseudonyms_are_stable_keyed_and_keep_raw_ids_out(ops: OpsLog, settings: Settings) -> None:
    assert pseudonymize(RAW_ID, "key-a") == pseudonymize(RAW_ID, "key-a")
    assert pseudonymize(RAW_ID, "key-a") != pseudonymize(RAW_ID, "key-b")
    assert RAW_ID not in pseudonymize(RAW_ID, "key-a")
    assert ops.pseudonymize(RAW_ID) == pseudonymize(RAW_ID, "test-pseudonym-key")
    ops.event(
        "inference.customer.flagged", "high churn risk", configuration_item=ops.pseudonymize(RAW_ID)
    )
    try:
        raise KeyError(RAW_ID)
    except KeyError as exc:
        ops.event("inference.batch.failed", "lookup failed", error=exc)
    assert RAW_ID not in _log_file(settings).read_text()


def test_generated_pseudonym_key_is_stored_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHURN_PSEUDONYM_KEY")
    bare = load_settings(os.environ)
    first = pseudonym_key(bare)
    assert pseudonym_key(bare) == first == (bare.home / "secrets" / "pseudonym.key").read_text()


def _open(
    store: IncidentStore, key: str = "asset_failed:features", ci: str = "features"
) -> Incident:
    return store.open(
        key, "sensor:run_failure", "pipeline_failure", ci, "high", "medium", "Features failed",
        {"step": "features"},
    )  # fmt: skip


def test_opening_an_incident_twice_gives_one_incident(settings: Settings) -> None:
    store = IncidentStore(settings)
    first, second = _open(store), _open(store)
    assert first.id == second.id and first.id.startswith("INC-")
    (only,) = store.list()
    assert only.occurrences == 2 and only.priority == "P2"
    assert store.get(only.id).to_dict() == only.to_dict()
    assert only.id in format_incidents(store.list())
    opened = [r for r in _records(_log_file(settings)) if r["event_code"] == "incident.opened"]
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
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text("critical: {now: P1, later: P2}\nroutine: {now: P3, later: P4}\n")
    monkeypatch.setenv("CHURN_PRIORITY_MATRIX", str(matrix))
    store = IncidentStore(settings)
    assert store.open("k", "cli", "data", "raw", "routine", "now", "late file").priority == "P3"
    with pytest.raises(ValueError, match="known impacts"):
        store.priority("high", "high")
    matrix.write_text("critical: {now: P1, later: P2}\nroutine: {now: P3}\n")
    with pytest.raises(ValueError, match="same urgencies"):
        IncidentStore(settings)


def test_success_of_the_same_asset_resolves_its_incidents(settings: Settings) -> None:
    store = IncidentStore(settings)
    features = _open(store)
    scoring = _open(store, key="asset_failed:scores", ci="scores")
    (resolved,) = store.resolve_for("features", "features materialized successfully")
    assert resolved.id == features.id
    assert [h["status"] for h in resolved.history] == ["open", "resolved"]
    assert resolved.history[0]["ts"] <= resolved.history[1]["ts"] == resolved.resolved_at
    assert [i.id for i in store.list(status="open")] == [scoring.id]
    assert _open(store).id != features.id
    log_text = _log_file(settings).read_text()
    assert "incident.resolved" in log_text and "Features failed" not in log_text


def test_change_records_are_written_and_listed(settings: Settings) -> None:
    change = record_change(
        settings, "normal", "model:churn", "user:lead", "3", "4", {"auc": 0.84, "gate": "passed"},
        "Promote v4 to champion",
    )  # fmt: skip
    record_change(settings, "standard", "features", "schedule:nightly", None, "v2", {}, "Refresh")
    assert (settings.home / "changes" / f"{change.id}.json").exists()
    assert [c.id for c in list_changes(settings, "model:churn")] == [change.id]
    assert len(list_changes(settings)) == 2
    (logged,) = [
        r for r in _records(_log_file(settings)) if r["configuration_item"] == "model:churn"
    ]
    assert logged["event_code"] == "change.recorded" and logged["metrics"] == {"auc": 0.84}
    with pytest.raises(ValueError, match="change_type"):
        record_change(settings, "urgent", "x", "me", None, None, {}, "bad type")


def test_config_changes_are_recorded_once_per_actual_change(
    settings: Settings, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("id_column: customerID\n")
    assert record_config_change_if_any(settings, spec) is not None
    assert record_config_change_if_any(settings, spec) is None
    spec.write_text("id_column: customer_id\n")
    changed = record_config_change_if_any(settings, spec)
    assert changed is not None and changed.summary == "dataset spec changed"
    assert record_config_change_if_any(settings, spec) is None
    env = {"CHURN_HOME": str(settings.home), "CHURN_AUC_FLOOR": "0.8"}
    retuned = record_config_change_if_any(load_settings({**env, "CHURN_PSEUDONYM_KEY": "a"}), spec)
    assert retuned is not None and list(retuned.why["changed_settings"]) == ["auc_floor"]
    assert (
        record_config_change_if_any(load_settings({**env, "CHURN_PSEUDONYM_KEY": "b"}), spec)
        is None
    )
    assert len(list_changes(settings, "platform_config")) == 3
    state = json.loads((settings.home / "changes" / "config_state.json").read_text())
    assert "pseudonym_key" not in state["settings"]


def test_prune_removes_old_files_and_logs_it(ops: OpsLog, settings: Settings) -> None:
    path = _write_events(ops, 2)
    old = path.with_name("ops-2000-01-01.jsonl")
    path.rename(old)
    heads_path = settings.logs / "chain_heads.json"
    heads = json.loads(heads_path.read_text())
    heads[old.name] = heads.pop(path.name)
    heads_path.write_text(json.dumps(heads))
    assert prune_logs(settings) == [old.name]
    assert not old.exists()
    (record,) = _records(_log_file(settings))
    assert record["event_code"] == "logs.pruned" and old.name in record["message"]
    assert verify_logs(settings.logs).ok


def test_events_are_forwarded_to_syslog(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        monkeypatch.setenv("CHURN_SYSLOG_ADDRESS", f"127.0.0.1:{server.getsockname()[1]}")
        ops = OpsLog(load_settings(os.environ))
        ops.event("restore.completed", "restore verified")
        ops.close()
        datagram = server.recv(65536).decode().rstrip("\x00")
    assert datagram.endswith(_log_file(settings).read_text().strip())


def test_dagster_context_fills_run_fields_and_the_event_log(settings: Settings) -> None:
    import dagster as dg  # imported here so the spawned append workers start without dagster

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["2026-01"]))
    def scores(context: dg.AssetExecutionContext) -> None:
        ops = OpsLog(settings)
        ops.event("inference.batch.completed", "scored", metrics={"rows": 7}, context=context)
        ops.close()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [scores], partition_key="2026-01", instance=instance, tags={"user": "ana"}
    )
    (record,) = _records(_log_file(settings))
    assert record["dagster_run_id"] == result.run_id
    assert record["asset_key"] == "scores" and record["partition"] == "2026-01"
    assert record["actor"] == "user:ana"
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("[ops] inference.batch.completed" in m and "rows=7" in m for m in messages)
