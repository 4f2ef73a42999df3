"""Batch scoring: churn probability, decision and risk tier for every current customer."""

import time
from pathlib import Path

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform import etl, tracking
from churn_platform.config import DatasetSpec, SourceSpec
from churn_platform.core import cleaning, output_files, sources
from churn_platform.core.models.fitting import PROBABILITY_COL
from churn_platform.ops_log import OpsLog
from churn_platform.resources import SPARK_POOL, StateResource
from churn_platform.tracking import MlflowResource

# Risk tiers on the probability scale, so a tier means the same across model versions.
RISK_TIERS = ((0.6, "high"), (0.3, "medium"))


def risk_tier(probability: F.Column) -> F.Column:
    tier = F.when(probability >= RISK_TIERS[0][0], RISK_TIERS[0][1])
    for bound, name in RISK_TIERS[1:]:
        tier = tier.when(probability >= bound, name)
    return tier.otherwise("low")


def score_customers(
    cleaned: DataFrame,
    spec: DatasetSpec,
    model: PipelineModel,
    threshold: float,
    model_name: str,
    model_version: str,
) -> DataFrame:
    """Scores from cleaned customers: the logged model holds the feature pipeline itself."""
    scored = model.transform(etl.engineer_features(cleaned, spec))
    probability = F.col(PROBABILITY_COL)
    return scored.select(
        F.col(spec.id_column),
        probability.alias("churn_probability"),
        (probability >= F.lit(threshold)).cast("int").alias("churn_predicted"),
        risk_tier(probability).alias("risk_tier"),
        F.lit(model_name).alias("model_name"),
        F.lit(str(model_version)).alias("model_version"),
        F.lit(float(threshold)).alias("threshold"),
    )


@dg.asset(
    pool=SPARK_POOL,
    deps=["champion_model"],
    kinds={"spark", "parquet", "mlflow"},
    code_version="1",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
)
def churn_scores(
    context: dg.AssetExecutionContext,
    pyspark: PySparkResource,
    state: StateResource,
    mlflow: MlflowResource,
    cleaned_customers: DataFrame,
) -> DataFrame:
    """Churn probability, decision and risk tier per current customer, from the champion."""
    started = time.monotonic()
    settings, spec = state.settings(), state.spec()
    model, version = tracking.load_model(mlflow, spec, alias="champion")
    threshold = tracking.model_threshold(version)
    scores = score_customers(
        cleaned_customers, spec, model, threshold, version.name, str(version.version)
    ).persist()
    tiers = {r["risk_tier"]: r["count"] for r in scores.groupBy("risk_tier").count().collect()}
    rows = sum(tiers.values())
    duration = time.monotonic() - started
    OpsLog(settings).event(
        "inference.batch.completed",
        f"scored {rows} customers with {version.name} v{version.version}",
        component="inference",
        configuration_item=f"model:{version.name}:v{version.version}",
        outcome="success",
        metrics={"rows_out": rows, "duration_s": duration},
        model_version=str(version.version),
        context=context,
    )
    context.add_output_metadata(
        {
            "model_name": version.name,
            "model_version": str(version.version),
            "threshold": threshold,
            "predicted_churners": int(scores.agg(F.sum("churn_predicted")).first()[0] or 0),
            **{f"tier_{name}": int(count) for name, count in tiers.items()},
        }
    )
    return scores


def score_file(
    spark: SparkSession,
    spec: DatasetSpec,
    mlflow: MlflowResource,
    input_path: Path,
    output_path: Path,
    alias: str = "champion",
    overwrite: bool = False,
) -> dict:
    """Score an arbitrary CSV or Parquet file of customers into a CSV or Parquet file.

    Input columns are checked against the spec before any work; unusable rows are reported,
    not scored. The output appears atomically (staged beside it, then renamed); an existing
    output is replaced only with `overwrite` and only if it is an earlier score output.
    """
    output_files.check_target(output_path, overwrite, output_files.SCORE_COLUMNS)
    fmt = "parquet" if input_path.suffix == ".parquet" or input_path.is_dir() else "csv"
    source = SourceSpec(name="score_input", format=fmt, path=str(input_path))
    read = sources.read_source(spark, source)
    try:
        required = [c for c in spec.declared_columns if c not in (spec.target.column, *spec.drop)]
        tracking.check_input_columns(read.frame.columns, required)
        raw = read.frame.withColumn(etl.BATCH_COL, F.lit("score")).withColumn(
            etl.BATCH_ORDER_COL, F.lit(0).cast("long")
        )
        cleaned = cleaning.clean_customers(raw, spec, require_target=False)
    except Exception:
        read.release()
        raise
    try:
        model, version = tracking.load_model(mlflow, spec, alias=alias)
        scores = score_customers(
            cleaned.cleaned,
            spec,
            model,
            tracking.model_threshold(version),
            version.name,
            str(version.version),
        )
        with output_files.staged_output(
            output_path, overwrite, output_files.SCORE_COLUMNS
        ) as target:
            if output_path.suffix == ".parquet":
                scores.write.parquet(str(target))
            else:
                folder = target.with_name(target.name + ".parts")
                output_files.formula_safe(scores).coalesce(1).write.option("header", True).csv(
                    str(folder)
                )
                next(folder.glob("part-*.csv")).replace(target)
    finally:
        cleaned.release()
        read.release()
    return {
        "output": str(output_path),
        "rows_scored": cleaned.counts["rows_out"],
        "rows_quarantined": cleaned.counts["rows_quarantined"],
        "quarantine_by_reason": cleaned.by_reason,
        "model": f"{version.name} v{version.version}",
    }
