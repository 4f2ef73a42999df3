"""The platform's Spark configuration and a session built from it, for Dagster runs and for the
commands that need Spark outside one (`score`, `generate`): one place, no Dagster import."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql.utils import is_remote

from churn_platform.core import jvm_archive
from churn_platform.core.input_files import data_files, local_path
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


MAX_PARTITION_BYTES = "spark.sql.files.maxPartitionBytes"


def even_split_bytes(sizes: Iterable[int], parallelism: int, open_cost: int, most: int) -> int:
    """The split size that reads files of `sizes` in a multiple of `parallelism` partitions of
    about equal bytes, none over `most`; 0 where Spark's own choice is already that (the files
    fit in one partition per core).

    Spark cuts a large scan into splits of `most` bytes and packs whole files into partitions
    up to it: 1.4 GB of CSV became 11 partitions (the last a quarter of the others) and 278 MB
    of Parquet files 3 (4, 4 and 3 files), so two cores ran the last partition alone.
    """
    total = sum(size + open_cost for size in sizes)
    rounds = math.ceil(total / (parallelism * most))
    if rounds <= 1:
        return 0
    return math.ceil(total / (parallelism * rounds))


def _local_files(spark: SparkSession, uris: Iterable[str]) -> list[Path] | None:
    """The local data files of `uris` (`DataFrame.inputFiles()`, files or folders), or None where
    a scan does not read this machine's disk (Spark Connect, a cluster, another file system)."""
    if not local_classic(spark):
        return None
    files: list[Path] = []
    for uri in uris:
        path = local_path(str(uri))
        if path is None:
            return None
        files.extend(data_files(path))
    return files


@contextmanager
def even_scans(spark: SparkSession, uris: Iterable[str]) -> Iterator[None]:
    """While the block runs, file scans read the files of `uris` (`_local_files`) in even
    partitions, a multiple of the cores in number (`even_split_bytes`); the session's setting
    is restored after it.

    For the data layers' steps, which hold the Spark pool alone: the setting is the session's,
    read when each query is planned, so a block plans and runs every query over these files.
    """
    files = _local_files(spark, uris)
    split = 0
    if files:
        conf = spark._jsparkSession.sessionState().conf()  # noqa: SLF001
        split = even_split_bytes(
            (f.stat().st_size for f in files),
            spark.sparkContext.defaultParallelism,
            conf.filesOpenCostInBytes(),
            conf.filesMaxPartitionBytes(),
        )
    if not split:
        yield
        return
    with session_conf(spark, MAX_PARTITION_BYTES, str(split)):
        yield


@contextmanager
def session_conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """A SQL setting for the queries run inside the block, the session's own restored after."""
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
