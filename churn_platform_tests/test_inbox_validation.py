"""An inbox file is accepted or rejected, with a reason a person can act on, before any Spark
job: CSV and Parquet, checked against the columns the dataset spec requires."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churn_platform.config import DatasetSpec, load_spec
from churn_platform.inbox import validate_inbox_file
from churn_platform.settings import DEFAULT_SPEC
from churn_platform_tests.conftest import TELCO_HEADER, telco_row


@pytest.fixture
def spec(tmp_path: Path) -> DatasetSpec:
    return load_spec(DEFAULT_SPEC, tmp_path)


def _csv(folder: Path, text: str | bytes) -> Path:
    path = folder / "batch.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _parquet(folder: Path, spec: DatasetSpec, rows: int, drop: str | None = None) -> Path:
    columns = [c for c in spec.declared_columns if c != drop]
    path = folder / "batch.parquet"
    pq.write_table(pa.table({c: ["x"] * rows for c in columns}), path)
    return path


def test_a_well_formed_csv_is_accepted(tmp_path: Path, spec: DatasetSpec) -> None:
    assert validate_inbox_file(_csv(tmp_path, f"{TELCO_HEADER}\n{telco_row('1')}\n"), spec) is None


@pytest.mark.parametrize("line_end", ["\r\n", "\r"])
def test_a_byte_order_mark_and_crlf_or_cr_line_ends_are_accepted(
    tmp_path: Path, spec: DatasetSpec, line_end: str
) -> None:
    """Spark's reader ends a line at CR LF or at a CR alone; so does the inbox's check."""
    text = f"\ufeff{TELCO_HEADER}{line_end}{telco_row('1')}{line_end}".encode()
    assert validate_inbox_file(_csv(tmp_path, text), spec) is None
    header_only = f"{TELCO_HEADER}{line_end}{line_end}".encode()
    assert validate_inbox_file(_csv(tmp_path, header_only), spec) == (
        "the file has a header but no data rows"
    )


def test_a_csv_without_a_required_column_names_it(tmp_path: Path, spec: DatasetSpec) -> None:
    header = TELCO_HEADER.replace(",tenure,", ",")
    reason = validate_inbox_file(_csv(tmp_path, f"{header}\n{telco_row('1')}\n"), spec)
    assert reason == "missing required column(s) ['tenure'] named in the dataset spec"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty (no header line)"),
        (f"{TELCO_HEADER}\n".encode(), "the file has a header but no data rows"),
        (f"{TELCO_HEADER}\n\n".encode(), "the file has a header but no data rows"),
        (b"customerID,\xff\xfe\n1,2\n", "line 1 (header) is not valid UTF-8"),
        (b"customerID,tenure,tenure\n1,2,3\n", "blank or repeated column names"),
        (b"customerID,Tenure,tenure\n1,2,3\n", "differ only in case"),
    ],
)
def test_a_csv_spark_could_not_read_as_meant_is_rejected(
    tmp_path: Path, spec: DatasetSpec, content: bytes, expected: str
) -> None:
    reason = validate_inbox_file(_csv(tmp_path, content), spec)
    assert reason is not None and expected in reason


def test_parquet_is_checked_from_its_footer(tmp_path: Path, spec: DatasetSpec) -> None:
    assert validate_inbox_file(_parquet(tmp_path, spec, rows=2), spec) is None
    assert validate_inbox_file(_parquet(tmp_path, spec, rows=0), spec) == "the file has no rows"
    missing = validate_inbox_file(_parquet(tmp_path, spec, rows=2, drop="Churn"), spec)
    assert missing == "missing required column(s) ['Churn'] named in the dataset spec"


def test_a_file_that_is_not_parquet_is_rejected_not_raised(
    tmp_path: Path, spec: DatasetSpec
) -> None:
    path = tmp_path / "batch.parquet"
    path.write_text(f"{TELCO_HEADER}\n{telco_row('1')}\n")
    reason = validate_inbox_file(path, spec)
    assert reason is not None and "Parquet" in reason
