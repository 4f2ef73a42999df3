"""The audit's Dagster side: what the instance recorded about a model version and its scores.

Each upstream layer's materialization the training run read, the training's Dagster run and
every `churn_scores` table, from the instance's event log; `core.audit.report` joins them with
the registry and the change records. Markdown and table metadata (where row previews live) are
left out, so the report never holds customer rows.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from churn_platform.config import DatasetSpec
from churn_platform.core import tracking
from churn_platform.core.audit.report import (
    RAW_LAYER,
    SCORES_ASSET,
    AuditError,
    epoch_iso,
    model_report,
    resolve_version,
    training_run,
    training_summary,
)
from churn_platform.core.sources import batch_order
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import Settings

# Materialization tags Dagster writes; the names are stable but not exported publicly.
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"

SCORES_KEY = dg.AssetKey(SCORES_ASSET)
# Each layer is looked up relative to the layer it feeds (None: the training run itself).
UPSTREAM_LAYERS = (
    ("customer_features", None),
    ("feature_pipeline", None),
    ("cleaned_customers", "customer_features"),
    ("quarantined_customers", "customer_features"),
    (RAW_LAYER, "cleaned_customers"),
)
LAYER_ORDER = (
    RAW_LAYER,
    "cleaned_customers",
    "quarantined_customers",
    "customer_features",
    "feature_pipeline",
)
_PLAIN_METADATA = (
    dg.IntMetadataValue,
    dg.FloatMetadataValue,
    dg.BoolMetadataValue,
    dg.TextMetadataValue,
    dg.PathMetadataValue,
    dg.JsonMetadataValue,
    dg.TimestampMetadataValue,
)
_PAGE = 500
# The event log's before_timestamp filter is strict; one microsecond makes it "at or before".
_MICROSECOND = 1e-6


def _plain_metadata(metadata: Mapping[str, dg.MetadataValue]) -> dict[str, Any]:
    return {k: v.value for k, v in metadata.items() if isinstance(v, _PLAIN_METADATA)}


def _asset_materialization(record: dg.EventLogRecord) -> dg.AssetMaterialization:
    materialization = record.asset_materialization
    if materialization is None:
        raise TypeError(f"event {record.storage_id} of run {record.run_id} is no materialization")
    return materialization


def _materialization(layer: str, record: dg.EventLogRecord) -> dict[str, Any]:
    materialization = _asset_materialization(record)
    return {
        "layer": layer,
        "partition": record.partition_key,
        "data_version": materialization.tags.get(DATA_VERSION_TAG),
        "code_version": materialization.tags.get(CODE_VERSION_TAG),
        "run_id": record.run_id,
        "timestamp": epoch_iso(record.timestamp),
        "metadata": _plain_metadata(materialization.metadata),
    }


class _EventLog:
    """Materialization lookups with each run's records read once."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self._runs: dict[str, list[dg.EventLogRecord]] = {}

    def in_run(self, run_id: str) -> list[dg.EventLogRecord]:
        if run_id not in self._runs:
            connection = self.instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            )
            self._runs[run_id] = list(connection.records)
        return self._runs[run_id]

    def pick(
        self, key: dg.AssetKey, run_id: str, cutoff: float, partition: str | None = None
    ) -> dg.EventLogRecord | None:
        """The materialization in `run_id`, else the latest at or before `cutoff`.

        The same-run record wins because a pipeline run as one run materializes the upstream
        layers after the run started, and another run may have written in between.
        """
        same_run = [
            r for r in self.in_run(run_id) if r.asset_key == key and r.partition_key == partition
        ]
        if same_run:
            return same_run[-1]
        records_filter = dg.AssetRecordsFilter(
            key,
            asset_partitions=None if partition is None else [partition],
            before_timestamp=cutoff + _MICROSECOND,
        )
        records = self.instance.fetch_materializations(records_filter, limit=1).records
        return records[0] if records else None

    def all(self, key: dg.AssetKey) -> list[dg.EventLogRecord]:
        """Every materialization of `key`, oldest first."""
        records: list[dg.EventLogRecord] = []
        cursor = None
        while True:
            page = self.instance.fetch_materializations(
                key, limit=_PAGE, cursor=cursor, ascending=True
            )
            records.extend(page.records)
            if not page.has_more:
                return records
            cursor = page.cursor


