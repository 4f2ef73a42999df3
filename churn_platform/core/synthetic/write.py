"""Synthetic customers written as ONE file, replaced atomically (`churn-platform generate`)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pyspark.sql import DataFrame

from churn_platform.core.ops.files import fsync_path

_COPY_BUFFER_BYTES = 16 << 20


def write_customers(
    df: DataFrame, path: str | Path, fmt: Literal["csv", "parquet"] = "csv"
) -> Path:
    """Write `df` as ONE file at `path`, replacing any previous file atomically.

    Spark writes into a hidden staging folder next to `path` (same file system); the result is
    assembled under a temporary name there and renamed onto `path` with `os.replace`, so readers
    see the old file or the new one, never half a file.

    CSV: every partition is written in parallel, then the part files are joined in partition
    order (byte copies, keeping the first header), which is twice as fast on two cores as
    funnelling all rows through one task. One header, LF line endings and values verbatim
    (Spark's default CSV write trims whitespace, which would empty the Telco blank
    `TotalCharges`).

    Parquet: a single file (snappy, all columns strings) from one Spark task. Spark reads a file
    path like a folder and splits it by row group, and one file keeps the same atomic
    replacement and `--output FILE` contract as CSV.

    The path must be on a file system that the Spark driver and executors share (local mode or
    a common mount).

    Returns:
        The absolute path of the written file.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"write_customers: fmt must be 'csv' or 'parquet', got {fmt!r}")
    target = Path(path).absolute()
    if target.is_dir():
        raise IsADirectoryError(f"write_customers: {target} is a directory, expected a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    hidden = f".{target.name}.{uuid.uuid4().hex}"
    staging, assembled = target.parent / f"{hidden}.parts", target.parent / f"{hidden}.tmp"
    try:
        if fmt == "csv":
            df.write.options(
                header=True,
                lineSep="\n",
                ignoreLeadingWhiteSpace=False,
                ignoreTrailingWhiteSpace=False,
            ).csv(str(staging))
            _join_csv_parts(_part_files(staging), assembled)
        else:
            df.coalesce(1).write.parquet(str(staging))
            parts = _part_files(staging)
            if len(parts) != 1:
                raise RuntimeError(
                    f"write_customers: expected one parquet part in {staging}, found {len(parts)}"
                )
            os.replace(parts[0], assembled)
        fsync_path(assembled)  # before the rename: a crash cannot leave a truncated file
        os.replace(assembled, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        assembled.unlink(missing_ok=True)
    return target


def _part_files(folder: Path) -> list[Path]:
    """Spark's part files in partition order (`part-00002` before `part-00010`)."""
    parts = sorted(folder.glob("part-*"), key=lambda part: int(part.name.split("-")[1]))
    if not parts:
        raise RuntimeError(f"write_customers: Spark wrote no part file into {folder}")
    return parts


def _join_csv_parts(parts: Sequence[Path], destination: Path) -> None:
    """Concatenate CSV part files, keeping only the first one's header line."""
    with destination.open("wb") as out:
        for number, part in enumerate(parts):
            with part.open("rb") as source:
                if number:
                    source.readline()
                shutil.copyfileobj(source, out, _COPY_BUFFER_BYTES)
