"""Feature layer: engineered columns, split/fold assignment and the model-ready vector."""

import hashlib

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame

from churn_platform import checks, etl
from churn_platform.ops_log import OpsLog
from churn_platform.resources import SPARK_POOL, StateResource
from churn_platform.schemas import features_schema

FEATURES_CODE_VERSION = "1"


@dg.multi_asset(
    pool=SPARK_POOL,
    outs={
        "customer_features": dg.AssetOut(
            kinds={"spark", "parquet"},
            code_version=FEATURES_CODE_VERSION,
            description="One row per customer: engineered features, split, fold, feature vector.",
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
    cleaned_customers: DataFrame,
):
    """Build features from the cleaned customers; the encoders see training rows only."""
    spec, settings = state.spec(), state.settings()
    result = etl.build_features(cleaned_customers, spec)
    # Same cleaned content, code and spec give the same version: retraining keys off this.
    cleaned_version = etl.content_fingerprint(
        cleaned_customers, (etl.BATCH_COL, etl.BATCH_ORDER_COL)
    )
    version = hashlib.sha256(
        f"{cleaned_version}|{FEATURES_CODE_VERSION}|{spec.spec_sha256}".encode()
    ).hexdigest()[:24]
    split_counts = {
        f"{row[etl.SPLIT_COL]}_{'churn' if row[etl.LABEL_COL] else 'stay'}": int(row["count"])
        for row in result.features.groupBy(etl.SPLIT_COL, etl.LABEL_COL).count().collect()
    }
    vector_size = result.features.schema[etl.FEATURES_COL].metadata["ml_attr"]["num_attrs"]
    OpsLog(settings).event(
        "etl.features.completed",
        f"features built: {len(result.numeric)} numeric, {len(result.categorical)} categorical",
        component="features",
        configuration_item="asset:customer_features",
        outcome="success",
        metrics={"vector_size": vector_size, **split_counts},
        context=context,
    )
    yield dg.Output(
        result.features,
        output_name="customer_features",
        data_version=dg.DataVersion(version),
        metadata={
            "numeric_features": dg.MetadataValue.json(result.numeric),
            "categorical_features": dg.MetadataValue.json(result.categorical),
            "engineered_features": dg.MetadataValue.json(
                [c for c in spec.engineered if c in result.features.columns]
            ),
            "vector_size": vector_size,
            **split_counts,
        },
    )
    yield dg.Output(
        result.pipeline, output_name="feature_pipeline", data_version=dg.DataVersion(version)
    )
    features = result.features.drop(etl.FEATURES_COL)
    yield checks.schema_result(features, features_schema(spec), "customer_features")
    yield from checks.quality_results(
        features, "customer_features", spec.id_column, label_col=None
    )[:2]
