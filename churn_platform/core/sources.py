"""Reading sources into the raw layer: every value as text, with its source, file and line.

CSV goes through Spark's CSV reader (RFC 4180 quoting: long fields, doubled quotes, quoted
newlines) with an all-text schema and a corrupt-record column; no regex ever parses a line.
Line numbers come from a cheap path: a job over the file as plain text counts each partition's
lines and finds blank lines and lines with an odd number of quotes (a quoted newline). When
there are none, every record is one line, so a record's line follows from its partition's
offset and its position, and the CSV is parsed once, by the write. Only a file with blank lines
or quoted newlines is parsed as multi-line CSV (cached) and by Python's csv module, to map
records to the lines they start on.
"""

from __future__ import annotations

import csv
import hashlib
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
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
from churn_platform.etl import (
    InputDataError,
    file_sha256,
    read_csv_header,
    read_table_source,
    require_columns,
)

CORRUPT_COL = "_corrupt_record"
_BATCH_TIME = re.compile(r"^(\d{8})T(\d{6})")
# Past this many line shifts (blank lines, multi-line records) a CASE expression gets too
# large; the record -> line map is joined instead.
MAX_LINE_BREAKPOINTS = 500
_CHUNK = 1 << 22


@dataclass
class RawBatch:
    """A batch's raw rows, the content hash of each source, and any caches to release."""

    frame: DataFrame
    checksums: dict[str, str]
    cached: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()


@dataclass(frozen=True)
class FileScan:
    sha256: str
    lines: int


def scan_file(path: Path) -> FileScan:
    """Content hash and line count of a file in one pass over its bytes."""
    digest, newlines, last = hashlib.sha256(), 0, b""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
            newlines += chunk.count(b"\n")
            last = chunk
    lines = newlines + (1 if last and not last.endswith(b"\n") else 0)
    return FileScan(digest.hexdigest(), lines)


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


def _tagged(frame: DataFrame) -> DataFrame:
    return frame.select(
        "*",
        F.spark_partition_id().alias("_pid"),
        F.monotonically_increasing_id().alias("_mid"),
    )


def _offsets(counts: list[tuple[int, int]]) -> dict[int, int]:
    """Records before each partition, from (partition, records) pairs."""
    offsets, running = {}, 0
    for pid, n in sorted(counts):
        offsets[pid] = running
        running += n
    return offsets


def _cached_counts(tagged: DataFrame) -> tuple[DataFrame, dict[int, int], int]:
    """Cache the parsed rows; per-partition offsets and the record count, in one job."""
    tagged = tagged.persist()
    counts = [
        (row["_pid"], row["n"])
        for row in tagged.groupBy("_pid").agg(F.count(F.lit(1)).alias("n")).collect()
    ]
    offsets = _offsets(counts)
    return tagged, offsets, sum(n for _, n in counts)


@dataclass(frozen=True)
class LineCounts:
    """Per-partition line counts of a file read as text, and what breaks one-record-per-line."""

    offsets: dict[int, int]
    records: int
    irregular: int  # blank lines plus lines with an odd number of quotes


def count_lines(spark: SparkSession, path: Path) -> LineCounts:
    """One job over the file as text, split into the same partitions as the CSV reader's.

    Both readers cut one file at the same byte ranges and read lines the same way, so the
    counts per partition are the CSV records per partition when no line is irregular.
    """
    value = F.col("value")
    quotes = F.length(value) - F.length(F.replace(value, F.lit('"'), F.lit("")))
    odd_quotes = quotes % 2 == 1
    rows = (
        spark.read.text(str(path))
        .groupBy(F.spark_partition_id().alias("_pid"))
        .agg(
            F.count(F.lit(1)).alias("n"),
            # Spark's CSV reader skips lines that Java's trim() empties.
            F.sum((value.rlike("^[\\x00-\\x20]*$") | odd_quotes).cast("long")).alias("odd"),
        )
        .collect()
    )
    # The header is the first line of the first partition.
    counts = [(r["_pid"], r["n"] - (1 if r["_pid"] == 0 else 0)) for r in rows]
    return LineCounts(
        _offsets(counts), sum(n for _, n in counts), sum(int(r["odd"] or 0) for r in rows)
    )


