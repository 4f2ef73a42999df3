"""No password survives in a URL the platform records, whatever form the URL takes."""

import pytest

from churn_platform.core.audit.report import RAW_LAYER, _source_files
from churn_platform.core.ops.privacy import redact_message, redact_url
from churn_platform.settings import load_settings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "jdbc:postgresql://churn:s3cr3t@127.0.0.1:5432/churn_test",
            "jdbc:postgresql://churn:***@127.0.0.1:5432/churn_test",
        ),
        (
            "jdbc:postgresql://h/db?user=bob&password=s3cr3t",
            "jdbc:postgresql://h/db?password=***&user=bob",
        ),
        (
            "jdbc:sqlserver://h:1433;databaseName=x;user=sa;password=s3cr3t",
            "jdbc:sqlserver://h:1433;databaseName=x;user=sa;password=***",
        ),
        ("jdbc:oracle:thin:scott/s3cr3t@//h:1521/svc", "jdbc:oracle:thin:***@//h:1521/svc"),
        ("postgresql://u:p@s3cr3t@h/db", "postgresql://***@h/db"),
        ("postgresql://u:p%40s3cr3t@h/db", "postgresql://u:***@h/db"),
        ("https://u:s3cr3t@example.com/a?token=s3cr3t", "https://u:***@example.com/a?token=***"),
        (
            "jdbc:postgresql://127.0.0.1:5432/churn_test",
            "jdbc:postgresql://127.0.0.1:5432/churn_test",
        ),
        ("jdbc:sqlite:/tmp/x.db", "jdbc:sqlite:/tmp/x.db"),
        ("/data/customers.csv", "/data/customers.csv"),
        ("/home/ann@corp/customers.csv", "/home/ann@corp/customers.csv"),
    ],
)
def test_redact_url_masks_the_password_and_keeps_the_rest(url, expected):
    assert redact_url(url) == expected
    assert "s3cr3t" not in redact_url(url)


def test_driver_message_loses_the_url_password_and_the_env_password():
    url = "jdbc:postgresql://churn:s3cr3t@db.internal:5432/x?password=t0ken"
    message = f"failed to connect to {url}; host churn:s3cr3t@db.internal, auth hunter2, t0ken"
    redacted = redact_message(message, url, password="hunter2")
    for secret in ("s3cr3t", "hunter2", "t0ken"):
        assert secret not in redacted
    assert "db.internal" in redacted


def test_settings_records_hold_no_database_password(tmp_path):
    uri = "postgresql://db.internal/mlflow?user=mlflow&password=s3cr3t"
    env = {"CHURN_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": uri}
    recorded = load_settings(env).public_values()["mlflow_tracking_uri"]
    assert "s3cr3t" not in recorded and "db.internal" in recorded


def test_audit_report_redacts_sources_recorded_before_redaction():
    url = "jdbc:postgresql://churn:s3cr3t@db:5432/crm#billing"
    metadata = {"sources": {"billing": url}, "source_sha256": {url: "ab" * 32}}
    (row,) = _source_files([{"layer": RAW_LAYER, "partition": "base", "metadata": metadata}])
    assert row["source"] == "billing" and "s3cr3t" not in row["path"]
