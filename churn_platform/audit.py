"""Model lineage audit: from a registered version back to the source files it was trained on.

An auditor asks "which data, code and decision put this model in front of customers, and what
did it score?". The answers are spread over the MLflow registry (version, run, provenance tags),
the Dagster event log (each layer's materialization and data version), the change records
(promotions and rollbacks) and the `churn_scores` materializations. This module joins them into
one JSON-ready report and renders it as Markdown. The report holds metadata only, never rows:
Markdown and table metadata (where row previews live) are left out.
"""

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from churn_platform.assets.ingestion import batch_order
from churn_platform.config import DatasetSpec
from churn_platform.core import registry, tracking
from churn_platform.core.ops.changes import list_changes
from churn_platform.core.ops.files import FILE_MODE, ensure_dir, utc_iso, write_json_atomic
from churn_platform.core.ops.privacy import redact_url
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import Settings

# Materialization tags Dagster writes; the names are stable but not exported publicly.
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"

SCORES_KEY = dg.AssetKey("churn_scores")
RAW_LAYER = "raw_customers"
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
# The metadata worth a glance in the lineage table; the JSON report keeps all of it.
DETAIL_KEYS = {
    RAW_LAYER: ("rows_read", "rows_malformed"),
    "cleaned_customers": ("rows_in", "rows_out", "rows_superseded"),
    "quarantined_customers": ("quarantine_total", "quarantine_ratio", "by_reason"),
    "customer_features": ("row_count", "vector_size"),
    "feature_pipeline": ("stages",),
}
MODEL_DETAIL_KEYS = ("roc_auc", "pr_auc", "threshold")
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


class AuditError(LookupError):
    """What the audit was asked about does not exist; the message names what and where."""


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else utc_iso(datetime.fromtimestamp(seconds, UTC))


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
        "timestamp": _iso(record.timestamp),
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


def _resolve_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """A version number ("3" or "v3") or an alias ("champion") of the registered model."""
    number = version.removeprefix("v")
    try:
        if number.isdigit():
            return client.get_model_version(name, number)
        return client.get_model_version_by_alias(name, version)
    except MlflowException as exc:
        raise AuditError(f"{name}: no version or alias {version!r} in the registry: {exc}") from exc


def _dagster_run(record: dg.RunRecord) -> dict[str, Any]:
    run = record.dagster_run
    return {
        "id": run.run_id,
        "job_name": run.job_name,
        "status": run.status.value,
        "started_at": _iso(record.start_time),
        "ended_at": _iso(record.end_time),
        "tags": {k: v for k, v in sorted(run.tags.items()) if not k.startswith(".")},
    }


def _mlflow_run(mlflow: MlflowResource, run_id: str) -> Run:
    try:
        return mlflow.client().get_run(run_id)
    except MlflowException as exc:
        raise AuditError(f"MLflow run {run_id} is not in the tracking store: {exc}") from exc


