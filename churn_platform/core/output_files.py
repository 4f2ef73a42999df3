"""Where a command writes its result: never over something the platform did not write itself.

`churn-platform score --output PATH` once deleted any folder it was given. The rules now: an
existing PATH is replaced only when the user asked (`overwrite`) and PATH is recognisably an
earlier score output of this platform; the new output is staged beside PATH in a folder this
module creates, and swapped in only when complete, so a failed write leaves the old output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI checks output paths here before anything imports Spark
    from pyspark.sql import DataFrame

# Written into every Parquet score folder; its presence is what "our own output" means there.
MARKER = "_CHURN_SCORES"
SUFFIXES = (".csv", ".parquet")
# Columns every score output carries after the id: how an earlier CSV output is recognised.
SCORE_COLUMNS = ("churn_probability", "churn_predicted", "risk_tier", "model_version")


# A spreadsheet runs a cell starting with one of these as a formula (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(df: DataFrame) -> DataFrame:
    """Text cells a spreadsheet would execute get a leading single quote, as OWASP advises.

    An id such as `=cmd|' /C calc'!A0` in an input file must reach a score CSV as data.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    columns = []
    for fld in df.schema.fields:
        value = F.col(f"`{fld.name}`")
        if isinstance(fld.dataType, T.StringType):
            risky = F.substring(value, 1, 1).isin(*FORMULA_STARTS)
            value = F.when(risky, F.concat(F.lit("'"), value)).otherwise(value)
        columns.append(value.alias(fld.name))
    return df.select(*columns)


class OutputRefused(ValueError):
    """The output path cannot be written without risking data the platform does not own."""


def _is_score_csv(path: Path, columns: Sequence[str]) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            header = handle.readline().strip().split(",")
    except OSError:
        return False
    return all(column in header for column in columns)


def is_own_output(path: Path, columns: Sequence[str]) -> bool:
    """A Parquet folder carrying the marker, or a CSV file whose header has the score columns."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return (path / MARKER).is_file()
    return path.is_file() and path.suffix == ".csv" and _is_score_csv(path, columns)


def check_target(path: Path, overwrite: bool, columns: Sequence[str] = SCORE_COLUMNS) -> None:
    """Refuse, before any work, an output that would replace something not ours (or unasked)."""
    if path.suffix not in SUFFIXES:
        raise OutputRefused(f"{path}: the output must end in .csv or .parquet")
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise OutputRefused(
            f"{path} already exists; pass --overwrite to replace an earlier score output"
        )
    if not is_own_output(path, columns):
        raise OutputRefused(
            f"{path} exists and is not a score output of this platform; refusing to replace it "
            "(choose a new output path)"
        )


@contextmanager
def staged_output(path: Path, overwrite: bool, columns: Sequence[str]) -> Iterator[Path]:
    """A fresh staging folder beside `path`; on success its content replaces `path` atomically.

    The body writes the result to `<staging>/<path.name>` (a file or a folder). On error the
    staging folder (created here) is removed and `path` is untouched.
    """
    check_target(path, overwrite, columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".staging", dir=path.parent))
    try:
        yield staging / path.name
        _swap_in(staging / path.name, path, overwrite, columns)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(new: Path, path: Path, overwrite: bool, columns: Sequence[str]) -> None:
    if new.is_dir():
        (new / MARKER).touch()
    check_target(path, overwrite, columns)  # again: the path may have appeared meanwhile
    if path.is_dir():
        retired = new.parent / f"{path.name}.previous"
        os.replace(path, retired)  # inside our staging folder, removed with it
    os.replace(new, path)
