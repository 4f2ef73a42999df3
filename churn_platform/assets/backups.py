"""Backups: one verified archive of the state root per day, a restore drill, and retention.

The assets are thin wrappers over `churn_platform.core.backup`; the champion's golden-prediction
hash and the restore drill (which need MLflow, and Spark only to score) are in
`churn_platform.backup_drill`.
"""

import datetime as dt
import logging
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_pyspark import PySparkResource
from mlflow.exceptions import MlflowException
from pyspark.sql import DataFrame

from churn_platform import checks
from churn_platform.backup_drill import GOLDEN_INPUT, TAG_GOLDEN_HASH, champion_golden, drill
from churn_platform.config import DatasetSpec
from churn_platform.core.backup.archive import create_backup
from churn_platform.core.backup.errors import BackupError
from churn_platform.core.backup.retention import apply_retention, list_backups
from churn_platform.core.backup.verify import verify_backup
from churn_platform.core.features import engineer_features
from churn_platform.core.ops.incidents import IncidentStore
from churn_platform.core.ops.log import OpsLog, prune_logs
from churn_platform.core.tracking import ModelIntegrityError
from churn_platform.core.versions import current_version
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import SPARK_POOL, OpsLogResource, StateResource
from churn_platform.settings import Settings

CODE_VERSION = "1"
BACKUP_VERIFIED = "backup_verified"
RESTORE_DRILL = "restore_drill"
GOLDEN_ROWS = 200
# Failures that mean "this backup does not restore to a working champion", as opposed to bugs.
_DRILL_FAILURES = (BackupError, MlflowException, ModelIntegrityError, OSError)

# A partition is the day a backup is taken; end_offset=1 makes today's partition exist, so an
# operator can back up "now" before a risky change and the 02:00 run labels its own day.
backup_partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1)


def needs_golden_input(settings: Settings) -> bool:
    """True while no golden input is stored but a cleaned table exists to take it from.

    The golden input is written once and then reused, so a backup run selects the
    `golden_input` asset only while this holds (before the first pipeline run there is nothing
    to take it from, and no champion needs it).
    """
    return (
        current_version(settings.warehouse / GOLDEN_INPUT) is None
        and current_version(settings.warehouse / "cleaned_customers") is not None
    )


def _verify(
    context: dg.AssetExecutionContext, settings: Settings, partition: str, ops: OpsLog
) -> dg.AssetCheckResult:
    """Re-read the published archive; a failure is logged and opens (or bumps) one incident."""
    started = time.monotonic()
    verified = verify_backup(partition, settings)
    seconds = time.monotonic() - started
    problems = [str(problem) for problem in verified.problems]
    item = f"backup:{partition}"
    incidents = IncidentStore(settings, ops_log=ops)
    metadata: dict[str, Any] = {
        "archive": verified.archive,
        "problems": dg.MetadataValue.json(problems),
        "seconds": seconds,
    }
    if verified.ok:
        incidents.resolve_for(item, "backup re-created and verified", actor=BACKUP_VERIFIED)
    else:
        ops.event(
            "backup.verify.failed",
            f"backup {partition} failed verification: {len(problems)} problem(s)",
            level=logging.ERROR,
            outcome="failure",
            configuration_item=item,
            context=context,
        )
        incident = incidents.open(
            dedupe_key=f"backup-verify:{partition}",
            detected_by=BACKUP_VERIFIED,
            category="backup",
            configuration_item=item,
            impact="high",
            urgency="medium",
            summary=f"Backup {partition} failed verification ({len(problems)} problem(s))",
            details={"archive": verified.archive, "problems": problems[:50]},
        )
        metadata["incident"] = incident.id
    return dg.AssetCheckResult(
        check_name=BACKUP_VERIFIED,
        passed=verified.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
    )


def _restore_drill(
    context: dg.AssetExecutionContext,
    pyspark: PySparkResource,
    mlflow: MlflowResource,
    settings: Settings,
    spec: DatasetSpec,
    golden: dict[str, Any] | None,
    proven: bool,
    ops: OpsLog,
) -> dg.AssetCheckResult:
    """Only a restore proves a backup; a refused archive or unloadable champion fails it. A
    drill that re-scored the champion and matched records the hash on its live version."""
    partition = context.partition_key
    started = time.monotonic()
    try:
        passed, metadata = drill(
            lambda: pyspark.spark_session, settings, spec, partition, golden, proven
        )
    except _DRILL_FAILURES as exc:
        passed, metadata = False, {"error": f"{type(exc).__name__}: {exc}"}
    seconds = time.monotonic() - started
    if passed and golden is not None and metadata.get("rescored"):
        mlflow.client().set_model_version_tag(
            golden["model_name"],
            golden["model_version"],
            TAG_GOLDEN_HASH,
            f"{golden['golden_input']}:{golden['golden_prediction_hash']}",
        )
    ops.event(
        "restore.drill.completed",
        f"restore drill of backup {partition}: {'passed' if passed else 'FAILED'}",
        level=logging.INFO if passed else logging.ERROR,
        outcome="success" if passed else "failure",
        configuration_item=f"backup:{partition}",
        metrics={"duration_s": seconds},
        context=context,
    )
    return dg.AssetCheckResult(
        check_name=RESTORE_DRILL,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**metadata, "seconds": seconds},
    )


