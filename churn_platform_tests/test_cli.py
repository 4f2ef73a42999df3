"""The `churn-platform` command: JSON summaries, recorded runs, and clear failures."""

import json

from churn_platform import cli
from churn_platform.core.columns import LINE_COL, REASON_COL, UNPARSEABLE_NUMBER
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


def test_a_large_input_is_ingested_in_even_partitions_keeping_line_numbers(
    spark, churn_home, capsys
):
    """A file larger than one partition per core is read by the raw layer in a multiple of
    the cores of splits (one Parquet file each, so later layers read even partitions too), and
    its bad lines keep their numbers in the quarantine. Here 4 KB splits stand for 128 MB:
    34 KB would be Spark's nine splits, the last a fraction of the others."""
    data = churn_home / "data"
    data.mkdir()
    rows = [
        telco_row(
            f"id{i}", churn="Yes" if i % 4 == 0 else "No", tenure="abc" if i in (7, 300) else "12"
        )
        for i in range(330)
    ]
    (data / "telco_churn.csv").write_text("\n".join([TELCO_HEADER, *rows]) + "\n")
    keys = ("spark.sql.files.maxPartitionBytes", "spark.sql.files.openCostInBytes")
    for key, value in zip(keys, ("4096", "1"), strict=True):
        spark.conf.set(key, value)
    try:
        code = cli.main(["run", "--select", DATA_LAYERS, "--json"])
        assert spark.conf.get(keys[0]) == "4096"
    finally:
        for key in keys:
            spark.conf.unset(key)
    assert code == 0, capsys.readouterr().err
    warehouse = churn_home / "warehouse"
    raw = warehouse / "raw_customers" / "base"
    files = list((raw / (raw / "CURRENT").read_text().strip()).glob("part-*.parquet"))
    assert len(files) % spark.sparkContext.defaultParallelism == 0 and len(files) > 2
    quarantine = warehouse / "quarantined_customers"
    lines = spark.read.parquet(str(quarantine / (quarantine / "CURRENT").read_text().strip()))
    assert {(r[LINE_COL], r[REASON_COL]) for r in lines.collect()} == {
        (9, UNPARSEABLE_NUMBER),
        (302, UNPARSEABLE_NUMBER),
    }
