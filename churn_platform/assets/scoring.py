"""Batch scoring: probability, decision, tier, contact value and reasons per customer who can
still churn (see churn_platform.core.scoring)."""

import time

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from churn_platform import checks
from churn_platform.core import population, tracking
from churn_platform.core import scoring as core_scoring
from churn_platform.core.attribution import save_attribution
from churn_platform.io_managers import StagedParquet, staged_versions
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import SPARK_POOL, OpsLogResource, StateResource
from churn_platform.settings import Settings

UNSEEN_CHECK = "unseen_values_within_limit"
PREVIEW_ROWS = 10


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def preview(scores: DataFrame, id_column: str) -> str:
    """The highest-risk customers and their reasons, as a Markdown table for the asset page."""
    rows = scores.orderBy(F.desc("churn_probability")).limit(PREVIEW_ROWS).collect()
    lines = [
        "| customer | probability | tier | expected value | reasons |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        why = "; ".join(
            f"{r['feature']}={r['value']} ({r['contribution']:+.2f})" for r in row["reasons"] or []
        )
        lines.append(
            f"| {_cell(row[id_column])} | {row['churn_probability']:.3f} | {row['risk_tier']} "
            f"| {row['expected_value']:.0f} | {_cell(why)} |"
        )
    return "\n".join(lines)


def unseen_check(summary: dict, settings: Settings) -> dg.AssetCheckResult:
    """Warns above CHURN_UNSEEN_WARN_SHARE of customers with an unseen value in one column,
    fails above CHURN_UNSEEN_FAIL_SHARE."""
    share = summary["unseen_worst_share"]
    failed = share > settings.unseen_fail_share
    return dg.AssetCheckResult(
        check_name=UNSEEN_CHECK,
        passed=share <= settings.unseen_warn_share,
        severity=dg.AssetCheckSeverity.ERROR if failed else dg.AssetCheckSeverity.WARN,
        metadata={
            "worst_column_share": share,
            "warn_above": settings.unseen_warn_share,
            "fail_above": settings.unseen_fail_share,
            "unseen_by_column": dg.MetadataValue.json(summary["unseen_by_column"]),
        },
    )


@dg.asset(
    pool=SPARK_POOL,
    deps=["champion_model"],
    kinds={"spark", "parquet", "mlflow"},
    code_version="2",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
    check_specs=[
        dg.AssetCheckSpec(UNSEEN_CHECK, asset="churn_scores"),
        *checks.scores_check_specs("churn_scores"),
    ],
)
def churn_scores(
    context: dg.AssetExecutionContext,
    pyspark: PySparkResource,
    state: StateResource,
    ops_log: OpsLogResource,
    mlflow: MlflowResource,
    cleaned_customers: DataFrame,
):
    """Churn probability, decision, risk tier, contact value and top three reasons per customer
    who can still churn, from the champion."""
    started = time.monotonic()
    settings, spec = state.settings(), state.spec()
    model, version = core_scoring.load_champion(mlflow, spec)
    threshold = tracking.model_threshold(version)
    result = core_scoring.score_customers(
        cleaned_customers,
        spec,
        model,
        (version.name, str(version.version), threshold),
        core_scoring.scoring_policy(settings),
        core_scoring.reasons_reference(
            mlflow, version, lambda: core_scoring.training_reference(cleaned_customers, spec)
        ),
        population=population.population_filter(spec),
    )
    # One pass: the scores are written and their statistics observed by the same job.
    with staged_versions(settings.warehouse, context, "result") as (path,):
        result.frame.write.mode("error").parquet(str(path))
        summary = result.summary()
        # `score` explains a file's customers with these reasons' reference and surrogate.
        save_attribution(path, core_scoring.model_identity(version), result.attribution)
    rows, unseen, excluded = summary["rows"], summary["unseen_by_column"], summary["excluded"]
    ops_log.log().event(
        "inference.batch.completed",
        f"scored {rows} customers with {version.name} v{version.version} ({excluded} not in "
        f"the scoring population; unseen category values: "
        f"{', '.join(f'{c}={n}' for c, n in unseen.items()) or 'none'})",
        level="WARNING" if unseen else "INFO",
        component="inference",
        configuration_item=f"model:{version.name}:v{version.version}",
        outcome="success",
        metrics={
            "rows_out": rows,
            "rows_excluded": excluded,
            "unseen_rows": summary["unseen_rows"],
            **{f"unseen:{c}": n for c, n in unseen.items()},
            "duration_s": time.monotonic() - started,
        },
        model_version=str(version.version),
        context=context,
    )
    written = pyspark.spark_session.read.parquet(str(path))
    yield dg.Output(
        StagedParquet(path, rows),
        metadata={
            "model_name": version.name,
            "model_version": str(version.version),
            "threshold": threshold,
            "population_rule": population.population_rule(spec),
            "population_scored": rows,
            "population_excluded": excluded,
            "predicted_churners": summary["predicted_churners"],
            **{f"tier_{name}": count for name, count in summary["tiers"].items()},
            **result.metadata(),
            "unseen_rows": summary["unseen_rows"],
            "unseen_by_column": dg.MetadataValue.json(unseen),
            "top_customers": dg.MetadataValue.md(preview(written, spec.id_column)),
        },
    )
    yield unseen_check(summary, settings)
    stored = checks.probability_statistics(written)
    yield checks.scored_population_result("churn_scores", stored["rows"], population_size(result))
    yield checks.probability_range_result("churn_scores", stored)


def population_size(result: core_scoring.Scores) -> int:
    """The scoring population as counted in the cleaned input, before any scoring step."""
    if result.population is None:
        raise ValueError("churn_scores is scored with a population rule; none was observed")
    return int(result.population.get["in_population"] or 0)
