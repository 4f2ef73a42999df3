"""With a real daemon, a file dropped into the inbox retrains and registers a new model version."""

import csv
import socket
import time

import pytest

from churn_platform import cli
from churn_platform.config import load_spec
from churn_platform.server import running_platform
from churn_platform.settings import load_settings
from churn_platform.tracking import MlflowResource, registry_snapshot

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(2400)]
BASE_ROWS, BATCH_ROWS = 1500, 300
DEADLINE_S = 1500


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _versions(settings) -> set[str]:
    resource = MlflowResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    spec = load_spec(settings.spec_path, settings.home)
    return {str(m["version"]) for m in registry_snapshot(resource, spec)}


def test_inbox_drop_retrains_without_a_click(spark, churn_home, telco_csv, monkeypatch, capsys):
    monkeypatch.setenv("CHURN_TRAINING_PROFILE", "quick")
    for name in ("DAGSTER_HOME", "CHURN_DAGSTER_STORAGE", "CHURN_DAGSTER_COMPUTE_LOGS"):
        monkeypatch.delenv(name, raising=False)
    with telco_csv.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    (churn_home / "data").mkdir()
    with (churn_home / "data" / "telco_churn.csv").open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([header, *body[:BASE_ROWS]])
    assert cli.main(["run", "--json"]) == 0
    capsys.readouterr()
    settings = load_settings()
    before = _versions(settings)
    assert before

    with running_platform(settings, _free_port(), daemon=True):
        inbox = settings.inbox
        inbox.mkdir(exist_ok=True)
        staging = inbox / ".batch.csv.part"
        with staging.open("w", newline="") as handle:
            batch = body[BASE_ROWS : BASE_ROWS + BATCH_ROWS]
            csv.writer(handle, lineterminator="\n").writerows([header, *batch])
        dropped = time.monotonic()
        staging.rename(inbox / "batch.csv")
        while time.monotonic() - dropped < DEADLINE_S:
            if _versions(settings) - before:
                break
            time.sleep(10)
        delay = time.monotonic() - dropped
    new = _versions(settings) - before
    print(f"file drop -> new model version: {delay:.0f} s")
    assert new, f"no new model version within {DEADLINE_S} s of the drop"
    assert not any(inbox.glob("*.csv")), "the inbox file was not picked up"
