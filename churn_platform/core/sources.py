"""Reading sources into the raw layer: every value as text, with its source, file and line.

CSV goes through Spark's CSV reader (RFC 4180 quoting: long fields, doubled quotes, quoted
newlines) with an all-text schema and a corrupt-record column; no regex ever parses a line.
Line numbers come from a cheap path: the driver counts the lines of each byte range the CSV
scan is planned to read from the file's bytes, beside its hash (no Spark job); where a lone CR, a
blank line or a line with an odd number of quotes makes that unsure, a job over the file as
plain text counts each partition's lines and finds blank lines and lines with an odd number of
quotes (a quoted newline). When there are none, every record is one line, so a record's line
follows from its partition's offset and its position, and the CSV is parsed once, by the write.
Only a file with blank lines or quoted newlines is parsed as multi-line CSV (cached) and by
Python's csv module, to map records to the lines they start on (the bookkeeping: `core.lines`).
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from churn_platform.config import DatasetSpec, SourceSpec
from churn_platform.core.columns import (
    BATCH_COL,
    BATCH_ORDER_COL,
    DUPLICATE_ID,
    ERROR_COL,
    FILE_COL,
    INVALID_ENCODING,
    LINE_COL,
    MALFORMED_LINE,
    SOURCE_COL,
    WRONG_FIELD_COUNT,
)
from churn_platform.core.input_files import (
    InputDataError,
    read_csv_header,
    refuse_case_duplicates,
)
from churn_platform.core.lines import (
    LineMap,
    cached_counts,
    count_lines,
    count_lines_here,
    count_lines_split,
    line_numbers,
    map_record_lines,
    one_split_bytes,
    ordinal,
    planned_splits,
    scan_file,
    tag_positions,
    with_line_numbers,
)
from churn_platform.core.ops.privacy import redact_message

CORRUPT_COL = "_corrupt_record"
_BATCH_TIME = re.compile(r"^(\d{8})T(\d{6})")


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


@dataclass
class RawBatch:
    """A batch's raw rows, the content hash of each source, and any caches to release."""

    frame: DataFrame
    checksums: dict[str, str]
    cached: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()


def _reader(spark: SparkSession, names: list[str], delimiter: str, multiline: bool):
    schema = T.StructType(
        [T.StructField(n, T.StringType()) for n in names]
        + [T.StructField(CORRUPT_COL, T.StringType())]
    )
    return spark.read.schema(schema).options(
        header=True,
        sep=delimiter,
        quote='"',
        escape='"',
        mode="PERMISSIVE",
        columnNameOfCorruptRecord=CORRUPT_COL,
        maxCharsPerColumn=-1,
        multiLine=multiline,
        encoding="UTF-8",
    )


def _field_count(text: Column, delimiter: str) -> Column:
    """Fields in a record's text: delimiters outside quoted sections, plus one.

    `"[^"]*"` has no alternation inside a repetition, so Java matches it without recursion on
    fields of any length; a doubled quote just splits one quoted section into two.
    """
    unquoted = F.regexp_replace(text, '"[^"]*"', "")
    return F.length(unquoted) - F.length(F.replace(unquoted, F.lit(delimiter))) + 1


def read_csv_source(
    spark: SparkSession, source: SourceSpec
) -> tuple[DataFrame, str, DataFrame | None]:
    """Raw rows of one CSV file, its content hash, and the cache of the parsed rows (if any)."""
    path = Path(str(source.path))
    names = read_csv_header(path, source.delimiter)
    lines: LineMap | None = None
    cache: DataFrame | None = None
    parsed = _reader(spark, names, source.delimiter, multiline=False).csv(str(path))
    if path.stat().st_size <= one_split_bytes(spark):
        counted, scan = count_lines_here(path)
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:  # hash the file while lines are counted
            scanning = pool.submit(scan_file, path)
            counted = count_lines_split(path, planned_splits(parsed)) or count_lines(spark, path)
            scan = scanning.result()
    if counted.irregular == 0 and counted.records == scan.lines - 1:
        tagged = tag_positions(parsed)
        offsets = counted.offsets
    else:
        # Blank lines or quoted newlines: parse as multi-line CSV (one split per file, so only
        # here), cache it, and map records to lines.
        tagged, offsets, _ = cached_counts(
            tag_positions(_reader(spark, names, source.delimiter, multiline=True).csv(str(path)))
        )
        cache = tagged
        lines = map_record_lines(path, source.delimiter)
    numbered = line_numbers(tagged, ordinal(offsets), lines)
    text = F.col(CORRUPT_COL)
    fields = _field_count(text, source.delimiter)
    replaced = [F.col(f"`{n}`").contains("\ufffd") for n in names]
    bad_bytes = replaced[0]
    for flag in replaced[1:]:
        bad_bytes = bad_bytes | flag
    error = (
        F.when(text.isNotNull() & (F.trim(text) == ""), F.lit(MALFORMED_LINE))
        .when(bad_bytes, F.lit(INVALID_ENCODING))
        .when(
            text.isNotNull() & (fields != len(names)),
            F.concat(F.lit(f"{WRONG_FIELD_COUNT}:"), fields.cast("string")),
        )
        .when(text.isNotNull(), F.lit(MALFORMED_LINE))
    )
    raw = numbered.select(
        *[F.col(f"`{n}`") for n in names],
        F.lit(source.name).alias(SOURCE_COL),
        F.lit(str(path)).alias(FILE_COL),
        F.col(LINE_COL),
        error.alias(ERROR_COL),
    )
    if lines is not None and lines.blank_lines:
        blank = spark.createDataFrame([(n,) for n in lines.blank_lines], f"`{LINE_COL}` long")
        raw = raw.unionByName(
            blank.select(
                *[F.lit(None).cast("string").alias(n) for n in names],
                F.lit(source.name).alias(SOURCE_COL),
                F.lit(str(path)).alias(FILE_COL),
                F.col(LINE_COL),
                F.lit(MALFORMED_LINE).alias(ERROR_COL),
            )
        )
    return raw, scan.sha256, cache


