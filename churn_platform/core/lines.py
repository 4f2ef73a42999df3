"""Where each CSV record starts: line counts per partition and the record -> line map.

The raw layer quarantines a bad record by the line it starts on. When every record is one
line, a record's line follows from its partition's offset and its position. The offsets come
from `count_lines_split` (the driver, for the scan's planned byte ranges), `count_lines_here`
(the driver, for a file read as one partition) or `count_lines` (one job over the file as text,
where a lone CR, a blank line or a line with an odd number of quotes makes the driver's count
unsure); a file with blank lines or quoted newlines is also parsed by Python's csv module
(`map_record_lines`) to find where its records start.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import is_remote

from churn_platform.core.columns import LINE_COL

# Past this many line shifts (blank lines, multi-line records) a CASE expression gets too
# large; the record -> line map is joined instead.
MAX_LINE_BREAKPOINTS = 500
_CHUNK = 1 << 22
# The largest file whose lines the driver counts from its bytes held in memory (4 MB is Spark's
# default open cost, which usually bounds it first).
HERE_MAX_BYTES = 64 << 20
# What Java's trim() removes: a line of only these is one Spark's CSV reader skips.
_BLANK = bytes(range(0x21))
# A line of only such bytes between two line feeds (a CR of a CR LF among them; a CR on its own,
# which ends a line too, is refused before this is searched).
_BLANK_LINE = re.compile(rb"\n[\x00-\x09\x0b-\x20]*\n")


@dataclass(frozen=True)
class FileScan:
    """A file's content hash and its number of lines, from one pass over its bytes."""

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
    return _scanned(digest, newlines, last)


def _scanned(digest: hashlib._Hash, newlines: int, last: bytes) -> FileScan:
    """The scan of bytes that held `newlines` line feeds and ended with `last` (a final line
    without a line feed counts too)."""
    return FileScan(digest.hexdigest(), newlines + (1 if last and not last.endswith(b"\n") else 0))


def tag_positions(frame: DataFrame) -> DataFrame:
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


def cached_counts(tagged: DataFrame) -> tuple[DataFrame, dict[int, int], int]:
    """Cache the parsed rows; per-partition offsets and the record count, in one job."""
    tagged = tagged.persist()
    counts = _partition_counts(tagged)
    return tagged, _offsets(counts), sum(n for _, n in counts)


def _partition_counts(tagged: DataFrame) -> list[tuple[int, int]]:
    """(partition, rows) of a `tag_positions` frame, in one job."""
    return [
        (row["_pid"], row["n"])
        for row in tagged.groupBy("_pid").agg(F.count(F.lit(1)).alias("n")).collect()
    ]


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


def one_split_bytes(spark: SparkSession) -> int:
    """Bytes up to which a file is read as one partition, whatever the parallelism: Spark's
    split size is never below the smaller of the open cost and the partition maximum. 0 where
    the session's configuration is not at hand (Spark Connect); at most `HERE_MAX_BYTES`, the
    most `count_lines_here` reads into the driver's memory."""
    if is_remote():
        return 0
    conf = spark._jsparkSession.sessionState().conf()  # noqa: SLF001
    return int(min(conf.filesOpenCostInBytes(), conf.filesMaxPartitionBytes(), HERE_MAX_BYTES))


def count_lines_here(path: Path) -> tuple[LineCounts, FileScan]:
    """`count_lines` and `scan_file` of a file read as one partition, from its bytes on the
    driver: no Spark job (the first query of `score`, or a small batch's raw layer).

    Lines end at LF, CR or CR LF, as Hadoop's line reader splits them; a line is irregular as
    `count_lines` judges it (only bytes up to 0x20, or an odd number of quotes).
    """
    data = path.read_bytes()
    lines = data.splitlines()
    irregular = sum(1 for line in lines if not line.strip(_BLANK) or line.count(b'"') % 2)
    counts = [(0, len(lines) - 1)] if lines else []  # the header is the first line
    counted = LineCounts(_offsets(counts), sum(n for _, n in counts), irregular)
    return counted, _scanned(hashlib.sha256(data), data.count(b"\n"), data)


def planned_splits(frame: DataFrame) -> list[tuple[int, int, int]] | None:
    """(partition, first byte, end byte) of each range a scan of one file reads, from the
    scan's planned partitions: no Spark job. None under Spark Connect or for another plan."""
    if is_remote():
        return None
    leaves = frame._jdf.queryExecution().executedPlan().collectLeaves()  # noqa: SLF001
    scan = leaves.head() if leaves.size() == 1 else None
    if scan is None or scan.getClass().getSimpleName() != "FileSourceScanExec":
        return None
    return [
        (partition.index(), piece.start(), piece.start() + piece.length())
        for partition in scan.inputRDD().partitions()
        for piece in partition.files()
    ]


