"""A run's process may exit right after its steps: MLflow's store is finished first."""

import sqlite3

import dagster as dg
from mlflow import MlflowClient
from sqlalchemy.engine import make_url

from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import Settings


def test_the_run_ends_only_once_a_new_tracking_store_is_fully_created(settings: Settings) -> None:
    """The schema set-up runs beside the run's first steps (about 5 s); a run whose steps fail
    at once must not let its process exit in the middle of it, which left a half-migrated
    sqlite file that failed every later run of the state root."""
    resource = MlflowResource.from_settings(settings)
    context = dg.build_init_resource_context()
    resource.setup_for_execution(context)
    resource.teardown_after_execution(context)  # the run ended: nothing of the set-up may remain
    database = make_url(settings.mlflow_tracking_uri).database
    with sqlite3.connect(database) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert {"experiments", "registered_models", "registered_model_aliases"} <= tables
    assert not {t for t in tables if t.startswith("_alembic_tmp")}
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]
