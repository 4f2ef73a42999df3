"""The MLflow resource: `core.tracking`'s backend (tracking + registry URIs) for Dagster.

A module of its own because importing MLflow fixes MLflow's log level: `resources.py` imports
it only once the platform's environment is prepared.
"""

from __future__ import annotations

import threading

import dagster as dg
from mlflow import MlflowClient
from pydantic import PrivateAttr

from churn_platform.core.tracking import backend_client, ensure_experiment, initialise_backend
from churn_platform.settings import Settings


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry at explicit URIs: a sqlite file locally, a server elsewhere.

    We do not use dagster-mlflow: its resource is the legacy function-style kind and the run it
    opens is only ended by a beta success/failure hook, so without the hook runs stay RUNNING,
    and it ties one MLflow run to a whole Dagster run. Here `log_training_run` opens and ends
    one MLflow run per trained model (FINISHED, or FAILED on error) with URIs we pass in.
    """

    tracking_uri: str
    artifact_root: str
    _initialising: threading.Thread | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowResource:
        return cls(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Create a new sqlite backend's schema in the background, beside the data layers.

        MLflow's first use migrates a new database (about 5 s); started here, the first model
        asset finds it ready instead of paying for it. `client()` waits for it under the lock.
        """
        self._initialising = threading.Thread(
            target=initialise_backend, args=(self.tracking_uri,), daemon=True
        )
        self._initialising.start()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Wait for the schema set-up before the run's process may exit.

        A run that failed within seconds ended its process while MLflow was still migrating a
        new sqlite file; the half-migrated database then failed every later run of that state
        root (`table _alembic_tmp_latest_metrics already exists`).
        """
        if self._initialising is not None:
            self._initialising.join()

    def client(self) -> MlflowClient:
        """A client whose tracking and registry are both this resource's backend."""
        return backend_client(self.tracking_uri)

    def experiment_id(self, spec_name: str) -> str:
        """The `churn-<spec>` experiment, created once with its artifacts under artifact_root."""
        return ensure_experiment(self.client(), self.artifact_root, spec_name)
