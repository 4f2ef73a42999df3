"""`score --output` never removes what the platform did not write (the folder-deleting bug)."""

from __future__ import annotations

from pathlib import Path

import pytest

from churn_platform import cli
from churn_platform.core import output_files
from churn_platform.core.output_files import MARKER, OutputRefused, staged_output

HEADER = "customerID,churn_probability,churn_predicted,risk_tier,model_name,model_version\n"


def _user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "precious.parquet"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    return folder


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_the_platform_did_not_write_is_never_replaced(tmp_path, overwrite):
    folder = _user_folder(tmp_path)
    with pytest.raises(OutputRefused, match="precious.parquet"):
        with staged_output(folder, overwrite, ["churn_probability"]) as target:
            target.mkdir()
    assert (folder / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.parquet"]


def test_an_earlier_output_is_replaced_only_when_asked(tmp_path):
    out = tmp_path / "scores.csv"
    out.write_text(HEADER + "a,0.5,1,high,m,1\n")
    with pytest.raises(OutputRefused, match="--overwrite"):
        with staged_output(out, False, ["churn_probability", "risk_tier"]) as target:
            target.write_text("new")
    with staged_output(out, True, ["churn_probability", "risk_tier"]) as target:
        target.write_text(HEADER + "b,0.1,0,low,m,2\n")
    assert out.read_text().endswith("b,0.1,0,low,m,2\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_a_failed_write_keeps_the_previous_output(tmp_path):
    out = tmp_path / "scores.parquet"
    out.mkdir()
    (out / MARKER).touch()
    (out / "part-0.parquet").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_output(out, True, ["churn_probability"]) as target:
            target.mkdir()
            raise RuntimeError("disk full")
    assert (out / "part-0.parquet").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet"]


def test_score_refuses_an_existing_folder_before_starting_spark(tmp_path, capsys, churn_home):
    folder = _user_folder(tmp_path)
    customers = tmp_path / "customers.csv"
    customers.write_text("customerID\nx\n")
    for extra in ([], ["--overwrite"]):
        code = cli.main(["score", "--input", str(customers), "--output", str(folder), *extra])
        assert code == cli.EXIT_USAGE
        assert str(folder) in capsys.readouterr().err
    assert (folder / "thesis.txt").read_text() == "years of work"
    # The state root itself, the probe's worst case, is refused the same way.
    code = cli.main(["score", "--input", str(customers), "--output", str(churn_home)])
    assert code == cli.EXIT_USAGE and churn_home.is_dir()


def test_score_csv_cells_a_spreadsheet_would_execute_are_quoted(spark):
    """Issue 19.6: ids like `=cmd|' /C calc'!A0` reached score CSVs unescaped."""
    ids = ["=cmd|' /C calc'!A0", "@SUM(1+1)", "+1", "-2", "\tx", "\rx", "0001-A"]
    df = spark.createDataFrame(
        [(i, 0.5) for i in ids], "customerID string, churn_probability double"
    )
    safe = {r["customerID"] for r in output_files.formula_safe(df).collect()}
    assert safe == {"'" + i for i in ids[:-1]} | {"0001-A"}
    assert output_files.formula_safe(df).schema == df.schema
