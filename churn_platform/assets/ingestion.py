"""Raw layer: customer records exactly as read, one partition per ingestion batch."""

import hashlib
import json
from pathlib import Path

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import functions as F

from churn_platform import checks
from churn_platform.config import DatasetSpec, SourceSpec
from churn_platform.core import quality, spark_setup
from churn_platform.core import sources as sources_core
from churn_platform.core.columns import ERROR_COL
from churn_platform.core.input_files import InputDataError
from churn_platform.core.schemas import raw_schema
from churn_platform.io_managers import StagedParquet, staged_versions
from churn_platform.partitions import BASE_BATCH, ingest_batches
from churn_platform.resources import SPARK_POOL, OpsLogResource, StateResource
from churn_platform.settings import Settings


def batch_sources(spec: DatasetSpec, settings: Settings, batch: str) -> tuple[SourceSpec, ...]:
    """The spec's sources for the base batch; the accepted inbox file for any other batch."""
    if batch == BASE_BATCH:
        return spec.sources
    path = settings.home / "batches" / batch
    fmt = "parquet" if path.suffix == ".parquet" or path.is_dir() else "csv"
    return (
        SourceSpec(
            name=f"batch:{batch}", format=fmt, path=str(path), delimiter=spec.sources[0].delimiter
        ),
    )


@dg.asset(
    pool=SPARK_POOL,
    partitions_def=ingest_batches,
    kinds={"spark", "parquet"},
    code_version="1",
    check_specs=checks.blocking_specs("raw_customers", [checks.SCHEMA, checks.NON_EMPTY]),
)
def raw_customers(
    context: dg.AssetExecutionContext,
    pyspark: PySparkResource,
    state: StateResource,
    ops_log: OpsLogResource,
):
    """Customer rows as read from each source, all values as text, with source file and line."""
    spec, settings = state.spec(), state.settings()
    batch = context.partition_key
    sources = batch_sources(spec, settings, batch)
    spark = pyspark.spark_session
    for source in sources:
        if source.format != "jdbc" and not Path(str(source.path)).exists():
            raise InputDataError(
                f"{source.path}: file not found (for the default Telco data run "
                "`churn-platform fetch-data`; for your own data pass --config SPEC.yaml)"
            )
    files = [str(s.path) for s in sources if s.format != "jdbc"]
    # Read, counted and written under one split size: line numbers follow the partitions.
    with spark_setup.even_scans(spark, files):
        read = sources_core.read_batch(spark, spec, sources, batch, sources_core.batch_order(batch))
        raw, schema = read.frame, raw_schema(spec)
        try:
            with staged_versions(settings.warehouse, context, "result") as (path,):
                observed, observation = quality.observed(
                    raw,
                    [
                        F.count(F.lit(1)).alias("rows"),
                        F.count(ERROR_COL).alias("malformed"),
                        *quality.schema_aggregates(schema),
                    ],
                )
                observed.write.mode("error").parquet(str(path))
                stats = dict(observation.get)
                rows, malformed = int(stats["rows"]), int(stats["malformed"])
                if rows == 0:
                    raise InputDataError(
                        f"{', '.join(s.location for s in sources)}: no data rows "
                        "(empty file or header only)"
                    )
        finally:
            read.release()
    ops_log.log().event(
        "etl.ingest.completed",
        f"batch {batch}: {rows} rows read, {malformed} malformed",
        component="ingestion",
        configuration_item="asset:raw_customers",
        outcome="success",
        metrics={"rows_in": rows, "rows_malformed": malformed},
        context=context,
    )
    version = hashlib.sha256(json.dumps(read.checksums, sort_keys=True).encode()).hexdigest()
    yield dg.Output(
        StagedParquet(path, rows),
        data_version=dg.DataVersion(version[:24]),
        metadata={
            "rows_read": rows,
            "rows_malformed": malformed,
            "batch": batch,
            "sources": dg.MetadataValue.json({s.name: s.location for s in sources}),
            "source_sha256": dg.MetadataValue.json(read.checksums),
            "schema": dg.MetadataValue.table_schema(
                dg.TableSchema(
                    columns=[dg.TableColumn(f.name, f.dataType.simpleString()) for f in raw.schema]
                )
            ),
        },
    )
    yield checks.schema_result(quality.schema_problems(raw, schema, stats), schema, "raw_customers")
    yield dg.AssetCheckResult(
        asset_key="raw_customers",
        check_name=checks.NON_EMPTY,
        passed=rows > 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": rows},
    )
