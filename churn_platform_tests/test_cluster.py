"""The unchanged pipeline on a Spark standalone cluster, chosen by SPARK_MASTER alone, matches
local mode: same rows, same quarantine, same champion metrics."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from churn_platform.cluster import standalone_cluster

pytestmark = pytest.mark.cluster

CLI = Path(sys.executable).with_name("churn-platform")
# Every asset that runs on Spark (data layers, models, registry, scoring, monitoring); the
# backup assets are left out: they do not touch Spark.
SELECTION = "raw_customers*"
DATA_ASSETS = (
    "raw_customers",
    "cleaned_customers",
    "quarantined_customers",
    "customer_features",
    "feature_pipeline",
)
# Two full pipeline runs on two cores, one of them next to a master, a worker and an executor.
RUN_TIMEOUT_S = 1500
SPARK_ENV_VARS = ("SPARK_MASTER", "SPARK_REMOTE", "DAGSTER_HOME", "CHURN_HOME")


@contextlib.contextmanager
def pipeline_run(
    home: Path, telco_csv: Path, spark_env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """`churn-platform run --json` in a child process: one SparkContext per process, and the
    test session already holds a local one. The child's process group is killed if the test
    ends before it does."""
    (home / "data").mkdir(parents=True)
    (home / "data" / "telco_churn.csv").symlink_to(telco_csv)
    env = {k: v for k, v in os.environ.items() if k not in SPARK_ENV_VARS}
    env.update(
        CHURN_HOME=str(home),
        CHURN_TRAINING_PROFILE="quick",
        CHURN_SHUFFLE_PARTITIONS="2",
        SPARK_DRIVER_MEMORY="1g",
        CHURN_PSEUDONYM_KEY="test-pseudonym-key",
        # Executors start Python workers with the driver's PYSPARK_PYTHON (default: `python3`
        # on PATH, which may lack our packages).
        PYSPARK_PYTHON=sys.executable,
        **spark_env,
    )
    with (home / "run.stderr").open("w") as stderr:
        process = subprocess.Popen(
            [str(CLI), "run", "--select", SELECTION, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            process_group=0,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def summary_of(process: subprocess.Popen[str], home: Path) -> dict[str, Any]:
    """The JSON summary the CLI prints last; on failure, the end of its stderr."""
    stdout, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    if process.returncode != 0:
        tail = "\n".join((home / "run.stderr").read_text().splitlines()[-40:])
        pytest.fail(f"pipeline run in {home} exited with {process.returncode}:\n{tail}")
    return json.loads(stdout.strip().splitlines()[-1])


def leaderboard(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        row["model"]: {k: v for k, v in row.items() if k not in ("model", "version")}
        for row in summary["leaderboard"]
    }


def assert_same_results(cluster: dict[str, Any], local: dict[str, Any]) -> None:
    """What must not depend on where Spark runs; timings and run ids naturally differ."""
    assert cluster["success"] and local["success"]
    assert set(cluster["assets"]) == set(local["assets"])
    for key in DATA_ASSETS:
        assert cluster["assets"][key] == local["assets"][key], key
    assert cluster["assets"]["raw_customers"]["row_count"] == 7043
    assert cluster["quarantine"] == local["quarantine"]
    champion, reference = cluster["champion"], local["champion"]
    assert (champion["name"], champion["model_kind"]) == (
        reference["name"],
        reference["model_kind"],
    )
    assert champion["metrics"] == pytest.approx(reference["metrics"], rel=0, abs=1e-9)
    cluster_board, local_board = leaderboard(cluster), leaderboard(local)
    assert cluster_board.keys() == local_board.keys()
    for model, metrics in local_board.items():
        assert cluster_board[model] == pytest.approx(metrics, rel=0, abs=1e-9), model


@pytest.mark.timeout(2 * RUN_TIMEOUT_S)
def test_pipeline_on_standalone_cluster_matches_local_mode(tmp_path, telco_csv):
    spark_logs = tmp_path / "spark"
    # The local-mode reference runs while the cluster starts: the two overlap on JVM start-up.
    with pipeline_run(tmp_path / "local", telco_csv, {"SPARK_MASTER": "local[2]"}) as local:
        with standalone_cluster(cores=2, memory="2g", log_dir=spark_logs) as master_url:
            with pipeline_run(
                tmp_path / "cluster", telco_csv, {"SPARK_MASTER": master_url}
            ) as on_cluster:
                cluster_summary = summary_of(on_cluster, tmp_path / "cluster")
        local_summary = summary_of(local, tmp_path / "local")
    # The executors really ran on the worker: it made a folder for the application.
    assert list((spark_logs / "work").glob("app-*/0"))
    assert_same_results(cluster_summary, local_summary)