def _lineage(
    events: _EventLog, run_id: str, cutoff: float, model_asset: str | None
) -> list[dict[str, Any]]:
    """Each upstream layer as the training run saw it, walking down one layer at a time."""
    chosen: dict[str, dg.EventLogRecord] = {}
    rows: list[dict[str, Any]] = []
    for layer, downstream in UPSTREAM_LAYERS:
        anchor = chosen.get(downstream) if downstream else None
        if downstream and anchor is None:
            continue
        anchor_run, anchor_cutoff = (
            (anchor.run_id, anchor.timestamp) if anchor else (run_id, cutoff)
        )
        key = dg.AssetKey(layer)
        if layer == RAW_LAYER:
            partitions = events.instance.get_materialized_partitions(key)
            picked = [events.pick(key, anchor_run, anchor_cutoff, p) for p in partitions]
            rows += [_materialization(layer, r) for r in picked if r is not None]
            continue
        record = events.pick(key, anchor_run, anchor_cutoff)
        if record is not None:
            chosen[layer] = record
            rows.append(_materialization(layer, record))
    if model_asset:
        key = dg.AssetKey.from_user_string(model_asset)
        rows += [
            _materialization(model_asset, r) for r in events.in_run(run_id) if r.asset_key == key
        ]
    order = {layer: i for i, layer in enumerate(LAYER_ORDER)}
    return sorted(
        rows,
        key=lambda row: (
            order.get(row["layer"], len(order)),
            batch_order(row["partition"] or ""),
            row["partition"] or "",
        ),
    )


def _dagster_run(record: dg.RunRecord) -> dict[str, Any]:
    run = record.dagster_run
    return {
        "id": run.run_id,
        "job_name": run.job_name,
        "status": run.status.value,
        "started_at": epoch_iso(record.start_time),
        "ended_at": epoch_iso(record.end_time),
        "tags": {k: v for k, v in sorted(run.tags.items()) if not k.startswith(".")},
    }


def _score_table(record: dg.EventLogRecord) -> dict[str, Any]:
    metadata = _plain_metadata(_asset_materialization(record).metadata)
    return {
        "run_id": record.run_id,
        "timestamp": epoch_iso(record.timestamp),
        "model_name": metadata.get("model_name"),
        "model_version": metadata.get("model_version"),
        "row_count": metadata.get("row_count"),
        "predicted_churners": metadata.get("predicted_churners"),
        "threshold": metadata.get("threshold"),
        "path": metadata.get("path"),
    }


def audit_model(
    settings: Settings,
    instance: dg.DagsterInstance,
    mlflow: MlflowResource,
    spec: DatasetSpec,
    version: str = "champion",
) -> dict[str, Any]:
    """The lineage of one registered version (a number, "v3", or an alias) as a JSON-ready dict.

    Upstream layers are the materializations the training run read: the one in the same
    Dagster run if the pipeline ran as one run, else the latest at or before the run started;
    each lower layer is found the same way relative to the layer it feeds.
    """
    name = spec.model_name
    client = mlflow.client()
    model = resolve_version(client, name, version)
    events = _EventLog(instance)
    training, lineage = None, []
    if model.run_id:
        run = training_run(client, model.run_id)
        run_id = run.data.tags.get(tracking.TAG_DAGSTER_RUN_ID)
        run_record = instance.get_run_record_by_id(run_id) if run_id else None
        training = training_summary(run, _dagster_run(run_record) if run_record else None)
        if run_id:
            # Without the run record (another instance, or deleted) the MLflow start stands in.
            started = run_record.start_time if run_record else None
            cutoff = started or run.info.start_time / 1000
            asset_key = run.data.tags.get(tracking.TAG_ASSET_KEY)
            lineage = _lineage(events, run_id, cutoff, asset_key)
    scores = [_score_table(r) for r in events.all(SCORES_KEY)]
    return model_report(settings, name, model, training, lineage, scores)


def audit_scores(
    settings: Settings,
    instance: dg.DagsterInstance,
    mlflow: MlflowResource,
    spec: DatasetSpec,
    run_id: str,
) -> dict[str, Any]:
    """The version that produced the `churn_scores` of Dagster run `run_id`, and its lineage."""
    records = [r for r in _EventLog(instance).in_run(run_id) if r.asset_key == SCORES_KEY]
    if not records:
        raise AuditError(f"Dagster run {run_id} materialized no {SCORES_KEY.to_user_string()}")
    table = _score_table(records[-1])
    if table["model_version"] is None:
        raise AuditError(f"churn_scores of run {run_id} records no model_version")
    if table["model_name"] not in (None, spec.model_name):
        raise AuditError(
            f"churn_scores of run {run_id} came from {table['model_name']}, "
            f"not {spec.model_name} (pass the dataset spec it was scored with)"
        )
    report = audit_model(settings, instance, mlflow, spec, table["model_version"])
    return {**report, "scores_run": table}
