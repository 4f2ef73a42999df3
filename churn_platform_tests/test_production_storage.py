"""Production metadata stores on the real PostgreSQL server: Dagster runs and MLflow registry."""

from __future__ import annotations

import os
import uuid
from contextlib import closing
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from mlflow import MlflowClient

from churn_platform.core.tracking import CHAMPION
from churn_platform.definitions import build_definitions
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.partitions import BASE_BATCH, ingest_batches
from churn_platform.settings import load_settings

pytestmark = pytest.mark.postgres

PG_SERVER = os.environ.get("CHURN_TEST_PG_SERVER", "churn:churn@127.0.0.1:5432")
# SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which is not installed: Dagster and
# MLflow URLs must name the psycopg2 driver. libpq (psycopg2.connect) takes the bare scheme.
SQLALCHEMY_SCHEME = "postgresql+psycopg2"
DAGSTER_DB = "churn_meta"
# MLflow gets its own database: its tables (runs, metrics, ...) must not meet Dagster's.
MLFLOW_DB = "churn_mlflow"
DATA_LAYERS = dg.AssetSelection.groups("ingestion", "cleaning", "features")
DATA_LAYER_KEYS = {
    "raw_customers",
    "cleaned_customers",
    "quarantined_customers",
    "customer_features",
    "feature_pipeline",
}
# The snippet docs/PRODUCTION.md prescribes; the URL (a secret) comes from the environment.
DAGSTER_YAML = """\
storage:
  postgres:
    postgres_url:
      env: DAGSTER_PG_URL
telemetry:
  enabled: false
"""


def _connect(database: str):
    """A connection, or a skip (a failure under CI) saying how to start the server."""
    try:
        return psycopg2.connect(f"postgresql://{PG_SERVER}/{database}", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        where = f"{PG_SERVER.rpartition('@')[2]}/{database}"
        message = f"PostgreSQL not reachable at {where}: {exc}".strip()
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must run scripts/services.sh first)")
        pytest.skip(f"{message} (run scripts/services.sh)")


def _query(database: str, sql: str, params: tuple[object, ...]) -> list[tuple]:
    with closing(_connect(database)) as conn, conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


@pytest.fixture
def dagster_pg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME whose dagster.yaml stores runs, events and schedules in churn_meta."""
    _connect(DAGSTER_DB).close()
    monkeypatch.setenv("DAGSTER_PG_URL", f"{SQLALCHEMY_SCHEME}://{PG_SERVER}/{DAGSTER_DB}")
    home = tmp_path / "dagster_pg"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home


@pytest.fixture
def mlflow_pg_url() -> str:
    """The churn_mlflow database, created on first use (role churn has CREATEDB)."""
    with closing(_connect(DAGSTER_DB)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (MLFLOW_DB,))
            if cursor.fetchone() is None:
                try:
                    cursor.execute(f"CREATE DATABASE {MLFLOW_DB}")
                except psycopg2.errors.DuplicateDatabase:
                    pass  # a parallel test session created it first
    return f"{SQLALCHEMY_SCHEME}://{PG_SERVER}/{MLFLOW_DB}"


def test_dagster_runs_and_materializations_live_in_postgres(spark, telco_home, dagster_pg_home):
    defs = build_definitions(load_settings())
    with dg.DagsterInstance.from_config(str(dagster_pg_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        if not instance.has_dynamic_partition(ingest_batches.name, BASE_BATCH):
            instance.add_dynamic_partitions(ingest_batches.name, [BASE_BATCH])
        result = dg.materialize(
            list(defs.assets or []),
            instance=instance,
            resources=defs.resources,
            selection=DATA_LAYERS,
            partition_key=BASE_BATCH,
            tags={"churn/trigger": "test_production_storage"},
        )
    assert result.success

    # A fresh instance reads the run and its materializations back from PostgreSQL.
    with dg.DagsterInstance.from_config(str(dagster_pg_home)) as instance:
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["churn/trigger"] == "test_production_storage"
        records = instance.get_records_for_run(
            result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        materialized = {
            r.event_log_entry.dagster_event.asset_key.to_user_string(): r.event_log_entry
            for r in records
        }
        assert set(materialized) == DATA_LAYER_KEYS
        cleaned = materialized["cleaned_customers"].asset_materialization
        assert cleaned is not None and cleaned.metadata["row_count"].value == 7043
        raw_partitions = instance.get_materialized_partitions(dg.AssetKey("raw_customers"))
        assert BASE_BATCH in raw_partitions

    # ... and the rows really are in the churn_meta tables, not in a sqlite file somewhere.
    assert _query(DAGSTER_DB, "SELECT status FROM runs WHERE run_id = %s", (result.run_id,)) == [
        ("SUCCESS",)
    ]
    rows = _query(
        DAGSTER_DB,
        "SELECT asset_key FROM event_logs WHERE run_id = %s"
        " AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        (result.run_id,),
    )
    assert len(rows) == len(DATA_LAYER_KEYS)
    assert not list(dagster_pg_home.rglob("*.db"))


def test_mlflow_tracking_and_registry_on_postgres(mlflow_pg_url, tmp_path):
    resource = MlflowResource(tracking_uri=mlflow_pg_url, artifact_root=str(tmp_path / "artifacts"))
    suffix = uuid.uuid4().hex[:10]
    experiment_id = resource.experiment_id(f"pgtest_{suffix}")
    client = resource.client()
    run = client.create_run(experiment_id, tags={"dagster.run_id": f"test-{suffix}"})
    run_id = run.info.run_id
    client.log_metric(run_id, "auc", 0.8421)
    client.log_text(run_id, "placeholder model", "model/MLmodel")
    client.set_terminated(run_id)
    name = f"churn-pgtest-{suffix}"
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id)
    client.set_registered_model_alias(name, CHAMPION, version.version)

    fresh = MlflowClient(tracking_uri=mlflow_pg_url, registry_uri=mlflow_pg_url)
    stored = fresh.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.metrics == {"auc": 0.8421}
    assert fresh.get_experiment(experiment_id).artifact_location.startswith(
        (tmp_path / "artifacts").as_uri()
    )
    assert fresh.get_model_version_by_alias(name, CHAMPION).version == version.version
    downloaded = fresh.download_artifacts(run_id, "model/MLmodel", str(tmp_path / "download"))
    assert Path(downloaded).read_text() == "placeholder model"

    assert _query(
        MLFLOW_DB, "SELECT value FROM metrics WHERE run_uuid = %s AND key = 'auc'", (run_id,)
    ) == [(0.8421,)]
    assert _query(
        MLFLOW_DB,
        "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
        (name, CHAMPION),
    ) == [(int(version.version),)]

    client.delete_registered_model(name)
    client.delete_experiment(experiment_id)
