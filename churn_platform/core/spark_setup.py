"""The platform's Spark configuration and a session built from it, for Dagster runs and for the
commands that need Spark outside one (`score`, `generate`): one place, no Dagster import."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql.utils import is_remote

from churn_platform.core import jvm_archive
from churn_platform.settings import Settings

POSTGRES_JDBC_JAR = Path("/usr/share/java/postgresql.jar")
LOG4J2_TEMPLATE = Path(__file__).resolve().parents[1] / "log4j2.properties"
# A local driver runs every task: HotSpot's throughput collector instead of its default G1, whose
# concurrent threads take CPU from the two task threads on this machine. The pipeline's raw,
# features and scoring steps at 1M rows, one JVM each, alternated: 34.3-35.2 s against
# 36.4-38.8 s with G1 (serial: 35.7-36.4 s).
THROUGHPUT_GC = "-XX:+UseParallelGC"
# A JVM that lives for seconds (`score` on a small file, the tests' JVMs): HotSpot's C1 compiler
# only and one collector thread.
C1_ONLY, SERIAL_GC = "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"
SHORT_JVM_OPTIONS = f"{C1_ONLY} {SERIAL_GC}"
# Where the environment gives every JVM options (a collector chosen there and here stops the JVM).
_INHERITED_JVM_OPTIONS = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")
_COLLECTOR = re.compile(r"-XX:\+Use\w+GC\b")


def spark_conf(settings: Settings, short_lived: bool = False) -> dict[str, str]:
    """Spark configuration for a run: master or Spark Connect URL, JDBC driver, log file, and
    the driver's JVM options (`short_lived`: for a JVM that lives for seconds)."""
    conf: dict[str, str] = {
        "spark.app.name": "churn_platform",
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # HotSpot compiles no method over 8,000 bytes of bytecode: a whole-stage-codegen method
        # past that runs interpreted. At this limit Spark runs such a stage operator by
        # operator instead (its documented HotSpot setting). benchmarks/scoring.py at 1M rows:
        # the logged model's transform and write took 5.1 s instead of 8.2 s.
        "spark.sql.codegen.hugeMethodLimit": "8000",
        # Python workers (if any) run the platform's own interpreter, not whatever is on PATH.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    if settings.spark_remote:
        conf["spark.remote"] = settings.spark_remote
        return conf
    conf["spark.master"] = settings.spark_master
    conf["spark.driver.memory"] = settings.spark_driver_memory
    if POSTGRES_JDBC_JAR.exists():
        conf["spark.jars"] = str(POSTGRES_JDBC_JAR)
    log_dir = settings.logs
    log_dir.mkdir(parents=True, exist_ok=True)
    java_opts = f"-Dlog4j2.configurationFile=file:{LOG4J2_TEMPLATE} -Dchurn.log.dir={log_dir}"
    # The driver maps the installation's class-data archive if `make install` built it.
    archive = jvm_archive.java_options(settings.java_home)
    driver = " ".join(filter(None, [java_opts, archive, _driver_jvm(settings, short_lived)]))
    conf["spark.driver.extraJavaOptions"] = driver
    conf["spark.executor.extraJavaOptions"] = java_opts
    return conf


def _driver_jvm(settings: Settings, short_lived: bool) -> str:
    """The driver's compiler and collector options; no collector where the environment's JVM
    options choose one (HotSpot refuses two: "Multiple garbage collectors selected")."""
    environment = settings.child_env()  # what the JVM, a child of this process, starts with
    inherited = " ".join(environment.get(name, "") for name in _INHERITED_JVM_OPTIONS)
    if _COLLECTOR.search(inherited):
        collector = ""
    elif short_lived:
        collector = SERIAL_GC
    else:
        collector = THROUGHPUT_GC if settings.spark_master.startswith("local") else ""
    return " ".join(filter(None, [C1_ONLY if short_lived else "", collector]))


def local_classic(spark: SparkSession) -> bool:
    """Classic Spark (not Spark Connect) with a local master: its tasks read and write the
    driver's own disk, so the driver may read or write small files there itself."""
    return not is_remote() and spark.sparkContext.master.startswith("local")


def spark_session(settings: Settings, overrides: Mapping[str, str] | None = None) -> SparkSession:
    """A SparkSession outside a Dagster run (scoring a file, generating data), same config;
    `overrides` replace some of its keys."""
    return session_of({**spark_conf(settings), **(overrides or {})})


def session_of(conf: Mapping[str, str]) -> SparkSession:
    """The SparkSession of `conf` (one already running in this process is returned as is)."""
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
