"""Ops log records stay tamper-evident, private, one per line, and are forwarded as written."""

import json
import multiprocessing
import os
import shutil
import socket
import stat
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from churn_platform.core.ops.anchor import read_anchor
from churn_platform.core.ops.chain import GENESIS_HASH, anchor_path, read_chain_heads
from churn_platform.core.ops.log import RECORD_FIELDS, OpsLog, prune_logs
from churn_platform.core.ops.privacy import pseudonym_key, pseudonymize, sanitize
from churn_platform.core.ops.verify import format_verify_report, verify_logs
from churn_platform.settings import Settings, load_settings

RAW_ID = "7590-VHVEG"


def clear_ambient_ops_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset the variables that would change what ops records say (also used by sibling tests)."""
    for name in ("CHURN_SYSLOG_ADDRESS", "CHURN_PRIORITY_MATRIX", "CHURN_LOG_RETENTION_DAYS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_ambient_ops_env(monkeypatch)


def ops_log_file(settings: Settings) -> Path:
    """The one ops log file a test wrote (also used by sibling tests)."""
    (path,) = settings.logs.glob("ops-*.jsonl")
    return path


def ops_records(path: Path) -> list[dict]:
    """The parsed records of an ops log file (also used by sibling tests)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_events(ops: OpsLog, count: int) -> Path:
    """Append `count` events; returns today's file (the newest)."""
    for index in range(count):
        ops.event(
            "training.completed", f"model {index} trained", metrics={"auc": 0.8 + index / 100}
        )
    return max(ops.settings.logs.glob("ops-*.jsonl"))


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
    records = ops_records(ops_log_file(settings))
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
    assert read_chain_heads(settings.logs)[ops_log_file(settings).name].hash == records[1]["hash"]


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
    assert mode(ops_log_file(settings)) == 0o640
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
    records = ops_records(ops_log_file(settings))
    assert [r["seq"] for r in records] == list(range(1, workers * count + 1))
    assert sorted(r["message"] for r in records) == sorted(
        f"worker {w} batch {i}" for w in range(workers) for i in range(count)
    )
    assert verify_logs(settings.logs).ok


def test_injected_newline_and_fake_json_stay_one_record(ops: OpsLog, settings: Settings) -> None:
    fake = json.dumps({"event_code": "registry.alias.set", "seq": 99, "hash": "0" * 64})
    ops.event("etl.ingest.completed", f"done\n{fake}\r\n\x1b[2J\u2028next", component="etl\nx")
    raw = ops_log_file(settings).read_bytes()
    assert raw.count(b"\n") == 1 and raw.isascii()
    (record,) = ops_records(ops_log_file(settings))
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
    assert RAW_ID not in ops_log_file(settings).read_text()


def test_generated_pseudonym_key_is_stored_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHURN_PSEUDONYM_KEY")
    bare = load_settings(os.environ)
    first = pseudonym_key(bare)
    assert pseudonym_key(bare) == first == (bare.home / "secrets" / "pseudonym.key").read_text()


def old_log_file(ops: OpsLog, day: str = "2000-01-01") -> Path:
    """Today's log file (two events) renamed to `day`, with its chain head and anchor entry, as
    if written then (also used by sibling tests)."""
    settings = ops.settings
    path = _write_events(ops, 2)
    old = path.with_name(f"ops-{day}.jsonl")
    path.rename(old)
    heads_path = settings.logs / "chain_heads.json"
    heads = json.loads(heads_path.read_text())
    heads[old.name] = heads.pop(path.name)
    heads_path.write_text(json.dumps(heads))
    anchor = json.loads(anchor_path(settings).read_text())
    anchor["files"][old.name] = anchor["files"].pop(path.name)
    anchor_path(settings).write_text(json.dumps(anchor))
    return old


def test_prune_removes_old_files_and_logs_it(ops: OpsLog, settings: Settings) -> None:
    old = old_log_file(ops)
    assert prune_logs(settings, ops) == [old.name]
    assert not old.exists()
    (record,) = ops_records(ops_log_file(settings))
    assert record["event_code"] == "logs.pruned" and old.name in record["message"]
    assert verify_logs(settings.logs, anchor_path(settings)).ok


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
    assert datagram.endswith(ops_log_file(settings).read_text().strip())


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
    (record,) = ops_records(ops_log_file(settings))
    assert record["dagster_run_id"] == result.run_id
    assert record["asset_key"] == "scores" and record["partition"] == "2026-01"
    assert record["actor"] == "user:ana"
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("[ops] inference.batch.completed" in m and "rows=7" in m for m in messages)


def test_a_forged_duplicate_key_before_the_original_is_reported(
    ops: OpsLog, settings: Settings
) -> None:
    path = _write_events(ops, 3)
    lines = path.read_text().splitlines()
    lines[1] = '{"message":"FORGED",' + lines[1][1:]
    path.write_text("\n".join(lines) + "\n")
    line, reason = _only_broken(settings)
    assert line == 2 and "twice" in reason


def _verify_with_anchor(settings: Settings, archived: dict | None = None) -> list[str]:
    report = verify_logs(settings.logs, anchor_path(settings), archived)
    return [f"{check.file}: {check.reason}" for check in report.files if not check.ok]


def test_deleting_the_logs_folder_is_reported_by_the_anchor(
    ops: OpsLog, settings: Settings
) -> None:
    name = _write_events(ops, 3).name
    assert _verify_with_anchor(settings) == []
    shutil.rmtree(settings.logs)
    assert _verify_with_anchor(settings) == [
        f"{name}: chain head missing: the anchor records seq 3 for this file"
    ]
    ops.event("training.completed", "an event after the deletion does not re-base the anchor")
    assert f"{name}: prev_hash does not match the preceding record" in "\n".join(
        _verify_with_anchor(settings)
    )


def test_deleting_logs_and_anchor_is_reported_when_a_backup_anchored_them(
    ops: OpsLog, settings: Settings
) -> None:
    _write_events(ops, 2)
    archived = read_anchor(anchor_path(settings))
    shutil.rmtree(settings.logs)
    anchor_path(settings).unlink()
    assert _verify_with_anchor(settings) == []  # nothing left says a log existed...
    (problem,) = _verify_with_anchor(settings, archived)  # ...but the backup does
    assert "chain anchor missing" in problem


def test_a_rolled_back_heads_file_disagrees_with_the_anchor(
    ops: OpsLog, settings: Settings
) -> None:
    path = _write_events(ops, 2)
    heads_path = settings.logs / "chain_heads.json"
    lines, heads = path.read_text().splitlines(), heads_path.read_text()
    ops.event("training.completed", "to be cut off together with its head")
    path.write_text("\n".join(lines) + "\n")
    heads_path.write_text(heads)
    assert verify_logs(settings.logs).ok  # file and heads agree with each other
    (problem,) = _verify_with_anchor(settings)
    assert "anchor mismatch" in problem
