"""The retention team's action list: the highest-risk customers from the stored churn_scores.

Read straight from the published Parquet version, without Spark, so it answers in a second.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from churn_platform.config import DatasetSpec
from churn_platform.core.output_files import FORMULA_STARTS, staged_output
from churn_platform.core.versions import current_version
from churn_platform.settings import Settings

SCORE_COLUMNS = ("churn_probability", "risk_tier", "expected_value", "reasons")
# A file holding these columns is an earlier top or score output, which --overwrite may replace.
OUTPUT_MARKERS = ("churn_probability", "risk_tier")


class NoScoresError(RuntimeError):
    """Nothing has been scored yet under this state root."""


def top_customers(
    settings: Settings, spec: DatasetSpec, n: int, tier: str | None = None
) -> list[dict[str, Any]]:
    """The `n` customers most likely to churn (of `tier` only, when given), highest first."""
    stored = current_version(settings.warehouse / "churn_scores")
    if stored is None:
        raise NoScoresError(
            f"no churn_scores under {settings.warehouse}; run `churn-platform run` first"
        )
    table = pq.read_table(stored, columns=[spec.id_column, *SCORE_COLUMNS]).to_pandas()
    if tier:
        table = table[table["risk_tier"] == tier]
    top = table.sort_values("churn_probability", ascending=False, kind="stable").head(n)
    return [
        {
            "customer_id": str(row[spec.id_column]),
            "churn_probability": float(row["churn_probability"]),
            "risk_tier": row["risk_tier"],
            "expected_value": float(row["expected_value"]),
            "reasons": [
                {
                    "feature": r["feature"],
                    "value": r["value"],
                    "contribution": float(r["contribution"]),
                }
                for r in (row["reasons"] if row["reasons"] is not None else [])
            ],
        }
        for _, row in top.iterrows()
    ]


def _reason_cells(record: dict[str, Any]) -> list[str]:
    cells = [f"{r['feature']}={r['value']} ({r['contribution']:+.2f})" for r in record["reasons"]]
    return cells + [""] * (3 - len(cells))


def top_table(records: list[dict[str, Any]]) -> str:
    """The list as a terminal table, one customer per line."""
    lines = [f"{'customer':<14} {'prob':>6} {'tier':<6} {'value':>7}  reasons"]
    for r in records:
        reasons = "; ".join(c for c in _reason_cells(r) if c)
        lines.append(
            f"{r['customer_id']:<14} {r['churn_probability']:>6.3f} {r['risk_tier']:<6} "
            f"{r['expected_value']:>7.0f}  {reasons}"
        )
    return "\n".join(lines)


def write_top_csv(records: list[dict[str, Any]], output: Path, overwrite: bool) -> None:
    """Spreadsheet-safe CSV (formula-looking cells quoted), swapped in when complete."""

    def safe(value: object) -> object:
        text = str(value)
        return f"'{text}" if isinstance(value, str) and text.startswith(FORMULA_STARTS) else value

    header = ["customer_id", "churn_probability", "risk_tier", "expected_value"]
    with staged_output(output, overwrite, OUTPUT_MARKERS) as target:
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*header, "reason_1", "reason_2", "reason_3"])
            for r in records:
                writer.writerow([safe(r[c]) for c in header] + list(map(safe, _reason_cells(r))))
