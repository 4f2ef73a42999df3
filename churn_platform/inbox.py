"""The inbox: files dropped into $CHURN_HOME/inbox/ become raw batches (or are rejected with a
reason), checked without Spark; the sensor asks for one run per accepted file."""

import datetime as dt
import re
import shutil
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from churn_platform.config import DatasetSpec
from churn_platform.core.input_files import InputDataError, read_csv_head
from churn_platform.partitions import DATA_LAYER_KEYS, RAW_CUSTOMERS, ingest_batches
from churn_platform.resources import StateResource
from churn_platform.settings import Settings

INBOX_SUFFIXES = (".csv", ".parquet")
REJECTED = "rejected"


def batch_key(path: Path, now: dt.datetime) -> str:
    """Partition key of an inbox file: UTC arrival time first, so keys sort by arrival."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name)
    return f"{now:%Y%m%dT%H%M%S}Z-{stem}"


def validate_inbox_file(path: Path, spec: DatasetSpec) -> str | None:
    """Why a file cannot be ingested (checked without Spark), or None if it can."""
    required = set(spec.declared_columns)
    try:
        if path.suffix == ".parquet":
            columns = set(pq.read_schema(path).names)
            if pq.ParquetFile(path).metadata.num_rows == 0:
                return "the file has no rows"
        else:
            names, has_data = read_csv_head(path, spec.sources[0].delimiter)
            columns = set(names)
            if not has_data:
                return "the file has a header but no data rows"
    except (InputDataError, OSError, ValueError) as exc:
        return str(exc)
    missing = sorted(required - columns)
    if missing:
        return f"missing required column(s) {missing} named in the dataset spec"
    return None


def unused_name(folder: Path, name: str) -> str:
    """`name`, or `name` with a counter before its suffix if `folder` already holds it: two
    files that arrive under one name (or one sanitized key) never overwrite each other."""
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, n = name, 1
    while (folder / candidate).exists():
        n += 1
        candidate = f"{stem}.{n}{suffix}"
    return candidate


def reject(path: Path, inbox: Path, reason: str) -> Path:
    """Move a bad file out of the inbox with a reason file, so it is never retried."""
    folder = inbox / REJECTED
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / unused_name(folder, path.name)
    shutil.move(str(path), target)
    (folder / f"{target.name}.reason.txt").write_text(reason + "\n")
    return target


def scan_inbox(settings: Settings, spec: DatasetSpec, now: dt.datetime) -> dg.SensorResult:
    """Accept or reject every waiting inbox file; one run per accepted file, the last of which
    also rebuilds the data layers."""
    inbox, batches = settings.inbox, settings.home / "batches"
    inbox.mkdir(parents=True, exist_ok=True)
    batches.mkdir(parents=True, exist_ok=True)
    waiting = sorted(
        (p for p in inbox.iterdir() if p.is_file() and p.suffix in INBOX_SUFFIXES),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    keys, skipped = [], []
    for path in waiting:
        reason = validate_inbox_file(path, spec)
        if reason:
            reject(path, inbox, reason)
            skipped.append(f"{path.name}: {reason}")
            continue
        key = unused_name(batches, batch_key(path, now))
        shutil.move(str(path), batches / key)
        keys.append(key)
    # Runs leave the queue in order, so the last one sees every batch of this scan.
    requests = [
        dg.RunRequest(
            run_key=key,
            partition_key=key,
            asset_selection=list(DATA_LAYER_KEYS) if key == keys[-1] else [RAW_CUSTOMERS],
            tags={"churn/trigger": "inbox", "churn/actor": "sensor:inbox_sensor"},
        )
        for key in keys
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[ingest_batches.build_add_request(keys)] if keys else [],
        skip_reason="; ".join(skipped) if skipped and not requests else None,
        cursor=keys[-1] if keys else None,
    )


def inbox_sensor(interval_seconds: int) -> dg.SensorDefinition:
    """Looks into the inbox `Settings.inbox_interval_seconds` apart."""

    @dg.sensor(
        name="inbox_sensor",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=list(DATA_LAYER_KEYS),
        description="New CSV/Parquet files in $CHURN_HOME/inbox/ become raw batches, then "
        "features.",
    )
    def sensor(context: dg.SensorEvaluationContext, state: StateResource) -> dg.SensorResult:
        result = scan_inbox(state.settings(), state.spec(), dg_now())
        if result.cursor is None:
            result = dg.SensorResult(
                run_requests=result.run_requests,
                dynamic_partitions_requests=result.dynamic_partitions_requests,
                skip_reason=result.skip_reason,
                cursor=context.cursor,
            )
        return result

    return sensor


def dg_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