def count_lines_split(path: Path, splits: list[tuple[int, int, int]] | None) -> LineCounts | None:
    """`count_lines` from the file's bytes on the driver, for the byte ranges `planned_splits`
    gives: no job over the file as text.

    Hadoop's line reader gives a range the lines that start after its first byte and up to its
    end byte (the first range also the line at byte 0). None, for Spark's job to count, where
    that is not sure to be every CSV record: ranges that do not tile the file in partition
    order, or anywhere a CR without an LF after it (a line end too), a line with an odd number
    of quotes (its record may go on) or a blank line.
    """
    ordered = sorted(splits or [])
    bounds = [(start, end) for _, start, end in ordered]
    if not bounds or bounds[0][0] != 0 or bounds[-1][1] != path.stat().st_size:
        return None
    if any(end != start for (_, end), (start, _) in itertools.pairwise(bounds)):
        return None  # a gap or an overlap: partition order is not the file's byte order
    counts: dict[int, int] = {}
    carry = b"\n"  # the line read so far while it is blank (a blank first line is irregular)
    quotes: int | None = 0  # parity of the quotes on the line read so far
    after_cr = False  # whether the bytes read so far end in a CR
    with path.open("rb") as handle:
        for pid, start, end in ordered:
            handle.seek(start)
            lines = 1 if start == 0 else 0  # the line at byte 0; the others follow a line feed
            while handle.tell() < end:
                chunk = handle.read(min(_CHUNK, end - handle.tell()))
                window = carry + chunk
                if not chunk or _lone_cr(chunk, after_cr) or _BLANK_LINE.search(window):
                    return None
                after_cr = chunk.endswith(b"\r")
                quotes = _quote_parity(chunk, quotes)
                if quotes is None:
                    return None
                lines += chunk.count(b"\n")
                last = window.rfind(b"\n")
                if last >= 0 or carry:  # else a line with a non-blank byte goes on
                    tail = window[max(last, 0) :]
                    carry = tail if not tail.strip(_BLANK) else b""
            counts[pid] = counts.get(pid, 0) + lines
    if carry not in (b"", b"\n") or quotes or after_cr:
        return None  # a last line of only blanks (the reader skips it), an odd quote or a CR
    if carry == b"\n":
        counts[ordered[-1][0]] -= 1  # a final line feed starts no line
    # As Spark's job counts: the partitions that read a line, less the header from the first.
    read = [(pid, n - (1 if pid == ordered[0][0] else 0)) for pid, n in counts.items() if n]
    return LineCounts(_offsets(read), sum(n for _, n in read), 0)


def _lone_cr(chunk: bytes, after_cr: bool) -> bool:
    """Whether `chunk`, read after bytes ending in a CR if `after_cr`, holds a CR that no LF
    follows: a line end of its own, which the driver's count of line feeds would miss."""
    if after_cr and not chunk.startswith(b"\n"):
        return True
    if b"\r" not in chunk:
        return False
    return chunk.count(b"\r") - chunk.endswith(b"\r") != chunk.count(b"\r\n")


def _quote_parity(chunk: bytes, parity: int) -> int | None:
    """The parity of the quotes on the line `chunk` leaves open, given `parity` on the line it
    goes on with; None if a line it ends holds an odd number of quotes."""
    if b'"' not in chunk:
        return None if parity and b"\n" in chunk else parity
    data = np.frombuffer(chunk, dtype=np.uint8)
    breaks = np.flatnonzero(data == ord("\n"))
    line_of_quote = np.searchsorted(breaks, np.flatnonzero(data == ord('"')))
    per_line = np.bincount(line_of_quote, minlength=len(breaks) + 1)
    per_line[0] += parity
    return None if (per_line[:-1] % 2).any() else int(per_line[-1] % 2)


def ordinal(offsets: dict[int, int]) -> Column:
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


def line_numbers(tagged: DataFrame, ordinal: Column, lines: LineMap | None) -> DataFrame:
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


def with_line_numbers(df: DataFrame, first_line: int = 1) -> DataFrame:
    """Number rows in file order: one job counts each partition's rows (`ordinal`).

    Valid for a scan of one file, whose partitions follow the file's byte order.
    """
    tagged = tag_positions(df)
    line = ordinal(_offsets(_partition_counts(tagged))) + F.lit(first_line)
    return tagged.withColumn(LINE_COL, line.cast("long")).drop("_pid", "_mid")
