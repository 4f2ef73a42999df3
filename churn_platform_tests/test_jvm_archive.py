"""The Spark driver's JVM maps the installation's class-data archive (`make install` builds it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from churn_platform.core import jvm_archive
from churn_platform.core.spark_setup import spark_conf
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
    path, _ = jvm_archive.build()  # what `make install` did already, or does now
    settings = load_settings({"CHURN_HOME": str(tmp_path / "home")})
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
