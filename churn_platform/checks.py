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
