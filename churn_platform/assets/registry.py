"""Registry: every candidate registered in MLflow; the best promoted through the gate."""

import math
from collections.abc import Iterator
from typing import Any

import dagster as dg

from churn_platform.core import evaluation, registry, tracking
from churn_platform.core.models.kinds import model_key
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import OpsLogResource, StateResource

CHAMPION_METRICS = ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1")
PROMOTION_GATE = "promotion_gate"


@dg.asset(
    kinds={"mlflow"},
    code_version="1",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
    check_specs=[
        dg.AssetCheckSpec(
            PROMOTION_GATE,
            asset="champion_model",
            blocking=True,
            description="A champion exists to score with, its test ROC-AUC better than chance "
            "and not implausibly perfect; carries the gate's decision and reason for this run's "
            "challenger. Fails (and scoring waits) when there is no usable champion.",
        )
    ],
)
def champion_model(
    context: dg.AssetExecutionContext,
    state: StateResource,
    ops_log: OpsLogResource,
    mlflow: MlflowResource,
    model_leaderboard: dict,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
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
    best, why = evaluation.promotion_candidate(rows)
    context.log.info(f"promotion candidate {best}: {why}")
    actor = context.run.tags.get("churn/actor", "dagster")
    decision = registry.promote(
        mlflow,
        spec,
        versions[best],
        margin=settings.promotion_margin,
        actor=actor,
        settings=settings,
        ops_log=ops_log.log(),
    )
    champion = (
        None
        if decision.champion_version is None
        else mlflow.client().get_model_version(spec.model_name, str(decision.champion_version))
    )
    metrics = (
        {}
        if champion is None
        else {m: float(champion.tags[f"{registry.METRIC_TAG_PREFIX}{m}"]) for m in CHAMPION_METRICS}
    )
    summary = {
        "name": spec.model_name,
        "version": None if champion is None else str(champion.version),
        "model_kind": None if champion is None else champion.tags.get(tracking.TAG_MODEL_KIND),
        "metrics": metrics,
        "promoted": decision.promoted,
        "challenger_version": versions[best],
        "reason": decision.reason,
    }
    yield dg.Output(
        summary,
        metadata={
            "champion": dg.MetadataValue.json(summary),
            "leaderboard": dg.MetadataValue.json(
                [
                    {
                        "model": r["model"],
                        "version": versions[r["model"]],
                        **{m: r[m] for m in evaluation.LEADERBOARD_METRICS},
                    }
                    for r in rows
                ]
            ),
            **({"champion_version": summary["version"]} if summary["version"] else {}),
            "challenger_version": versions[best],
            "promoted": decision.promoted,
            "decision": decision.reason,
            **{f"champion_{m}": v for m, v in metrics.items()},
        },
    )
    yield gate_result(summary, decision.gate, settings.allow_perfect_metrics)


def gate_result(
    champion: dict[str, Any], gate: dict[str, Any], allow_perfect: bool
) -> dg.AssetCheckResult:
    """`promotion_gate`: the gate's decision and reason; fails when there is no usable champion
    (none yet, or one whose test ROC-AUC is no better than chance or implausibly perfect)."""
    version, roc_auc = champion["version"], champion["metrics"].get("roc_auc", math.nan)
    if version is None:
        problem = f"no champion to score with: {champion['reason']}"
    elif not roc_auc > 0.5:  # NaN too
        problem = f"champion v{version}: test ROC-AUC {roc_auc:.4f} is no better than chance"
    elif roc_auc >= registry.PERFECT_ROC_AUC and not allow_perfect:
        problem = f"champion v{version}: test ROC-AUC {roc_auc:.4f} is implausibly perfect"
    else:
        problem = ""
    decision = "promoted" if champion["promoted"] else "champion kept"
    return dg.AssetCheckResult(
        asset_key="champion_model",
        check_name=PROMOTION_GATE,
        passed=not problem,
        severity=dg.AssetCheckSeverity.ERROR,
        description=problem or f"challenger v{champion['challenger_version']}: {decision}",
        metadata={
            "decision": decision,
            "reason": champion["reason"],
            "challenger_version": champion["challenger_version"],
            "champion_version": version or "none",
            "champion_model_kind": champion["model_kind"] or "none",
            **({"problem": problem} if problem else {}),
            # The compared figures; gate_champion_* are the champion's before this run's gate.
            **{f"gate_{k}": v for k, v in gate.items() if isinstance(v, (int, float, str))},
        },
    )
