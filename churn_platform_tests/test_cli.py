"""The `churn-platform` command: JSON summaries, recorded runs, and clear failures."""

import json

from churn_platform import cli
from churn_platform_tests.conftest import DATA_LAYERS, TELCO_HEADER, telco_row


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_bad_rows_are_reported_in_the_quarantine_summary(spark, churn_home, capsys):
    data = churn_home / "data"
    data.mkdir()
    rows = [telco_row(f"id{i}", churn="Yes" if i % 4 == 0 else "No") for i in range(60)]
    rows += [telco_row("bad1") + ",x", telco_row("id3"), telco_row("bad2", total="n/a")]
    (data / "telco_churn.csv").write_text("\n".join([TELCO_HEADER, *rows]) + "\n")
    code = cli.main(["run", "--select", DATA_LAYERS, "--json"])
    summary = _last_json(capsys)
    assert code == 0
    assert summary["quarantine"] == {
        "total": 3,
        "by_reason": {"duplicate_id": 1, "unparseable_number": 1, "wrong_field_count": 1},
    }


def test_too_many_quarantined_rows_fail_the_run(spark, churn_home, capsys, monkeypatch):
    monkeypatch.setenv("CHURN_QUARANTINE_MAX_RATIO", "0.01")
    data = churn_home / "data"
    data.mkdir()
    rows = [telco_row(f"id{i}", churn="Yes" if i % 4 == 0 else "No") for i in range(20)]
    rows += [telco_row(f"bad{i}", total="n/a") for i in range(5)]
    (data / "telco_churn.csv").write_text("\n".join([TELCO_HEADER, *rows]) + "\n")
    code = cli.main(["run", "--select", DATA_LAYERS, "--json"])
    captured = capsys.readouterr()
    assert code != 0
    assert "quarantine_ratio_within_limit" in captured.err
    assert "customer_features" not in json.loads(captured.out.strip().splitlines()[-1])["assets"]


def test_missing_column_fails_with_file_and_column(spark, churn_home, capsys):
    data = churn_home / "data"
    data.mkdir()
    header = TELCO_HEADER.replace(",Contract", "")
    row = telco_row("1").replace(",Month-to-month", "")
    (data / "telco_churn.csv").write_text(f"{header}\n{row}\n")
    code = cli.main(["run", "--select", DATA_LAYERS])
    err = capsys.readouterr().err
    assert code != 0
    assert "Contract" in err and "telco_churn.csv" in err


def test_header_only_file_is_a_clear_error(spark, churn_home, capsys):
    data = churn_home / "data"
    data.mkdir()
    (data / "telco_churn.csv").write_text(TELCO_HEADER + "\n")
    code = cli.main(["run", "--select", DATA_LAYERS])
    err = capsys.readouterr().err
    assert code != 0
    assert "no data rows" in err
