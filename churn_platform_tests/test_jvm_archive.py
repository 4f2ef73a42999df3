"""The Spark driver's JVM: it maps the installation's class-data archive (`make install` builds
it) and runs the collector chosen for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from churn_platform.core import jvm_archive
from churn_platform.core.spark_setup import (
    C1_ONLY,
    SERIAL_GC,
    SHORT_JVM_OPTIONS,
    THROUGHPUT_GC,
    spark_conf,
)
from churn_platform.settings import load_settings

pytestmark = pytest.mark.integration  # a JVM of its own (and the archive's build, if missing)

# A fresh driver with the platform's configuration, logging where each class came from.
SESSION = """
import sys
from churn_platform.core.spark_setup import spark_session
from churn_platform.settings import load_settings

settings = load_settings({"CHURN_HOME": sys.argv[1]})
spark = spark_session(settings, {"spark.driver.extraJavaOptions": sys.argv[2]})
spark.range(10).selectExpr("id % 3 AS k").groupBy("k").count().collect()
"""


def test_a_spark_driver_loads_its_classes_from_the_installations_archive(tmp_path: Path) -> None:
    settings = load_settings({"CHURN_HOME": str(tmp_path / "home")})
    # What `make install` did already, or does now.
    path, _ = jvm_archive.build(settings.java_home)
    options = spark_conf(settings)["spark.driver.extraJavaOptions"]
    assert f"-XX:SharedArchiveFile={path}" in options
    assert not list(path.parent.glob(f".{path.name}.*")), "a staged archive was left behind"

    log = tmp_path / "classes.log"
    traced = f"{options} -Xlog:class+load=info:file={log}"
    subprocess.run(
        [sys.executable, "-c", SESSION, str(tmp_path / "home"), traced],
        check=True,
        capture_output=True,
        timeout=300,
    )
    spark_classes = [line for line in log.read_text().splitlines() if "org.apache.spark." in line]
    from_archive = [line for line in spark_classes if "source: shared objects file (top)" in line]
    from_jars = [line for line in spark_classes if ".jar" in line.partition("source: ")[2]]
    # Spark's classes come from the archive, a few from its jars (lambdas are made at run time).
    assert len(from_archive) > 1000 and len(from_jars) < 0.05 * len(from_archive)


def fake_jdk(root: Path, version: str) -> Path:
    """A JDK folder as the launcher finds it: bin/java and the `release` file naming its build."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "java").write_text("#!/bin/sh\n")
    (root / "release").write_text(f'JAVA_VERSION="{version}"\n')
    return root


def test_a_jdk_upgrade_names_a_new_archive_and_its_build_removes_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the JDK changes, the old archive (HotSpot does not map it) is not offered and
    `jvm-archive` builds a new one; building it removes the old 230 MB file."""
    jdk = fake_jdk(tmp_path / "jdk", "17.0.15")
    folder = tmp_path / "archives"
    folder.mkdir()
    before = jvm_archive.archive_path.__wrapped__(str(jdk), folder)
    before.write_bytes(b"an archive of 17.0.15")
    assert jvm_archive.archive_path.__wrapped__(str(jdk), folder) == before

    (jdk / "release").write_text('JAVA_VERSION="17.0.16"\n')
    after = jvm_archive.archive_path.__wrapped__(str(jdk), folder)
    assert after != before and not after.exists()

    def staged_build(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        Path(command[-1]).write_bytes(b"an archive of 17.0.16")  # what the child JVM writes
        return subprocess.CompletedProcess(command, 0, "", "")

    # The child JVM's real workload is the test above's.
    monkeypatch.setattr(subprocess, "run", staged_build)
    assert jvm_archive.build(str(jdk), folder) == (after, True)
    assert sorted(folder.iterdir()) == [after]


# A fresh driver with the platform's configuration, naming its JVM's garbage collectors.
COLLECTORS = """
import sys
from churn_platform.core.spark_setup import spark_session
from churn_platform.settings import load_settings

spark = spark_session(load_settings({"CHURN_HOME": sys.argv[1]}))
beans = spark._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
print(",".join(sorted(bean.getName() for bean in beans)))
"""


def test_a_local_driver_runs_the_throughput_collector_unless_the_environment_picks_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inherited = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")
    environment = {k: v for k, v in os.environ.items() if k not in inherited}

    def collectors(extra: dict[str, str]) -> str:
        child = subprocess.run(
            [sys.executable, "-c", COLLECTORS, str(tmp_path / "home")],
            env={**environment, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert child.returncode == 0, child.stderr[-2000:]
        return child.stdout.strip().splitlines()[-1]

    assert collectors({}) == "PS MarkSweep,PS Scavenge"  # HotSpot's parallel collector
    # A collector the environment's JVM options choose is the one: the driver adds none (with
    # two, HotSpot stops at "Multiple garbage collectors selected").
    assert collectors({"JAVA_TOOL_OPTIONS": SERIAL_GC}) == "Copy,MarkSweepCompact"

    # `score`'s JVM for a small file: C1 only and the serial collector, or the environment's.
    for name in inherited:
        monkeypatch.delenv(name, raising=False)
    settings = load_settings({"CHURN_HOME": str(tmp_path / "home")})
    short = spark_conf(settings, short_lived=True)["spark.driver.extraJavaOptions"]
    assert short.endswith(SHORT_JVM_OPTIONS) and THROUGHPUT_GC not in short
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-XX:+UseG1GC")
    options = spark_conf(settings, short_lived=True)["spark.driver.extraJavaOptions"]
    assert options.endswith(C1_ONLY) and SERIAL_GC not in options
    # A cluster's driver runs no tasks: the JVM's own choice.
    monkeypatch.delenv("JAVA_TOOL_OPTIONS")
    cluster = load_settings(
        {"CHURN_HOME": str(tmp_path / "home"), "SPARK_MASTER": "spark://m:7077"}
    )
    assert "GC" not in spark_conf(cluster)["spark.driver.extraJavaOptions"]
