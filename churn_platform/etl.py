"""Reading helpers shared by the data layers: headers, table sources, line numbers, errors.

The data layers themselves live in churn_platform.core (sources, cleaning, features); the
column names, reasons and feature helpers are re-exported here for code that imports them
from `etl`.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.config import DatasetSpec, SourceSpec

# Re-exported for code that imports them from here; they live in churn_platform.core.
from churn_platform.core.columns import (  # noqa: F401
    BATCH_COL,
    BATCH_ORDER_COL,
    DETAIL_COL,
    DUPLICATE_ID,
    ERROR_COL,
    FEATURES_COL,
    FILE_COL,
    FOLD_COL,
    INVALID_ENCODING,
    LABEL_COL,
    LINE_COL,
    MALFORMED_LINE,
    META_COLS,
    MISSING_ID,
    MISSING_TARGET,
    NON_FINITE_NUMBER,
    OUT_OF_RANGE,
    REASON_COL,
    SOURCE_COL,
    SPLIT_COL,
    UNKNOWN_TARGET,
    UNPARSEABLE_NUMBER,
    WRONG_FIELD_COUNT,
)
from churn_platform.core.features import (  # noqa: F401
    ENGINEERED_CATEGORICAL,
    ENGINEERED_FEATURES,
    SERVICE_COLUMNS,
    assign_split,
    cap_training_rows,
    engineer_features,
    feature_roles,
    fit_feature_pipeline,
)
from churn_platform.core.ops.privacy import redact_message


class InputDataError(ValueError):
    """Input that cannot be read at all; the message names the file and the column or row."""


# ---------------------------------------------------------------------------------------------
# Reading


def file_sha256(path: Path) -> str:
    """Content hash of a file or of every file below a folder (sorted, so it is stable)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        if path.is_dir():
            digest.update(str(item.relative_to(path)).encode())
        with item.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_csv_header(path: Path, delimiter: str) -> list[str]:
    """Column names from the first line; a UTF-8 BOM and CRLF are accepted."""
    if not path.is_file():
        raise InputDataError(f"{path}: file not found")
    with path.open("rb") as handle:
        first = handle.readline()
    if not first.strip():
        raise InputDataError(f"{path}: the file is empty (no header line)")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: line 1 (header) is not valid UTF-8: {exc.reason}") from exc
    names = next(csv.reader(io.StringIO(text.rstrip("\r\n")), delimiter=delimiter))
    names = [n.strip() for n in names]
    if len(set(names)) != len(names) or not all(names):
        raise InputDataError(f"{path}: the header has blank or repeated column names: {names}")
    refuse_case_duplicates(names, str(path))
    return names


def refuse_case_duplicates(names: list[str], where: str) -> None:
    """Spark resolves column names case-insensitively: `TENURE` beside `tenure` is ambiguous."""
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise InputDataError(
                f"{where}: columns {seen[name.lower()]!r} and {name!r} differ only in case; "
                "rename one (Spark cannot tell them apart)"
            )
        seen[name.lower()] = name


def with_line_numbers(df: DataFrame, first_line: int = 1) -> DataFrame:
    """Number rows in file order without a Python round trip.

    monotonically_increasing_id() encodes (partition, index in partition); adding the row counts
    of earlier partitions turns it into a dense line number. Valid for a scan of one file, whose
    partitions follow the file's byte order.
    """
    tagged = df.withColumn("_pid", F.spark_partition_id()).withColumn(
        "_mid", F.monotonically_increasing_id()
    )
    counts = sorted((row["_pid"], row["count"]) for row in tagged.groupBy("_pid").count().collect())
    offsets: dict[int, int] = {}
    running = 0
    for pid, count in counts:
        offsets[pid] = running
        running += count
    offset_map = F.create_map(*[F.lit(x) for pair in offsets.items() for x in pair])
    local_index = F.col("_mid") - F.shiftleft(F.col("_pid").cast("long"), 33)
    offset = offset_map[F.col("_pid")] if offsets else F.lit(0)
    return tagged.withColumn(
        LINE_COL, (offset + local_index + F.lit(first_line)).cast("long")
    ).drop("_pid", "_mid")


def read_table_source(spark: SparkSession, source: SourceSpec) -> DataFrame:
    """Parquet or JDBC: typed sources, cast to text so raw has one shape for every format."""
    if source.format == "parquet":
        path = Path(str(source.path))
        if not path.exists():
            raise InputDataError(f"{path}: file not found")
        df = spark.read.parquet(str(path))
    else:
        reader = (
            spark.read.format("jdbc")
            .option("url", source.url)
            .option("dbtable", source.table)
            .option("driver", _jdbc_driver(source.url or ""))
        )
        if source.user:
            reader = reader.option("user", source.user)
        password = source.password()
        if password is not None:
            reader = reader.option("password", password)
        try:
            df = reader.load()
        except Exception as exc:  # Spark raises several types; all mean "cannot read this source"
            # Only the redacted first line: the driver's own error may echo the credentials.
            first_line = redact_message(
                str(exc).strip().splitlines()[0], source.url or "", password
            )
            raise InputDataError(
                f"source {source.name} ({source.location}): {first_line}"
            ) from None
    refuse_case_duplicates(df.columns, source.location)
    numbered = with_line_numbers(df)
    return numbered.select(
        *[F.col(f"`{c}`").cast("string").alias(c) for c in df.columns],
        F.lit(source.name).alias(SOURCE_COL),
        F.lit(source.location).alias(FILE_COL),
        F.col(LINE_COL),
        F.lit(None).cast("string").alias(ERROR_COL),
    )


def _jdbc_driver(url: str) -> str:
    drivers = {
        "jdbc:postgresql:": "org.postgresql.Driver",
        "jdbc:sqlite:": "org.sqlite.JDBC",
    }
    for prefix, driver in drivers.items():
        if url.startswith(prefix):
            return driver
    raise InputDataError(f"no JDBC driver known for {url.split('//')[0]}")


def require_columns(df: DataFrame, spec: DatasetSpec, where: str) -> None:
    missing = [c for c in spec.declared_columns if c not in df.columns]
    if missing:
        raise InputDataError(
            f"{where}: missing required column(s) {missing} named in the dataset spec "
            f"{spec.spec_file or spec.name}"
        )
