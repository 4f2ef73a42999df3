"""JDBC ingestion against the real PostgreSQL server: joined on the id, nothing lost."""

import os
from pathlib import Path

import pytest

from churn_platform.config import load_spec
from churn_platform.core import cleaning, sources
from churn_platform.core.columns import DUPLICATE_ID, FILE_COL, SOURCE_COL
from churn_platform.core.input_files import InputDataError
from churn_platform_tests.conftest import TELCO_HEADER, telco_row

PG_DSN = os.environ.get(
    "CHURN_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=churn_test user=churn password=churn"
)
PG_JDBC = "jdbc:postgresql://127.0.0.1:5432/churn_test"

pytestmark = pytest.mark.postgres


@pytest.fixture
def billing_table():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(PG_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable (run scripts/services.sh): {exc}")
    table = f"billing_{os.getpid()}"
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(
            f'CREATE TABLE {table} ("customerID" text, "MonthlyCharges" double precision,'
            ' "TotalCharges" text)'
        )
        rows = [(f"c{i}", 20.0 + i, f"{(20.0 + i) * 3:.2f}") for i in range(20)]
        rows.append(("c3", 99.0, "297.00"))  # a duplicate id in the secondary source
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", rows)
    yield table
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
    conn.close()


def test_csv_joined_with_jdbc_billing(spark, tmp_path, billing_table):
    columns = TELCO_HEADER.split(",")
    keep = [i for i, c in enumerate(columns) if c not in ("MonthlyCharges", "TotalCharges")]
    lines = [",".join(columns[i] for i in keep)]
    for i in range(20):
        fields = telco_row(f"c{i}", churn="Yes" if i % 3 == 0 else "No").split(",")
        lines.append(",".join(fields[i] for i in keep))
    (tmp_path / "customers.csv").write_text("\n".join(lines) + "\n")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "name: telco_pg\n"
        "sources:\n"
        "  - {name: customers, format: csv, path: customers.csv}\n"
        f"  - {{name: billing, format: jdbc, url: '{PG_JDBC}', table: {billing_table},"
        " user: churn, password_env: CHURN_TEST_PG_PASSWORD}\n"
        "id_column: customerID\n"
        "target: {column: Churn, positive: 'Yes', negative: 'No'}\n"
        "numeric: [tenure, MonthlyCharges, TotalCharges]\n"
        "categorical: [Contract, InternetService]\n"
    )
    spec = load_spec(spec_file, tmp_path, {"CHURN_TEST_PG_PASSWORD": "churn"})
    raw = sources.read_batch(spark, spec, spec.sources, "base", 0).frame
    result = cleaning.clean_customers(raw, spec)
    cleaned = {r["customerID"]: r for r in result.cleaned.collect()}
    assert len(cleaned) == 20
    assert cleaned["c5"]["MonthlyCharges"] == pytest.approx(25.0)
    assert cleaned["c5"]["TotalCharges"] == pytest.approx(75.0)
    assert result.by_reason == {DUPLICATE_ID: 1}
    quarantined = result.quarantined.collect()
    assert quarantined[0][SOURCE_COL] == "billing"
    assert quarantined[0][FILE_COL] == f"{PG_JDBC}#{billing_table}"  # no credentials


def test_wrong_password_names_the_source(spark, tmp_path, billing_table):
    spec_file = Path(tmp_path / "spec.yaml")
    spec_file.write_text(
        "name: pg\n"
        f"sources: [{{name: billing, format: jdbc, url: '{PG_JDBC}', table: {billing_table},"
        " user: churn, password_env: CHURN_TEST_PG_PASSWORD}]\n"
        "id_column: customerID\ntarget: {column: TotalCharges, positive: '1'}\n"
    )
    spec = load_spec(spec_file, tmp_path, {"CHURN_TEST_PG_PASSWORD": "wrong"})
    with pytest.raises(InputDataError, match=f"source billing .*{billing_table}.*JDBC"):
        sources.read_batch(spark, spec, spec.sources, "base", 0)


def test_credentials_in_the_url_never_reach_the_error(spark, tmp_path, billing_table):
    url = PG_JDBC.replace("//", "//churn:Wr0ngS3cret@")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        f"name: pg\nsources: [{{name: billing, format: jdbc, url: '{url}',"
        f" table: {billing_table}}}]\n"
        "id_column: customerID\ntarget: {column: TotalCharges, positive: '1'}\n"
    )
    spec = load_spec(spec_file, tmp_path)
    with pytest.raises(InputDataError, match=f"source billing .*{billing_table}") as info:
        sources.read_batch(spark, spec, spec.sources, "base", 0)
    assert "Wr0ngS3cret" not in str(info.value) and info.value.__cause__ is None
    assert "churn:***@" in str(info.value)
