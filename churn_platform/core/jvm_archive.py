"""A class-data archive for the Spark driver's JVM: a command's first Spark job in half the time.

Starting a SparkSession loads thousands of classes from Spark's jars, most of the ~9 s a command
waits here before its first job. HotSpot's class-data sharing maps the classes an earlier run
loaded from an archive instead: a SparkSession plus one job took 4.1-4.7 s with it against
8.4-9.8 s without (this machine, C1 only; 6.8 s with C2). The archive belongs to the
installation (PySpark's jars, the JDK), so `make install` builds it once
(`churn-platform jvm-archive`) into the virtual environment, again after a JDK upgrade (the
archive is named after the JDK too); without it nothing changes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyspark

ARCHIVE_DIR = Path(sys.prefix) / "share" / "churn_platform"
# The JVM's own log lines (an archive's warnings among them) go to stderr: stdout carries what
# the commands print (`run --json`'s summary is its last line).
QUIET = "-Xlog:disable -Xlog:all=warning:stderr"
BUILD_TIMEOUT_S = 900


def jdk_identity(java_home: str | None) -> str:
    """The JDK Spark's launcher runs (`java_home`/bin/java, the settings' JAVA_HOME, else `java`
    on PATH): its real path and its `release` file (version and build), without starting it;
    "" if there is none."""
    found = Path(java_home, "bin", "java") if java_home else shutil.which("java")
    if found is None or not Path(found).exists():
        return ""
    java = Path(found).resolve()
    release = java.parent.parent / "release"
    return f"{java}\n{release.read_text(errors='replace') if release.is_file() else ''}"


@functools.cache
def archive_path(java_home: str | None, folder: Path = ARCHIVE_DIR) -> Path:
    """Where the archive of this installation is, named after PySpark's version and jars and
    the JDK (once per process: every `spark_conf` asks). After a JDK upgrade the name changes:
    the JVM starts without an archive (HotSpot does not map one of another JDK build) until
    `jvm-archive` builds the new one."""
    jars = sorted(p.name for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar"))
    identity = "\n".join([pyspark.__version__, *jars, jdk_identity(java_home)])
    return folder / f"spark-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.jsa"


def java_options(java_home: str | None, folder: Path = ARCHIVE_DIR) -> str:
    """The driver's JVM options that map the archive, if it was built ("" if not)."""
    path = archive_path(java_home, folder)
    return f"-XX:SharedArchiveFile={path} {QUIET}" if path.is_file() else ""


def build(java_home: str | None, folder: Path = ARCHIVE_DIR) -> tuple[Path, bool]:
    """Build the archive unless it exists: (its path, whether it was built now).

    A child process runs a small Spark workload and its JVM writes the classes it loaded as it
    exits, into a staged file renamed into place once complete (two builds never mix).
    """
    path = archive_path(java_home, folder)
    if path.is_file():
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        child = subprocess.run(
            [sys.executable, "-m", "churn_platform.core.jvm_archive", str(staged)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        if child.returncode != 0 or not staged.is_file():
            tail = "\n".join(child.stderr.splitlines()[-10:])
            raise RuntimeError(f"no class-data archive written to {staged}:\n{tail}")
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    for stale in path.parent.glob("spark-*.jsa"):  # earlier builds of this command (~230 MB)
        if stale != path:
            stale.unlink(missing_ok=True)
    return path, True


def _workload(staged: Path) -> None:
    """What the platform's commands load: CSV and Parquet, SQL, an MLlib pipeline fitted,
    saved, loaded and applied; then the JVM is stopped and waited for (it writes the archive
    as it exits)."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import Imputer, OneHotEncoder, StringIndexer, VectorAssembler
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.extraJavaOptions", f"-XX:ArchiveClassesAtExit={staged} {QUIET}")
        .getOrCreate()
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = spark.range(500).selectExpr(
            "CAST(id AS STRING) AS customer",
            "CAST(id % 3 AS STRING) AS plan",
            "CAST(rand(1) * 100 AS DOUBLE) AS charges",
            "CAST(rand(2) > 0.7 AS INT) AS label",
        )
        rows.write.option("header", True).csv(f"{tmp}/csv")
        read = spark.read.option("header", True).csv(f"{tmp}/csv")
        typed = read.selectExpr("customer", "plan", "try_cast(charges AS DOUBLE) AS charges")
        typed.join(rows.select("customer", "label"), "customer").write.parquet(f"{tmp}/pq")
        frame = spark.read.parquet(f"{tmp}/pq").dropDuplicates(["customer"])
        frame.groupBy("plan").agg({"charges": "avg", "label": "sum"}).collect()
        stages = [
            Imputer(inputCols=["charges"], outputCols=["charges_i"]),
            StringIndexer(inputCol="plan", outputCol="plan_i", handleInvalid="keep"),
            OneHotEncoder(inputCol="plan_i", outputCol="plan_v"),
            VectorAssembler(inputCols=["charges_i", "plan_v"], outputCol="features"),
            LogisticRegression(maxIter=5),
        ]
        Pipeline(stages=stages).fit(frame).write().save(f"{tmp}/model")
        PipelineModel.load(f"{tmp}/model").transform(frame).select("probability").collect()
    gateway = spark.sparkContext._gateway
    spark.stop()
    process = getattr(gateway, "proc", None)
    gateway.shutdown()
    if process is not None:
        process.stdin.close()  # the JVM exits at the end of its input
        process.wait(timeout=BUILD_TIMEOUT_S)


if __name__ == "__main__":
    _workload(Path(sys.argv[1]))
