"""Resources: Spark, MLflow and the state root. The one place where the environment is chosen."""

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import dagster as dg
from dagster_pyspark import PySparkResource
from dagster_pyspark.resources import spark_session_from_config
from pydantic import PrivateAttr
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from churn_platform.config import DatasetSpec, platform_spec
from churn_platform.core.models.fitting import TrainingFrame, training_frame
from churn_platform.core.models.out_of_time import OutOfTimeFrame, out_of_time_frame
from churn_platform.core.ops.log import OpsLog
from churn_platform.core.spark_setup import even_scans, spark_conf
from churn_platform.settings import Settings

# Every asset that runs Spark is in this pool; dagster.yaml lets one run holding it run at a
# time, so two Spark runs never share the cores, while check-only runs (freshness) need no slot.
SPARK_POOL = "spark"


# No `from __future__ import annotations` in this module: Dagster recognises the resource
# dependency below by its annotation object, not by a string.
class StateResource(dg.ConfigurableResource):
    """The platform's settings and dataset spec, built once in `definitions.py`.

    `platform` is the Settings object itself (a resource dependency, not run config), so assets
    and sensors get exactly the settings the definitions were built with and never read the
    environment; its secrets stay SecretStr, masked wherever Dagster shows a resource.
    """

    platform: dg.ResourceDependency[Settings]

    def settings(self) -> Settings:
        return self.platform

    def spec(self) -> DatasetSpec:
        return platform_spec(self.platform)


class OpsLogResource(dg.ConfigurableResource):
    """The operations log every asset of a run writes to: one `OpsLog`, closed when the run ends.

    Closing releases the syslog socket (with CHURN_SYSLOG_ADDRESS set); an OpsLog per event
    would open one each time and leave it to the garbage collector.
    """

    platform: dg.ResourceDependency[Settings]

    _log: OpsLog | None = PrivateAttr(default=None)

    def log(self) -> OpsLog:
        """The run's OpsLog, opened on first use."""
        if self._log is None:
            self._log = OpsLog(self.platform)
        return self._log

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class TrainingFrames(dg.ConfigurableResource):
    """The cached training frame every model asset of a run shares; released when it ends.

    Building it (read, assemble the vectors, cache, count) costs the same for every model, so a
    run of nine models pays it once per features version.
    """

    _key: tuple[Any, ...] | None = PrivateAttr(default=None)
    _frame: TrainingFrame | None = PrivateAttr(default=None)
    _oot: OutOfTimeFrame | None = PrivateAttr(default=None)
    _stack: ExitStack | None = PrivateAttr(default=None)

    def frame(
        self,
        key: tuple[Any, ...],
        features: Callable[[], DataFrame],
        id_col: str,
        feature_pipeline: PipelineModel,
    ) -> TrainingFrame:
        """The frame for `key` (features version, row cap), built on first use from the
        features `features` gives (called only then: capping the rows counts them)."""
        if self._frame is None or self._key != key:
            self.release()
            stack = ExitStack()
            rows = features()
            built = training_frame(rows, id_col, feature_pipeline)
            # The frame's caches are filled here, in even partitions of the features' files.
            with even_scans(rows.sparkSession, rows.inputFiles()):
                self._frame = stack.enter_context(built)
            # Lazy: its two caches fill only when the first model fits on them.
            self._oot = stack.enter_context(out_of_time_frame(self._frame))
            self._stack, self._key = stack, key
        return self._frame

    def out_of_time(self) -> OutOfTimeFrame | None:
        """The current frame's older and newest batches; None with one batch."""
        if self._frame is None:
            raise RuntimeError("out_of_time() before frame(): no training frame yet")
        return self._oot

    def release(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self._frame = self._key = self._oot = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.release()


class LazyPySparkResource(PySparkResource):
    """PySparkResource whose session starts on first use instead of when the run starts.

    Dagster sets up every resource a run's steps name, the IO manager's Spark included, so a
    backup run started a JVM (~10 s here) for an archive that needs none; now only a step that
    reads, writes or scores with Spark starts it.
    """

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Nothing yet: `spark_session` starts the session."""

    @property
    def spark_session(self) -> SparkSession:
        if self._spark_session is None:
            self._spark_session = spark_session_from_config(self.spark_config)
        return self._spark_session


def build_spark_resource(settings: Settings) -> PySparkResource:
    return LazyPySparkResource(spark_config=spark_conf(settings))


def build_resources(settings: Settings) -> dict[str, object]:
    """All resources for an environment: local Spark + sqlite MLflow, or a cluster + server."""
    from churn_platform.io_managers import AuditReportIOManager, VersionedParquetIOManager
    from churn_platform.mlflow_resource import MlflowResource

    pyspark = build_spark_resource(settings)
    return {
        "pyspark": pyspark,
        "state": StateResource(platform=settings),
        "ops_log": OpsLogResource(platform=settings),
        "io_manager": VersionedParquetIOManager(base_path=str(settings.warehouse), pyspark=pyspark),
        "audit_reports": AuditReportIOManager(folder=str(settings.audit_reports)),
        "training_frames": TrainingFrames(),
        "mlflow": MlflowResource.from_settings(settings),
    }
