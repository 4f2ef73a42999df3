"""Asset checks: pandera schemas and data-quality rules, reported as blocking check results.

The checks run inside the step that builds the layer (the data is already cached there), and
an ERROR result on a blocking check stops every downstream step of the run.
"""

from __future__ import annotations

import json

import dagster as dg
import pandera.pyspark as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from churn_platform import etl

SCHEMA = "schema_valid"
NON_EMPTY = "non_empty"
UNIQUE_IDS = "unique_ids"
NULL_RATES = "null_rates_within_limit"
TARGET_BALANCE = "target_balance_within_bounds"
QUARANTINE_RATIO = "quarantine_ratio_within_limit"

MAX_NULL_RATE = 0.5
TARGET_RATE_BOUNDS = (0.01, 0.99)


def blocking_specs(asset: str, names: list[str]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, blocking=True) for name in names]


def schema_result(df: DataFrame, schema: pa.DataFrameSchema, asset: str) -> dg.AssetCheckResult:
    """Run a pandera schema; pandera.pyspark collects errors instead of raising."""
    validated = schema.validate(df)
    errors = validated.pandera.errors
    problems = json.loads(json.dumps(dict(errors), default=str)) if errors else {}
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=SCHEMA,
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"errors": dg.MetadataValue.json(problems), "schema": schema.name or asset},
    )


def quality_results(
    df: DataFrame, asset: str, id_col: str, label_col: str | None = etl.LABEL_COL
) -> list[dg.AssetCheckResult]:
    """Non-empty, unique ids, null rates and target balance, from one aggregation."""
    columns = [c for c in df.columns if c not in (etl.FEATURES_COL,)]
    aggs = [
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct(F.col(f"`{id_col}`")).alias("ids"),
        *[F.sum(F.col(f"`{c}`").isNull().cast("long")).alias(f"null_{c}") for c in columns],
    ]
    if label_col:
        aggs.append(F.avg(F.col(label_col).cast("double")).alias("positive_rate"))
    row = df.agg(*aggs).first()
    rows = int(row["rows"])
    null_rates = {c: (row[f"null_{c}"] or 0) / rows for c in columns} if rows else {}
    worst = {c: round(r, 4) for c, r in null_rates.items() if r > MAX_NULL_RATE}
    error = dg.AssetCheckSeverity.ERROR
    results = [
        dg.AssetCheckResult(
            asset_key=asset,
            check_name=NON_EMPTY,
            passed=rows > 0,
            severity=error,
            metadata={"rows": rows},
        ),
        dg.AssetCheckResult(
            asset_key=asset,
            check_name=UNIQUE_IDS,
            passed=rows == int(row["ids"]),
            severity=error,
            metadata={"rows": rows, "distinct_ids": int(row["ids"])},
        ),
        dg.AssetCheckResult(
            asset_key=asset,
            check_name=NULL_RATES,
            passed=not worst,
            severity=error,
            metadata={
                "max_null_rate": MAX_NULL_RATE,
                "above_limit": dg.MetadataValue.json(worst),
                "highest": max(null_rates.values(), default=0.0),
            },
        ),
    ]
    if label_col:
        rate = float(row["positive_rate"] or 0.0)
        low, high = TARGET_RATE_BOUNDS
        results.append(
            dg.AssetCheckResult(
                asset_key=asset,
                check_name=TARGET_BALANCE,
                passed=low <= rate <= high,
                severity=error,
                metadata={"positive_rate": rate, "bounds": f"[{low}, {high}]"},
            )
        )
    return results
