"""Registry: every candidate registered in MLflow; the best promoted through the gate."""

import dagster as dg

from churn_platform.core import registry, tracking
from churn_platform.core.evaluation import LEADERBOARD_METRICS
from churn_platform.core.models.kinds import model_key
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import StateResource

CHAMPION_METRICS = ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1")


@dg.asset(
    kinds={"mlflow"},
    code_version="1",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
)
def champion_model(
    context: dg.AssetExecutionContext,
    state: StateResource,
    mlflow: MlflowResource,
    model_leaderboard: dict,
) -> dict:
    """The champion in the MLflow registry after this run's challenger met (or missed) the gate."""
    settings, spec = state.settings(), state.spec()
    rows, models = model_leaderboard["rows"], model_leaderboard["models"]
    versions: dict[str, str] = {}
    for row in rows:
        summary = models[model_key(row["model"])]
        version = registry.register_candidate(
            mlflow,
            spec,
            tracking.TrainingRun(summary["mlflow_run_id"], summary["model_uri"]),
            summary["metrics"],
            summary["threshold"],
        )
        versions[row["model"]] = str(version.version)
    best = rows[0]["model"]
    actor = context.run.tags.get("churn/actor", "dagster")
    decision = registry.promote(
        mlflow,
        spec,
        versions[best],
        margin=settings.promotion_margin,
        actor=actor,
        settings=settings,
    )
    champion_version = str(decision.champion_version)
    champion = mlflow.client().get_model_version(spec.model_name, champion_version)
    summary = {
        "name": spec.model_name,
        "version": champion_version,
        "model_kind": champion.tags.get(tracking.TAG_MODEL_KIND),
        "metrics": {
            m: float(champion.tags[f"{registry.METRIC_TAG_PREFIX}{m}"]) for m in CHAMPION_METRICS
        },
        "promoted": decision.promoted,
        "challenger_version": versions[best],
        "reason": decision.reason,
    }
    context.add_output_metadata(
        {
            "champion": dg.MetadataValue.json(summary),
            "leaderboard": dg.MetadataValue.json(
                [
                    {
                        "model": r["model"],
                        "version": versions[r["model"]],
                        **{m: r[m] for m in LEADERBOARD_METRICS},
                    }
                    for r in rows
                ]
            ),
            "champion_version": champion_version,
            "challenger_version": versions[best],
            "promoted": decision.promoted,
            "decision": decision.reason,
            **{f"champion_{m}": v for m, v in summary["metrics"].items()},
        }
    )
    return summary
