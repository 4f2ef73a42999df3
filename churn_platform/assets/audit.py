"""Audit: the serving champion's lineage, from source checksums to the scores it produced."""

import dagster as dg

from churn_platform import audit_lineage
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import StateResource


@dg.asset(
    deps=["champion_model", "churn_scores"],
    kinds={"audit"},
    code_version="1",
    io_manager_key="audit_reports",
)
def audit_report(
    context: dg.AssetExecutionContext, state: StateResource, mlflow: MlflowResource
) -> dg.Output[dict]:
    """Lineage report of the champion: training run, data versions, sources, changes, scores."""
    report = audit_lineage.audit_model(state.settings(), context.instance, mlflow, state.spec())
    model = report["model"]
    return dg.Output(
        report,
        metadata={
            "model_name": model["name"],
            "model_version": model["version"],
            "mlflow_run_id": model["run_id"] or "",
            "lineage_layers": len(report["lineage"]),
            "source_files": len(report["source_files"]),
            "change_records": len(report["changes"]),
            "score_tables": len(report["score_tables"]),
            "consistency": dg.MetadataValue.json(report["checks"]),
        },
    )
