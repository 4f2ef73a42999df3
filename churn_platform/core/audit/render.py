"""The audit report for people (Markdown) and machines (JSON), written under the state root."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from churn_platform.core import registry, tracking
from churn_platform.core.audit.report import RAW_LAYER
from churn_platform.core.ops.files import FILE_MODE, ensure_dir, write_json_atomic

# The metadata worth a glance in the lineage table; the JSON report keeps all of it.
DETAIL_KEYS = {
    RAW_LAYER: ("rows_read", "rows_malformed"),
    "cleaned_customers": ("rows_in", "rows_out", "rows_superseded"),
    "quarantined_customers": ("quarantine_total", "quarantine_ratio", "by_reason"),
    "customer_features": ("row_count", "vector_size"),
    "feature_pipeline": ("stages",),
}
MODEL_DETAIL_KEYS = ("roc_auc", "pr_auc", "threshold")


def report_json(report: Mapping[str, Any]) -> str:
    """The report as JSON text, keys sorted so that two reports compare line by line."""
    return json.dumps(report, indent=2, sort_keys=True, default=str)


def write_report(folder: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write `audit-<model>-v<version>[-scores-<run>]` as .md and .json into `folder`
    (`Settings.audit_reports`, where both the audit_report asset and `churn-platform audit` keep
    them)."""
    model = report["model"]
    stem = f"audit-{model['name']}-v{model['version']}"
    if report.get("scores_run"):
        stem += f"-scores-{report['scores_run']['run_id'][:8]}"
    directory = ensure_dir(folder)
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
