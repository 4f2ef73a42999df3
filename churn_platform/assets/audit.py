"""Audit: the serving champion's lineage, from source checksums to the scores it produced."""

import dagster as dg

from churn_platform import audit_lineage
from churn_platform.core.audit import render
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import StateResource


@dg.asset(
    deps=["champion_model", "churn_scores"],
    kinds={"audit"},
    code_version="1",
)
def audit_report(
    context: dg.AssetExecutionContext, state: StateResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Lineage report of the champion: training run, data versions, sources, changes, scores."""
    settings, spec = state.settings(), state.spec()
    report = audit_lineage.audit_model(settings, context.instance, mlflow, spec)
    markdown_path, json_path = render.write_report(settings, report)
    model = report["model"]
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(markdown_path.read_text(encoding="utf-8")),
            "model_name": model["name"],
            "model_version": model["version"],
            "mlflow_run_id": model["run_id"] or "",
            "lineage_layers": len(report["lineage"]),
            "source_files": len(report["source_files"]),
            "change_records": len(report["changes"]),
            "score_tables": len(report["score_tables"]),
            "consistency": dg.MetadataValue.json(report["checks"]),
            "markdown_path": dg.MetadataValue.path(str(markdown_path)),
            "json_path": dg.MetadataValue.path(str(json_path)),
        }
    )


audit_assets = [audit_report]