def source_checksum(spark: SparkSession, source: SourceSpec) -> str:
    """Content hash of a Parquet source (its files) or a JDBC table (an order-free row hash)."""
    if source.format != "jdbc":
        return file_sha256(Path(str(source.path)))
    df = read_table_source(spark, source).drop(SOURCE_COL, FILE_COL, LINE_COL, ERROR_COL)
    row = df.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(
            F.pmod(F.xxhash64(*[F.col(f"`{c}`") for c in df.columns]), F.lit(1_000_000_007))
        ).alias("h"),
    ).first()
    return hashlib.sha256(f"{row['n']}:{row['h']}".encode()).hexdigest()


def read_source(spark: SparkSession, source: SourceSpec) -> RawBatch:
    """One source as raw rows (no batch columns yet)."""
    if source.format == "csv":
        frame, checksum, cache = read_csv_source(spark, source)
        return RawBatch(frame, {source.location: checksum}, [cache] if cache else [])
    return RawBatch(
        read_table_source(spark, source), {source.location: source_checksum(spark, source)}
    )


def batch_order(batch: str) -> int:
    """Batches sort by the UTC time in their key; the spec's own sources come first."""
    match = _BATCH_TIME.match(batch)
    return int(match.group(1) + match.group(2)) if match else 0


def read_batch(
    spark: SparkSession,
    spec: DatasetSpec,
    sources: tuple[SourceSpec, ...],
    batch: str,
    batch_order: int,
) -> RawBatch:
    """One ingestion batch as raw text columns plus file/line bookkeeping.

    Secondary sources are left-joined to the first on the id column. Their malformed or
    duplicate rows are appended as error rows so that nothing read is lost. The caller
    releases the batch's caches (`release()`) once the raw layer is written.
    """
    parts: list[RawBatch] = []
    try:
        for source in sources:
            parts.append(read_source(spark, source))
        frames = [part.frame for part in parts]
        if len(frames) == 1:
            require_columns(frames[0], spec, str(sources[0].location))
            raw = frames[0]
        else:
            raw = _join_sources(frames, sources, spec)
    except Exception:
        for part in parts:
            part.release()
        raise
    return RawBatch(
        raw.withColumn(BATCH_COL, F.lit(batch)).withColumn(
            BATCH_ORDER_COL, F.lit(batch_order).cast("long")
        ),
        {k: v for part in parts for k, v in part.checksums.items()},
        [frame for part in parts for frame in part.cached],
    )


def _join_sources(
    frames: list[DataFrame], sources: tuple[SourceSpec, ...], spec: DatasetSpec
) -> DataFrame:
    id_col = spec.id_column
    for frame, source in zip(frames, sources, strict=True):
        if id_col not in frame.columns:
            raise InputDataError(f"{source.location}: missing id column {id_col!r}")
    all_columns = set().union(*[set(f.columns) for f in frames])
    missing = [c for c in spec.declared_columns if c not in all_columns]
    if missing:
        locations = ", ".join(s.location for s in sources)
        raise InputDataError(
            f"missing required column(s) {missing} named in the dataset spec; "
            f"none of the sources has them: {locations}"
        )
    joined = frames[0]
    rejected: list[DataFrame] = []
    for frame in frames[1:]:
        own = [c for c in frame.columns if c not in joined.columns or c == id_col]
        trimmed_id = F.trim(F.col(id_col))
        ranked = frame.withColumn(
            "_rank",
            F.row_number().over(Window.partitionBy(trimmed_id).orderBy(F.col(LINE_COL).desc())),
        )
        usable = (F.col(ERROR_COL).isNull()) & (F.col("_rank") == 1) & (trimmed_id != "")
        rejected.append(
            ranked.where(~usable)
            .withColumn(ERROR_COL, F.coalesce(F.col(ERROR_COL), F.lit(DUPLICATE_ID)))
            .drop("_rank")
        )
        right = ranked.where(usable).select(
            *[F.col(c) for c in own if c != id_col], trimmed_id.alias("_join_id")
        )
        joined = joined.join(right, F.trim(F.col(id_col)) == F.col("_join_id"), "left").drop(
            "_join_id"
        )
    return (
        joined.unionByName(_union_all(rejected), allowMissingColumns=True) if rejected else joined
    )


def _union_all(frames: list[DataFrame]) -> DataFrame:
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame, allowMissingColumns=True)
    return result