def _training(run: Run, run_record: dg.RunRecord | None) -> dict[str, Any]:
    """The MLflow run behind a version (parameters, metrics, provenance) and its Dagster run."""
    tags = run.data.tags
    return {
        "mlflow_run": {
            "id": run.info.run_id,
            "name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "started_at": _iso(run.info.start_time / 1000),
            "ended_at": _iso(run.info.end_time / 1000 if run.info.end_time else None),
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
        "dagster_run": _dagster_run(run_record) if run_record else None,
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


def _score_table(record: dg.EventLogRecord) -> dict[str, Any]:
    metadata = _plain_metadata(_asset_materialization(record).metadata)
    return {
        "run_id": record.run_id,
        "timestamp": _iso(record.timestamp),
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
    model = _resolve_version(mlflow.client(), name, version)
    number = str(model.version)
    events = _EventLog(instance)
    training, lineage = None, []
    if model.run_id:
        run = _mlflow_run(mlflow, model.run_id)
        run_id = run.data.tags.get(tracking.TAG_DAGSTER_RUN_ID)
        run_record = instance.get_run_record_by_id(run_id) if run_id else None
        training = _training(run, run_record)
        if run_id:
            # Without the run record (another instance, or deleted) the MLflow start stands in.
            started = run_record.start_time if run_record else None
            cutoff = started or run.info.start_time / 1000
            asset_key = run.data.tags.get(tracking.TAG_ASSET_KEY)
            lineage = _lineage(events, run_id, cutoff, asset_key)
    scores = [_score_table(r) for r in events.all(SCORES_KEY)]
    return {
        "generated_at": utc_iso(datetime.now(UTC)),
        "model": {
            "name": name,
            "version": number,
            "aliases": sorted(model.aliases or []),
            "status": model.status,
            "created_at": _iso(model.creation_timestamp / 1000),
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
            s for s in scores if s["model_version"] == number and s["model_name"] in (None, name)
        ],
    }


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


def report_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, default=str)


def write_report(settings: Settings, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write `$CHURN_HOME/audit/audit-<model>-v<version>[-scores-<run>]` as .md and .json."""
    model = report["model"]
    stem = f"audit-{model['name']}-v{model['version']}"
    if report.get("scores_run"):
        stem += f"-scores-{report['scores_run']['run_id'][:8]}"
    directory = ensure_dir(settings.home / "audit")
    markdown, data = directory / f"{stem}.md", directory / f"{stem}.json"
    staging = markdown.with_name(f".{markdown.name}.{os.getpid()}.tmp")
    staging.write_text(render_markdown(report), encoding="utf-8")
    staging.chmod(FILE_MODE)
    os.replace(staging, markdown)
    write_json_atomic(data, json.loads(report_json(report)))
    return markdown, data


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _when(iso: str | None) -> str:
    return "-" if not iso else f"{iso[:10]} {iso[11:19]}Z"


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]], empty: str) -> list[str]:
    if not rows:
        return [f"_{empty}_"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _check(result: bool | None) -> str:
    return {True: "matches", False: "**MISMATCH**", None: "not checked"}[result]


def _model_section(model: Mapping[str, Any]) -> list[str]:
    tags = model["tags"]
    metrics = {
        k.removeprefix(registry.METRIC_TAG_PREFIX): v
        for k, v in tags.items()
        if k.startswith(registry.METRIC_TAG_PREFIX)
    }
    decisions = {k: v for k, v in tags.items() if k.startswith(("promotion.", "rollback."))}
    lines = [
        "## Model",
        "",
        f"- **Name**: {model['name']}",
        f"- **Version**: {model['version']}",
        f"- **Aliases**: {', '.join(model['aliases']) or 'none'}",
        f"- **Registered**: {_when(model['created_at'])} ({model['status']})",
        f"- **Model kind**: {tags.get(tracking.TAG_MODEL_KIND, '-')}",
        f"- **Threshold**: {tags.get(tracking.TAG_THRESHOLD, '-')}",
        f"- **Source**: `{model['source']}`",
        "",
    ]
    lines += _table(("metric", "value"), sorted(metrics.items()), "no metric tags")
    if decisions:
        lines += ["", *(f"- `{k}`: {_cell(v)}" for k, v in sorted(decisions.items()))]
    return lines


def _training_section(training: Mapping[str, Any] | None, checks: Mapping[str, Any]) -> list[str]:
    if training is None:
        return ["## Training run", "", "_No MLflow run is recorded for this version._"]
    run, provenance, dagster_run = (
        training["mlflow_run"],
        training["provenance"],
        training.get("dagster_run"),
    )
    lines = [
        "## Training run",
        "",
        f"- **MLflow run**: `{run['id']}` ({run['name']}, {run['status']}, "
        f"{_when(run['started_at'])} to {_when(run['ended_at'])})",
        f"- **Code version**: {provenance['code_version'] or '-'}",
        f"- **Git commit**: `{provenance['git_commit'] or '-'}`",
        f"- **Data version** (customer_features): `{provenance['data_version'] or '-'}` "
        f"(Dagster event log: {_check(checks['features_data_version'])})",
        f"- **Dagster asset**: {provenance['asset_key'] or '-'}",
        f"- **Model SHA-256**: `{provenance['model_sha256'] or '-'}` "
        f"(registered version: {_check(checks['model_sha256'])})",
    ]
    if dagster_run:
        lines.append(
            f"- **Dagster run**: `{dagster_run['id']}` (job {dagster_run['job_name']}, "
            f"{dagster_run['status']}, {_when(dagster_run['started_at'])} to "
            f"{_when(dagster_run['ended_at'])})"
        )
    else:
        lines.append(
            f"- **Dagster run**: `{provenance['dagster_run_id'] or '-'}` "
            "(not in this Dagster instance)"
        )
    params = sorted(run["params"].items())
    return [*lines, "", *_table(("parameter", "value"), params, "no parameters logged")]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report for people: model, training run, data lineage, sources, decisions, outputs."""
    model = report["model"]
    lines = [f"# Audit: {model['name']} v{model['version']}", ""]
    lines.append(f"Generated {_when(report['generated_at'])}.")
    scores_run = report.get("scores_run")
    if scores_run:
        lines.append(
            f"Audited scores: run `{scores_run['run_id']}` ({_when(scores_run['timestamp'])}, "
            f"{_cell(scores_run['row_count'])} rows) was produced by this version."
        )
    lines += ["", *_model_section(model), ""]
    lines += [*_training_section(report["training"], report["checks"]), ""]
    lineage_rows = [
        (
            f"{row['layer']}[{row['partition']}]" if row["partition"] else row["layer"],
            row["data_version"],
            row["run_id"],
            _when(row["timestamp"]),
            ", ".join(
                f"{key}={_cell(row['metadata'][key])}"
                for key in DETAIL_KEYS.get(row["layer"], MODEL_DETAIL_KEYS)
                if key in row["metadata"]
            ),
        )
        for row in report["lineage"]
    ]
    lines += ["## Data lineage", ""]
    lines += _table(
        ("layer", "data version", "run", "when", "detail"),
        lineage_rows,
        "no materializations found for the training run",
    )
    lines += ["", "## Source files", ""]
    lines += _table(
        ("batch", "path", "sha256"),
        [(f["batch"], f["path"], f["sha256"]) for f in report["source_files"]],
        "no source checksums recorded",
    )
    lines += ["", "## Promotion history", ""]
    lines += _table(
        ("change", "type", "when", "who", "from", "to", "role", "summary"),
        [
            (
                c["id"],
                c["change_type"],
                _when(c["recorded_at"]),
                c["who"],
                c["what_from"],
                c["what_to"],
                c["role"],
                c["summary"],
            )
            for c in report["changes"]
        ],
        "no change records name this version",
    )
    lines += ["", "## Score tables", ""]
    lines += _table(
        ("run", "when", "rows", "predicted churners", "path"),
        [
            (s["run_id"], _when(s["timestamp"]), s["row_count"], s["predicted_churners"], s["path"])
            for s in report["score_tables"]
        ],
        "this version has not scored customers",
    )
    return "\n".join(lines) + "\n"
