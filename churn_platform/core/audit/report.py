"""The audit report of one model version, assembled from plain facts.

An auditor asks "which data, code and decision put this model in front of customers, and what
did it score?". The answers are spread over the MLflow registry (version, run, provenance tags),
the orchestrator's event log (each layer's materialization and data version), the change records
(promotions and rollbacks) and the `churn_scores` materializations. This module reads the
registry and the change records and joins them with the lineage rows the Dagster layer
(`churn_platform.audit_lineage`) found. The report holds metadata only, never rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from churn_platform.core import tracking
from churn_platform.core.ops.changes import list_changes
from churn_platform.core.ops.files import utc_iso
from churn_platform.core.ops.privacy import redact_url
from churn_platform.settings import Settings

SCORES_ASSET = "churn_scores"
RAW_LAYER = "raw_customers"


class AuditError(LookupError):
    """What the audit was asked about does not exist; the message names what and where."""


def epoch_iso(seconds: float | None) -> str | None:
    """Seconds since the epoch as `utc_iso` text; None stays None."""
    return None if seconds is None else utc_iso(datetime.fromtimestamp(seconds, UTC))


def resolve_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """A version number ("3" or "v3") or an alias ("champion") of the registered model."""
    number = version.removeprefix("v")
    try:
        if number.isdigit():
            return client.get_model_version(name, number)
        return client.get_model_version_by_alias(name, version)
    except MlflowException as exc:
        raise AuditError(f"{name}: no version or alias {version!r} in the registry: {exc}") from exc


def training_run(client: MlflowClient, run_id: str) -> Run:
    """The MLflow run behind a version; AuditError when the tracking store lacks it."""
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise AuditError(f"MLflow run {run_id} is not in the tracking store: {exc}") from exc


def training_summary(run: Run, dagster_run: Mapping[str, Any] | None) -> dict[str, Any]:
    """The MLflow run behind a version (parameters, metrics, provenance) and its Dagster run."""
    tags = run.data.tags
    return {
        "mlflow_run": {
            "id": run.info.run_id,
            "name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "started_at": epoch_iso(run.info.start_time / 1000),
            "ended_at": epoch_iso(run.info.end_time / 1000 if run.info.end_time else None),
            "params": dict(sorted(run.data.params.items())),
            "metrics": dict(sorted(run.data.metrics.items())),
            "tags": {k: v for k, v in sorted(tags.items()) if not k.startswith("mlflow.")},
        },
        "provenance": {
            "code_version": tags.get(tracking.TAG_CODE_VERSION),
            "git_commit": tags.get(tracking.TAG_GIT_COMMIT),
            "data_version": tags.get(tracking.TAG_DATA_VERSION),
            "dagster_run_id": tags.get(tracking.TAG_DAGSTER_RUN_ID),
            "asset_key": tags.get(tracking.TAG_ASSET_KEY),
            "model_kind": tags.get(tracking.TAG_MODEL_KIND),
            "model_sha256": tags.get(tracking.TAG_MODEL_SHA256),
        },
        "dagster_run": dagster_run,
    }


def _checks(
    model: ModelVersion, training: Mapping[str, Any] | None, lineage: list[dict[str, Any]]
) -> dict[str, bool | None]:
    """Do the event log and the registry agree with what the training run recorded?"""
    provenance = training["provenance"] if training else {}
    data_version, sha = provenance.get("data_version"), provenance.get("model_sha256")
    features = next((r["data_version"] for r in lineage if r["layer"] == "customer_features"), None)
    return {
        "features_data_version": features == data_version if features and data_version else None,
        "model_sha256": model.tags.get(tracking.TAG_MODEL_SHA256) == sha if sha else None,
    }


def _changes(settings: Settings, name: str, version: str) -> list[dict[str, Any]]:
    """Change records that made this version champion, or took the role away from it."""
    tag = f"v{version}"
    records = []
    for change in list_changes(settings, f"model:{name}"):
        if tag not in (change.what_to, change.what_from):
            continue
        role = "became champion" if change.what_to == tag else "stopped being champion"
        records.append({**change.to_dict(), "role": role})
    return records


def _source_files(lineage: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every file or table each raw batch was read from, with the checksum taken at ingestion."""
    files = []
    for row in lineage:
        if row["layer"] != RAW_LAYER:
            continue
        checksums = row["metadata"].get("source_sha256") or {}
        names = {
            location: name for name, location in (row["metadata"].get("sources") or {}).items()
        }
        # Redacted again: materializations recorded before sources were redacted hold URLs.
        files += [
            {
                "batch": row["partition"],
                "source": names.get(path),
                "path": redact_url(path),
                "sha256": sha,
            }
            for path, sha in sorted(checksums.items())
        ]
    return files


def model_report(
    settings: Settings,
    name: str,
    model: ModelVersion,
    training: Mapping[str, Any] | None,
    lineage: list[dict[str, Any]],
    score_tables: list[dict[str, Any]],
) -> dict[str, Any]:
    """The JSON-ready report of version `model` of `name`, from what the orchestrator recorded.

    `training` comes from `training_summary`, `lineage` and `score_tables` from the event log
    (each lineage row: layer, partition, data and code version, run, timestamp, metadata).
    """
    number = str(model.version)
    return {
        "generated_at": utc_iso(datetime.now(UTC)),
        "model": {
            "name": name,
            "version": number,
            "aliases": sorted(model.aliases or []),
            "status": model.status,
            "created_at": epoch_iso(model.creation_timestamp / 1000),
            "source": model.source,
            "run_id": model.run_id,
            "tags": dict(sorted(model.tags.items())),
        },
        "training": training,
        "checks": _checks(model, training, lineage),
        "lineage": lineage,
        "source_files": _source_files(lineage),
        "changes": _changes(settings, name, number),
        "score_tables": [
            s
            for s in score_tables
            if s["model_version"] == number and s["model_name"] in (None, name)
        ],
    }
