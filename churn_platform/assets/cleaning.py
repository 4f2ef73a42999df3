"""Cleaned layer: typed, de-duplicated customers, and every unusable row in quarantine."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame

from churn_platform import checks
from churn_platform.config import DatasetSpec
from churn_platform.core import cleaning, spark_setup
from churn_platform.core.columns import LABEL_COL
from churn_platform.core.ops.log import OpsLog
from churn_platform.core.schemas import cleaned_schema
from churn_platform.io_managers import StagedParquet, staged_versions
from churn_platform.resources import SPARK_POOL, OpsLogResource, StateResource
from churn_platform.settings import Settings

CLEANED_CHECKS = [
    checks.SCHEMA,
    checks.NON_EMPTY,
    checks.UNIQUE_IDS,
    checks.NULL_RATES,
    checks.TARGET_BALANCE,
    checks.QUARANTINE_RATIO,
]


@dg.multi_asset(
    pool=SPARK_POOL,
    outs={
        "cleaned_customers": dg.AssetOut(
            kinds={"spark", "parquet"},
            code_version="1",
            description="Current customers, typed and trimmed; newest record per id wins.",
        ),
        "quarantined_customers": dg.AssetOut(
            kinds={"spark", "parquet"},
            code_version="1",
            description="Rows that could not be used, each with a reason, source file and line.",
        ),
    },
    ins={"raw_customers": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    check_specs=checks.blocking_specs("cleaned_customers", CLEANED_CHECKS),
)
def cleaned_customers(
    context: dg.AssetExecutionContext,
    pyspark: PySparkResource,
    state: StateResource,
    ops_log: OpsLogResource,
    raw_customers: DataFrame,
):
    """Clean every ingested batch; the run fails if too many rows are quarantined."""
    spec, settings = state.spec(), state.settings()
    planned = cleaning.clean_layer(raw_customers, spec)
    outputs = ("cleaned_customers", "quarantined_customers")
    with (
        spark_setup.even_scans(pyspark.spark_session, raw_customers.inputFiles()),
        staged_versions(settings.warehouse, context, *outputs) as paths,
    ):
        result = planned.write(*paths)
    yield from _outputs(context, settings, spec, result, paths, ops_log.log())


def _outputs(
    context: dg.AssetExecutionContext,
    settings: Settings,
    spec: DatasetSpec,
    result: cleaning.CleanResult,
    paths: list[Path],
    ops: OpsLog,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """The two written outputs, published by the IO manager, and the checks."""
    counts = result.counts
    ratio = counts["rows_quarantined"] / counts["rows_in"] if counts["rows_in"] else 0.0
    ops.event(
        "etl.ingest.rows_quarantined" if counts["rows_quarantined"] else "etl.clean.completed",
        f"{counts['rows_out']} customers cleaned, {counts['rows_quarantined']} quarantined "
        f"({', '.join(f'{k}={v}' for k, v in result.by_reason.items()) or 'none'})",
        level="WARNING" if counts["rows_quarantined"] else "INFO",
        component="cleaning",
        configuration_item="asset:cleaned_customers",
        outcome="success",
        metrics={
            "rows_in": counts["rows_in"],
            "rows_out": counts["rows_out"],
            "rows_quarantined": counts["rows_quarantined"],
        },
        context=context,
    )
    version = result.fingerprint
    cleaned_path, quarantine_path = paths
    yield dg.Output(
        StagedParquet(cleaned_path, counts["rows_out"]),
        output_name="cleaned_customers",
        data_version=dg.DataVersion(version),
        metadata={
            **counts,
            "numeric_columns": dg.MetadataValue.json(result.numeric),
            "categorical_columns": dg.MetadataValue.json(result.categorical),
            "blank_numeric_values": dg.MetadataValue.json(result.blanks),
            "blank_values_to_impute": sum(result.blanks.values()),
        },
    )
    yield dg.Output(
        StagedParquet(quarantine_path, counts["rows_quarantined"]),
        output_name="quarantined_customers",
        data_version=dg.DataVersion(f"{version}-{counts['rows_quarantined']}"),
        metadata={
            "quarantine_total": counts["rows_quarantined"],
            "quarantine_ratio": ratio,
            "by_reason": dg.MetadataValue.json(result.by_reason),
            **{f"quarantined_{reason}": n for reason, n in result.by_reason.items()},
        },
    )
    yield checks.schema_result(
        result.stats["schema_problems"],
        cleaned_schema(spec, result.numeric, result.categorical),
        "cleaned_customers",
    )
    content = [spec.id_column, LABEL_COL, *result.categorical, *result.numeric]
    yield from checks.quality_results(result.stats, "cleaned_customers", content)
    yield dg.AssetCheckResult(
        asset_key="cleaned_customers",
        check_name=checks.QUARANTINE_RATIO,
        passed=ratio <= settings.quarantine_max_ratio,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "quarantine_ratio": ratio,
            "max_ratio": settings.quarantine_max_ratio,
            "by_reason": dg.MetadataValue.json(result.by_reason),
        },
    )
