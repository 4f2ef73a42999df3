"""`churn-platform mlflow-ui`: MLflow's own UI over the state root's tracking store.

MLflow 3 opens an experiment on its GenAI view (an empty "Traces" page for this platform); the
URL printed here lands on the experiment's runs table instead ("Model training" view).
"""

from __future__ import annotations

import socket
import sqlite3
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from churn_platform.cli_common import CommandError
from churn_platform.settings import Settings

HOST = "127.0.0.1"
# The classic runs table: MLflow's UI reads the workflow type from this URL parameter.
RUNS_VIEW = "workflowType=machine_learning"
# MLflow 3's server starts a job runner (seven huey consumer processes) for GenAI jobs this
# platform never submits; without it the UI is one server process.
JOB_RUNNER_OFF = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True)
class MlflowUi:
    """The `mlflow ui` command line and its environment (the settings' child environment, job
    runner off) for a state root, and the URL to open once it serves."""

    command: list[str]
    environment: dict[str, str]
    url: str


def sqlite_database(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    parsed = urllib.parse.urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    return Path(urllib.parse.unquote(parsed.path.removeprefix("/")))


def experiment_id(database: Path, name: str) -> str | None:
    """The active experiment called `name`, read without writing (no schema upgrade)."""
    with sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True) as connection:
        try:
            row = connection.execute(
                "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = ?",
                (name, "active"),
            ).fetchone()
        except sqlite3.OperationalError:  # a database MLflow never initialised
            return None
    return None if row is None else str(row[0])


def mlflow_ui(settings: Settings, experiment: str, port: int) -> MlflowUi:
    """The command serving the state root's MLflow store on 127.0.0.1:`port`, and the URL of
    `experiment`'s runs. Refuses a tracking server, a missing store and a busy port."""
    uri = settings.mlflow_tracking_uri
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https", "databricks"):
        raise CommandError(f"MLFLOW_TRACKING_URI is a tracking server ({uri}): open its own UI")
    base = f"http://{HOST}:{port}/#/experiments"
    database = sqlite_database(uri)
    if database is None:
        found = None
    elif not database.is_file():
        raise CommandError(
            f"no MLflow store at {database}: nothing was trained under CHURN_HOME="
            f"{settings.home} yet (run `churn-platform run`, or set CHURN_HOME)"
        )
    else:
        found = experiment_id(database, experiment)
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise CommandError(
                f"cannot serve on {HOST}:{port}: {exc.strerror}; pass --port"
            ) from None
    command = [
        *(sys.executable, "-m", "mlflow", "ui"),
        *("--backend-store-uri", uri),
        # Experiments created in this UI keep their artifacts under the state root too.
        *("--default-artifact-root", settings.mlflow_artifact_root),
        *("--host", HOST, "--port", str(port)),
        # MLflow's default is 4 server processes; one person browsing needs one.
        *("--workers", "1"),
    ]
    url = f"{base}/{found}/runs?{RUNS_VIEW}" if found else f"{base}?{RUNS_VIEW}"
    return MlflowUi(command, {**settings.child_env(), **JOB_RUNNER_OFF}, url)
