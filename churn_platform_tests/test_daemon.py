"""With a real daemon, a file dropped into the inbox is ingested, trained on and scored."""

import csv
import time

import dagster as dg
import pytest

from churn_platform.cluster import free_port
from churn_platform.config import load_spec
from churn_platform.core.registry import registry_snapshot
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.server import running_platform
from churn_platform.settings import load_settings

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(1800)]
BATCH_ROWS = 2000
DEADLINE_S = 1500


def _versions(settings) -> set[str]:
    resource = MlflowResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    spec = load_spec(settings.spec_path, settings.home)
    return {str(m["version"]) for m in registry_snapshot(resource, spec)}


def _scores_materialized_after(settings, since: float) -> bool:
    """Whether churn_scores has a materialization newer than `since` (epoch seconds)."""
    with dg.DagsterInstance.from_config(str(settings.dagster_storage)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("churn_scores"))
    return event is not None and event.timestamp > since


def test_inbox_drop_trains_and_scores_without_a_click(spark, churn_home, telco_csv):
    """The platform starts empty; the daemon alone must carry a dropped file through ingestion,
    cleaning, features, training, the promotion gate and scoring. Its settings are given here,
    not exported: the webserver and daemon get them from `running_platform`."""
    settings = load_settings(
        {
            "CHURN_HOME": str(churn_home),
            "CHURN_PSEUDONYM_KEY": "test-pseudonym-key",
            "CHURN_TRAINING_PROFILE": "quick",
            "CHURN_SHUFFLE_PARTITIONS": "2",  # 2,000 rows: one task per core
            # One model, the cheapest: this test is about the daemon carrying a drop through.
            "CHURN_MODELS": "decision_tree",
            # The inbox and the automation conditions looked at every few seconds, not every 10
            # and 15: the file and the new features wait less for the daemon's next look.
            "CHURN_INBOX_INTERVAL_SECONDS": "2",
            "CHURN_AUTOMATION_INTERVAL_SECONDS": "3",
        }
    )
    settings.export_library_env()  # this process reads the instance too (churn_home restores)
    with telco_csv.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert not _versions(settings)

    with running_platform(settings, free_port(), daemon=True):
        inbox = settings.inbox
        inbox.mkdir(exist_ok=True)
        staging = inbox / ".batch.csv.part"  # not a .csv: the sensor must not see half a file
        with staging.open("w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(rows[: BATCH_ROWS + 1])
        dropped, dropped_at = time.monotonic(), time.time()
        staging.rename(inbox / "batch.csv")
        to_version = to_scores = None
        while time.monotonic() - dropped < DEADLINE_S and None in (to_version, to_scores):
            if to_version is None and _versions(settings):
                to_version = time.monotonic() - dropped
            if to_scores is None and _scores_materialized_after(settings, dropped_at):
                to_scores = time.monotonic() - dropped
            time.sleep(3)
    print(f"file drop -> model version registered: {to_version} s, -> churn_scores: {to_scores} s")
    assert to_version is not None, f"no model version within {DEADLINE_S} s of the drop"
    assert to_scores is not None, f"no churn_scores within {DEADLINE_S} s of the drop"
    assert not any(inbox.glob("*.csv")), "the inbox file was not picked up"
