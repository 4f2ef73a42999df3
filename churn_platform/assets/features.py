"""Feature layer: engineered columns, split/fold assignment and the fitted encoding pipeline."""

import hashlib

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame

from churn_platform import checks
from churn_platform.core import features, spark_setup
from churn_platform.core.schemas import features_schema
from churn_platform.io_managers import StagedParquet, staged_versions
from churn_platform.resources import SPARK_POOL, OpsLogResource, StateResource

# 2: the table stores columns; the `features` vector is assembled where it is used.
FEATURES_CODE_VERSION = "2"


@dg.multi_asset(
    pool=SPARK_POOL,
    outs={
        "customer_features": dg.AssetOut(
            kinds={"spark", "parquet"},
            code_version=FEATURES_CODE_VERSION,
            description="One row per customer: engineered features, split and fold (no vector).",
        ),
        "feature_pipeline": dg.AssetOut(
            kinds={"spark"},
            code_version=FEATURES_CODE_VERSION,
            description="Imputation and encoding fitted on the training split (Spark ML).",
        ),
    },
    check_specs=checks.blocking_specs(
        "customer_features", [checks.SCHEMA, checks.NON_EMPTY, checks.UNIQUE_IDS]
    ),
)
def customer_features(
    context: dg.AssetExecutionContext,
    pyspark: PySparkResource,
    state: StateResource,
    ops_log: OpsLogResource,
    cleaned_customers: DataFrame,
):
    """Build features from the cleaned customers; the encoders see training rows only."""
    spec, settings = state.spec(), state.settings()
    schema = features_schema(spec)
    with spark_setup.even_scans(pyspark.spark_session, cleaned_customers.inputFiles()):
        result = features.build_features(cleaned_customers, spec, schema, settings.train_max_rows)
        with staged_versions(settings.warehouse, context, "customer_features") as (path,):
            result.write(path)
    # Same cleaned content, code and spec give the same version: retraining keys off this.
    version = hashlib.sha256(
        f"{result.cleaned_fingerprint}|{FEATURES_CODE_VERSION}|{spec.spec_sha256}".encode()
    ).hexdigest()[:24]
    vector_size = result.vector_size
    ops_log.log().event(
        "etl.features.completed",
        f"features built: {len(result.numeric)} numeric, {len(result.categorical)} categorical",
        component="features",
        configuration_item="asset:customer_features",
        outcome="success",
        metrics={"vector_size": vector_size, **result.split_counts},
        context=context,
    )
    yield dg.Output(
        StagedParquet(path, int(result.stats["quality:rows"] or 0)),
        output_name="customer_features",
        data_version=dg.DataVersion(version),
        metadata={
            "numeric_features": dg.MetadataValue.json(result.numeric),
            "categorical_features": dg.MetadataValue.json(result.categorical),
            "engineered_features": dg.MetadataValue.json(
                [c for c in spec.engineered if c in result.features.columns]
            ),
            "vector_size": vector_size,
            **result.split_counts,
        },
    )
    yield dg.Output(
        result.pipeline, output_name="feature_pipeline", data_version=dg.DataVersion(version)
    )
    yield checks.schema_result(result.stats["schema_problems"], schema, "customer_features")
    yield from checks.quality_results(result.stats, "customer_features", [], label=False)
