"""No password survives in a URL the platform records, whatever form the URL takes."""

import pytest

from churn_platform.core.privacy import redact_message, redact_url


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
