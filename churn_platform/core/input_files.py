"""A user's input file checked from its first bytes, without Spark.

The raw layer, the inbox sensor and `score` read a CSV file's header here, so a file that cannot
be used (no header, a bad header, columns the spec needs missing; for `score` also a folder that
does not hold Parquet files) is refused with its name and the columns before any JVM work:
`score` says so in well under a second instead of after starting Spark.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from churn_platform.config import DatasetSpec, SourceSpec

# As Spark reads lines: up to LF, CR or CR LF (a file of CR line ends has no LF at all).
_LINE_END = re.compile(rb"\r\n?|\n")
# The most of a file read to find its header line (and, after it, its first data line).
HEADER_MAX_BYTES = 1 << 20
# A header of one column holding one of these was most likely meant to be split at it.
_OTHER_DELIMITERS = (";", "\t", "|")
_PARQUET_MAGIC = b"PAR1"


class InputDataError(ValueError):
    """Input that cannot be read at all; the message names the file and the column or row."""


class SchemaMismatchError(ValueError):
    """The data to score lacks columns the model's signature requires."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(
            f"input is missing {len(self.missing)} column(s) the model needs: "
            + ", ".join(self.missing)
        )


def score_source(path: Path) -> SourceSpec:
    """How a file to score is read: a `.parquet` file or any folder as Parquet, else as CSV."""
    fmt = "parquet" if path.suffix == ".parquet" or path.is_dir() else "csv"
    return SourceSpec(name="score_input", format=fmt, path=str(path))


def check_score_header(source: SourceSpec, spec: DatasetSpec) -> None:
    """A CSV file to score has a readable, comma-separated header with every column the spec
    scores from; a Parquet file or folder holds Parquet files (its columns are checked when
    Spark reads its schema)."""
    path = Path(str(source.path))
    if source.format != "csv":
        _check_parquet_files(path)
        return
    names = read_csv_header(path, source.delimiter)
    if len(names) == 1 and any(other in names[0] for other in _OTHER_DELIMITERS):
        raise InputDataError(
            f"{path}: the header is one column ({names[0][:60]!r}); a file to score is "
            f"separated by {source.delimiter!r}"
        )
    check_input_columns(names, spec.scoring_columns)


def data_files(path: Path) -> list[Path]:
    """The files a Spark scan of `path` reads: the file itself, or a folder's files but those
    Spark hides (any part of the path below the folder starting with `_` or `.`)."""
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part[0] in "_." for part in p.relative_to(path).parts)
    )


def local_path(uri: str) -> Path | None:
    """The path of a Spark file URI (`DataFrame.inputFiles()`) on this machine's file system,
    or None for another file system."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None


def _check_parquet_files(path: Path) -> None:
    """Each data file of a Parquet input (`data_files`) starts and ends with Parquet's magic
    bytes."""
    files = data_files(path)
    if not files:
        raise InputDataError(f"{path}: no data files in the folder")
    for file in files:
        with file.open("rb") as handle:
            head = handle.read(len(_PARQUET_MAGIC))
            handle.seek(max(file.stat().st_size - len(_PARQUET_MAGIC), 0))
            tail = handle.read()
        if head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
            raise InputDataError(
                f"{file}: not a Parquet file (a .parquet file or a folder to score holds "
                "Parquet files; a CSV file is scored by its own name)"
            )


def check_input_columns(columns: Sequence[str], required: Sequence[str]) -> None:
    """Fail before scoring, naming every missing column, instead of deep inside Spark."""
    present = set(columns)
    missing = [column for column in required if column not in present]
    if missing:
        raise SchemaMismatchError(missing)


def _leading_lines(path: Path, count: int) -> tuple[list[bytes], bool]:
    """Up to `count` first lines of `path` (cut as Spark cuts lines), from at most `count`
    times `HEADER_MAX_BYTES`; and whether the read stopped inside the last line returned."""
    if not path.is_file():
        raise InputDataError(f"{path}: file not found")
    with path.open("rb") as handle:
        start = handle.read(count * HEADER_MAX_BYTES)
    lines = _LINE_END.split(start, maxsplit=count)
    cut = len(lines) <= count and len(start) == count * HEADER_MAX_BYTES
    return lines[:count], cut


def read_csv_header(path: Path, delimiter: str) -> list[str]:
    """Column names from the first line; a UTF-8 BOM and CR LF or CR line ends are accepted."""
    (first,), cut = _leading_lines(path, 1)
    return _header_names(path, first, cut, delimiter)


def read_csv_head(path: Path, delimiter: str) -> tuple[list[str], bool]:
    """`read_csv_header`'s names and whether the next line holds anything but blanks, from
    one read of the file's first bytes (the inbox refuses a header without data)."""
    lines, cut = _leading_lines(path, 2)
    names = _header_names(path, lines[0], cut and len(lines) == 1, delimiter)
    return names, len(lines) == 2 and bool(lines[1].decode("utf-8", errors="replace").strip())


def _header_names(path: Path, first: bytes, cut: bool, delimiter: str) -> list[str]:
    """The checked column names of a header line (`cut`: the read stopped inside it)."""
    if cut or len(first) > HEADER_MAX_BYTES:
        raise InputDataError(f"{path}: line 1 (header) is longer than {HEADER_MAX_BYTES} bytes")
    if not first.strip():
        raise InputDataError(f"{path}: the file is empty (no header line)")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: line 1 (header) is not valid UTF-8: {exc.reason}") from exc
    names = next(csv.reader(io.StringIO(text), delimiter=delimiter))
    names = [n.strip() for n in names]
    if len(set(names)) != len(names) or not all(names):
        raise InputDataError(f"{path}: the header has blank or repeated column names: {names}")
    refuse_case_duplicates(names, str(path))
    return names


def refuse_case_duplicates(names: Sequence[str], where: str) -> None:
    """Spark resolves column names case-insensitively: `TENURE` beside `tenure` is ambiguous."""
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise InputDataError(
                f"{where}: columns {seen[name.lower()]!r} and {name!r} differ only in case; "
                "rename one (Spark cannot tell them apart)"
            )
        seen[name.lower()] = name