@dg.asset(pool=SPARK_POOL, kinds={"spark", "parquet"}, code_version=CODE_VERSION)
def golden_input(state: StateResource, cleaned_customers: DataFrame) -> DataFrame:
    """The fixed rows the champion's predictions are hashed on, in every backup.

    The first `GOLDEN_ROWS` customers by id of the cleaned table, engineered as the model
    expects them. Backup runs select it only while it is missing (`backup_selection`), so a
    restore drill scores exactly the rows the hash was taken on, however the data moves on.
    """
    spec = state.spec()
    rows = cleaned_customers.orderBy(spec.id_column).limit(GOLDEN_ROWS)
    return engineer_features(rows, spec).coalesce(1)


@dg.asset(
    deps=[golden_input],
    partitions_def=backup_partitions,
    pool=SPARK_POOL,
    kinds={"backup", "spark"},
    code_version=CODE_VERSION,
    check_specs=checks.blocking_specs("platform_backup", [BACKUP_VERIFIED, RESTORE_DRILL]),
)
def platform_backup(
    context: dg.AssetExecutionContext,
    pyspark: PySparkResource,
    state: StateResource,
    ops_log: OpsLogResource,
    mlflow: MlflowResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The day's archive of the state root (MLflow, Dagster, warehouse, config, ops logs)."""
    partition = context.partition_key
    spec = state.spec()
    # Back up the registry the champion is read from, whatever MLFLOW_TRACKING_URI says.
    settings = state.settings().model_copy(
        update={
            "mlflow_tracking_uri": mlflow.tracking_uri,
            "mlflow_artifact_root": mlflow.artifact_root,
        }
    )
    # The session starts (a JVM, with the lazy resource) only if the champion must be scored.
    golden, proven = champion_golden(lambda: pyspark.spark_session, mlflow, settings, spec)
    result = create_backup(settings, partition, golden)
    ops = ops_log.log()
    ops.event(
        "backup.completed",
        f"backup {partition}: {result.files} files, {result.archive_bytes} bytes archived "
        f"in {result.seconds:.1f} s",
        configuration_item=f"backup:{partition}",
        metrics={
            "files": result.files,
            "bytes": result.archive_bytes,
            "duration_s": result.seconds,
        },
        model_version=golden["model_version"] if golden else None,
        context=context,
    )
    yield dg.MaterializeResult(
        metadata={
            "archive": dg.MetadataValue.path(result.archive),
            "archive_bytes": result.archive_bytes,
            "source_bytes": result.bytes,
            "files": result.files,
            "seconds": result.seconds,
            "champion_name": golden["model_name"] if golden else "none",
            "champion_version": golden["model_version"] if golden else "none",
            "golden_prediction_hash": golden["golden_prediction_hash"] if golden else "none",
            "not_included": dg.MetadataValue.json(result.manifest["not_included"]),
        }
    )
    yield _verify(context, settings, partition, ops)
    golden = result.manifest["golden"]
    yield _restore_drill(context, pyspark, mlflow, settings, spec, golden, proven, ops)


@dg.asset(deps=[platform_backup], kinds={"backup"}, code_version=CODE_VERSION)
def backup_retention(
    context: dg.AssetExecutionContext, state: StateResource, ops_log: OpsLogResource
) -> dg.MaterializeResult:
    """The backups kept by grandfather-father-son retention; the rest are deleted.

    Operations log files older than CHURN_LOG_RETENTION_DAYS are pruned here too: only after a
    verified backup (a failed check skips this asset), so a pruned file is still in the backups.
    """
    settings = state.settings()
    deleted = apply_retention(settings)
    kept = list_backups(settings)
    ops = ops_log.log()
    ops.event(
        "backup.retention.applied",
        f"backup retention kept {len(kept)} and deleted {len(deleted)} backup(s)",
        configuration_item="backup:retention",
        metrics={"kept": len(kept), "deleted": len(deleted)},
        context=context,
    )
    pruned = prune_logs(settings, ops)
    return dg.MaterializeResult(
        metadata={
            "kept": dg.MetadataValue.json([day.isoformat() for day in kept]),
            "deleted": dg.MetadataValue.json([day.isoformat() for day in deleted]),
            "policy": f"{settings.backup_keep_daily} daily, {settings.backup_keep_weekly} weekly, "
            f"{settings.backup_keep_monthly} monthly",
            "logs_pruned": dg.MetadataValue.json(pruned),
            "log_retention_days": settings.log_retention_days,
        }
    )


backup_assets = [golden_input, platform_backup, backup_retention]


def backup_selection(settings: Settings, retention: bool = True) -> list[dg.AssetKey]:
    """The assets a backup run materializes: the golden input only while it is missing."""
    chosen = [platform_backup, backup_retention] if retention else [platform_backup]
    if needs_golden_input(settings):
        chosen.insert(0, golden_input)
    return [asset.key for asset in chosen]


# Partitioned by day: Dagster takes the partitions from platform_backup (passing them again is
# deprecated); golden_input and backup_retention are unpartitioned and run once per run.
backup_job = dg.define_asset_job(
    "backup_job",
    selection=dg.AssetSelection.assets(*backup_assets),
    description="Back up the state root for one day, verify and drill it, then apply retention.",
)


@dg.schedule(
    name="backup_job_schedule",
    job=backup_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def backup_schedule(context: dg.ScheduleEvaluationContext, state: StateResource) -> dg.RunRequest:
    """Nightly at 02:00 UTC for that day's partition; RUNNING so backups never wait for someone
    to switch the schedule on. The golden input joins the run only while it is missing."""
    day = context.scheduled_execution_time.astimezone(dt.UTC).date().isoformat()
    return dg.RunRequest(partition_key=day, asset_selection=backup_selection(state.settings()))
