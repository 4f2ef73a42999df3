"""Asset checks: pandera schemas and data-quality rules, reported as blocking check results.

The checks' numbers come from the one aggregate each layer runs over its cached data
(churn_platform.core.quality); an ERROR result on a blocking check stops every downstream step
of the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import pandera.pyspark as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

SCHEMA = "schema_valid"
NON_EMPTY = "non_empty"
UNIQUE_IDS = "unique_ids"
NULL_RATES = "null_rates_within_limit"
TARGET_BALANCE = "target_balance_within_bounds"
QUARANTINE_RATIO = "quarantine_ratio_within_limit"
SCORED_POPULATION = "rows_equal_scoring_population"
PROBABILITY_RANGE = "probabilities_within_0_and_1"

MAX_NULL_RATE = 0.5
TARGET_RATE_BOUNDS = (0.01, 0.99)


def blocking_specs(asset: str, names: list[str]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, blocking=True) for name in names]


def schema_result(
    problems: Mapping[str, str], schema: pa.DataFrameSchema, asset: str
) -> dg.AssetCheckResult:
    """A pandera schema's verdict, from `core.quality.schema_problems` (no Spark job of its own)."""
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=SCHEMA,
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"errors": dg.MetadataValue.json(dict(problems)), "schema": schema.name or asset},
    )


def quality_results(
    stats: Mapping[str, Any], asset: str, columns: Sequence[str], label: bool = True
) -> list[dg.AssetCheckResult]:
    """Non-empty, unique ids, null rates and target balance from the layer's aggregate row.

    `stats` holds the `core.quality.quality_aggregates` columns (rows, ids, nulls, rate).
    """
    rows = int(stats["quality:rows"] or 0)
    ids = int(stats["quality:ids"] or 0)
    null_rates = {c: (stats[f"quality:null:{c}"] or 0) / rows for c in columns} if rows else {}
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
            passed=rows == ids,
            severity=error,
            metadata={"rows": rows, "distinct_ids": ids},
        ),
    ]
    if columns:
        results.append(
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
            )
        )
    if label:
        rate = float(stats["quality:rate"] or 0.0)
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


def scores_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """The scores' blocking checks: monitoring and the scores' readers rely on both."""
    return [
        dg.AssetCheckSpec(
            SCORED_POPULATION,
            asset=asset,
            blocking=True,
            description="The stored scores hold one row per customer of the scoring population "
            "(customers who can still churn) counted in the cleaned input: none lost, none twice.",
        ),
        dg.AssetCheckSpec(
            PROBABILITY_RANGE,
            asset=asset,
            blocking=True,
            description="Every stored churn probability is a number in [0, 1] (no null, no NaN).",
        ),
    ]


def probability_statistics(scores: DataFrame, column: str = "churn_probability") -> dict[str, Any]:
    """Rows, lowest and highest probability and the rows outside [0, 1] (null and NaN count as
    outside), in one aggregate over the stored scores: the checks judge what was written."""
    probability = F.col(column)
    outside = probability.isNull() | F.isnan(probability) | ~probability.between(0.0, 1.0)
    row = scores.agg(
        F.count(F.lit(1)).alias("rows"),
        F.min(probability).alias("lowest"),
        F.max(probability).alias("highest"),
        F.count_if(outside).alias("outside"),
    ).first()
    return row.asDict() if row is not None else {}


def scored_population_result(asset: str, rows: int, population: int) -> dg.AssetCheckResult:
    """Fails when the stored row count differs from the population counted in the input."""
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=SCORED_POPULATION,
        passed=rows == population,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{rows} rows stored for a scoring population of {population}",
        metadata={"rows_stored": rows, "scoring_population": population},
    )


def probability_range_result(asset: str, statistics: Mapping[str, Any]) -> dg.AssetCheckResult:
    """Fails when any stored probability is outside [0, 1], null or NaN."""
    outside = int(statistics.get("outside") or 0)
    low, high = statistics.get("lowest"), statistics.get("highest")
    metadata: dict[str, Any] = {"rows_outside": outside}
    metadata.update({k: float(v) for k, v in (("lowest", low), ("highest", high)) if v is not None})
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=PROBABILITY_RANGE,
        passed=outside == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{outside} probabilities outside [0, 1]"
        + (f" (lowest {low:.4f}, highest {high:.4f})" if low is not None else ""),
        metadata=metadata,
    )
