"""A user's mistake ends in one clear line naming what was wrong, never a traceback."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from churn_platform import cli
from churn_platform.core.input_files import HEADER_MAX_BYTES, InputDataError, read_csv_header
from churn_platform.settings import load_settings


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one `error:` line (MLflow may log its database creation before it)."""
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and err.strip().endswith(line), err
    return line


def test_header_with_columns_differing_only_in_case_names_both(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_text("customerID,tenure,TENURE,Churn\nc1,1,2,No\n")
    with pytest.raises(InputDataError, match="'tenure' and 'TENURE' differ only in case"):
        read_csv_header(path, ",")
    with pytest.raises(InputDataError, match=str(path)):
        read_csv_header(path, ",")


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
def test_the_header_line_ends_where_spark_ends_lines(tmp_path: Path, line_end: str) -> None:
    """LF, CR LF or a CR alone ends the header, as Spark's reader ends a line; a first line
    too long to be a header is refused by name instead of read whole into memory."""
    path = tmp_path / "customers.csv"
    path.write_bytes(line_end.join(["customerID,tenure", "c1,1", ""]).encode())
    assert read_csv_header(path, ",") == ["customerID", "tenure"]
    # A file longer than the bound still has a short header, whatever ends its lines.
    path.write_bytes(line_end.join(["customerID,tenure", *["c1,1"] * 300_000, ""]).encode())
    assert read_csv_header(path, ",") == ["customerID", "tenure"]
    path.write_bytes(b"customerID," + b"x" * HEADER_MAX_BYTES + b"\nc1,1\n")
    with pytest.raises(InputDataError, match=rf"{path}: line 1 \(header\) is longer than"):
        read_csv_header(path, ",")


def test_incidents_show_without_an_id(churn_home: Path, capsys) -> None:
    assert cli.main(["incidents", "show"]) == cli.EXIT_USAGE
    assert "needs an incident id" in _error_line(capsys)


def test_incidents_show_with_an_unknown_id(churn_home: Path, capsys) -> None:
    assert cli.main(["incidents", "show", "INC-20260101-0042"]) == cli.EXIT_USAGE
    assert "no incident INC-20260101-0042" in _error_line(capsys)


def test_rollback_without_any_registered_model(churn_home: Path, capsys) -> None:
    assert cli.main(["model", "rollback"]) == cli.EXIT_FAILED
    assert "churn-telco has no champion to roll back" in _error_line(capsys)


def test_rollback_to_a_version_that_does_not_exist(churn_home: Path, capsys) -> None:
    settings = load_settings()
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    client.create_registered_model("churn-telco")
    version = client.create_model_version("churn-telco", str(churn_home / "model"))
    client.set_registered_model_alias("churn-telco", "champion", version.version)
    assert cli.main(["model", "rollback", "--to-version", "999"]) == cli.EXIT_FAILED
    assert "churn-telco has no version '999'" in _error_line(capsys)