def _ordinal(offsets: dict[int, int]) -> Column:
    """Dense 0-based record number in file order (partitions of one file follow its bytes)."""
    local = F.col("_mid") - F.shiftleft(F.col("_pid").cast("long"), 33)
    if not offsets:
        return local
    offset_map = F.create_map(*[F.lit(x) for pair in offsets.items() for x in pair])
    return offset_map[F.col("_pid")] + local


@dataclass(frozen=True)
class LineMap:
    """Where records start: record i is on line 2 + i + the delta of the last breakpoint <= i."""

    breakpoints: list[tuple[int, int]]
    blank_lines: list[int]
    records: int


def map_record_lines(path: Path, delimiter: str) -> LineMap:
    """Parse the file once in Python (RFC 4180, like Spark's reader) to find record lines.

    Spark skips empty lines; they are returned so that the raw layer can quarantine them.
    """
    csv.field_size_limit(sys.maxsize)  # a valid field may be arbitrarily long
    breakpoints: list[tuple[int, int]] = []
    blanks: list[int] = []
    delta, records = 0, 0
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        handle.readline()  # the header is its first line, as read_csv_header reads it
        reader = csv.reader(handle, delimiter=delimiter, quotechar='"', doublequote=True)
        previous_end = 1
        for row in reader:
            start = previous_end + 1
            previous_end = reader.line_num + 1
            if not row:
                blanks.append(start)
                continue
            shift = start - (2 + records)
            if shift != delta:
                breakpoints.append((records, shift))
                delta = shift
            records += 1
    return LineMap(breakpoints, blanks, records)


def _line_numbers(tagged: DataFrame, ordinal: Column, lines: LineMap | None) -> DataFrame:
    """Add the 1-based line number each record starts on."""
    first = F.lit(2).cast("long") + ordinal
    if lines is None or not lines.breakpoints:
        return tagged.withColumn(LINE_COL, first)
    if len(lines.breakpoints) <= MAX_LINE_BREAKPOINTS:
        shift = F.lit(0).cast("long")
        for start, delta in lines.breakpoints:  # ascending: each later breakpoint overrides
            shift = F.when(ordinal >= start, F.lit(delta).cast("long")).otherwise(shift)
        return tagged.withColumn(LINE_COL, first + shift)
    starts = pd.DataFrame(lines.breakpoints, columns=["_start", "_shift"])
    starts["_end"] = starts["_start"].shift(-1, fill_value=lines.records + 1)
    table = tagged.sparkSession.createDataFrame(starts)
    tagged = tagged.withColumn("_ord", ordinal)
    joined = tagged.join(
        F.broadcast(table),
        (F.col("_ord") >= F.col("_start")) & (F.col("_ord") < F.col("_end")),
        "left",
    )
    return joined.withColumn(
        LINE_COL, first + F.coalesce(F.col("_shift"), F.lit(0)).cast("long")
    ).drop("_ord", "_start", "_end", "_shift")


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
    with ThreadPoolExecutor(max_workers=1) as pool:  # hash the file while Spark counts lines
        scanning = pool.submit(scan_file, path)
        counted = count_lines(spark, path)
        scan = scanning.result()
    if counted.irregular == 0 and counted.records == scan.lines - 1:
        tagged = _tagged(_reader(spark, names, source.delimiter, multiline=False).csv(str(path)))
        offsets = counted.offsets
    else:
        # Blank lines or quoted newlines: parse as multi-line CSV (one split per file, so only
        # here), cache it, and map records to lines.
        tagged, offsets, _ = _cached_counts(
            _tagged(_reader(spark, names, source.delimiter, multiline=True).csv(str(path)))
        )
        cache = tagged
        lines = map_record_lines(path, source.delimiter)
    numbered = _line_numbers(tagged, _ordinal(offsets), lines)
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
