"""The unchanged pipeline on a Spark standalone cluster (SPARK_MASTER) and over Spark Connect
(SPARK_REMOTE), chosen by configuration alone, gives the same results as local mode."""

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

from churn_platform.cluster import connect_server, standalone_cluster
from churn_platform_tests.conftest import REFIT, PipelineRun

pytestmark = pytest.mark.cluster

CLI = Path(sys.executable).with_name("churn-platform")
DATA_LAYERS = "group:ingestion or group:cleaning or group:features"
# The data layers plus one model: every kind of Spark work the platform does (ETL, an ML
# pipeline, out-of-fold cross-fitting, model save and MLflow logging) at a fraction of the cost
# of all nine models. The tree is the cheapest; another model would add no new kind of work.
MODELS = ("model_decision_tree",)
PIPELINE = " or ".join((DATA_LAYERS, *(f"key:{m}" for m in MODELS)))
DATA_ASSETS = (
    "raw_customers",
    "cleaned_customers",
    "quarantined_customers",
    "customer_features",
    "feature_pipeline",
)
# A run shares two cores with a master, a worker and an executor; the margin is for a loaded CI
# machine.
RUN_TIMEOUT_S = 1800
SPARK_ENV_VARS = ("SPARK_MASTER", "SPARK_REMOTE", "DAGSTER_HOME", "CHURN_HOME")


@contextlib.contextmanager
def pipeline_run(
    home: Path, telco_csv: Path, selection: str, spark_env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """`churn-platform run --json` in a child process: one SparkContext per process, and the
    test session already holds a local one. Output goes to files (a full pipe would stall the
    child); its process group is killed if the test ends first."""
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
    with (home / "run.stdout").open("wb") as stdout, (home / "run.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [str(CLI), "run", "--select", selection, "--json"],
            env=env,
            stdout=stdout,
            stderr=stderr,
            process_group=0,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def summary_of(process: subprocess.Popen[bytes], home: Path) -> dict[str, Any]:
    """The JSON summary the CLI prints last; on failure, the end of its stderr."""
    code = process.wait(timeout=RUN_TIMEOUT_S)
    if code != 0:
        tail = "\n".join((home / "run.stderr").read_text().splitlines()[-40:])
        pytest.fail(f"pipeline run in {home} exited with {code}:\n{tail}")
    return json.loads((home / "run.stdout").read_text().strip().splitlines()[-1])


def model_metrics(summary: dict[str, Any], model: str) -> dict[str, float]:
    """A model's evaluation metadata; timings differ by nature and are left out."""
    return {k: v for k, v in summary["assets"][model].items() if not k.endswith("_seconds")}


def assert_same_data_layers(summary: dict[str, Any], local: dict[str, Any]) -> None:
    assert summary["success"] and local["success"]
    for key in DATA_ASSETS:
        assert summary["assets"][key] == local["assets"][key], key
    assert summary["assets"]["raw_customers"]["row_count"] == 7043
    assert summary["quarantine"] == local["quarantine"]


@pytest.mark.timeout(RUN_TIMEOUT_S + 600)
def test_pipeline_on_standalone_cluster_matches_local_mode(
    tmp_path: Path, telco_csv: Path, telco_pipeline: PipelineRun
) -> None:
    """The reference is the session's local-mode run of the whole graph (same data, profile,
    seed and shuffle partitions): its data layers and this model must be identical."""
    spark_logs = tmp_path / "spark"
    with standalone_cluster(os.environ, cores=2, memory="2g", log_dir=spark_logs) as master_url:
        home = tmp_path / "cluster_mode"
        with pipeline_run(home, telco_csv, PIPELINE, {"SPARK_MASTER": master_url}) as run:
            summary = summary_of(run, home)
    # The executor really ran on the worker: it made the application's folder.
    assert list((spark_logs / "work").glob("app-*/0"))
    local = telco_pipeline.summary
    assert set(summary["assets"]) == {*DATA_ASSETS, *MODELS}
    assert_same_data_layers(summary, local)
    # Timings and run ids differ by nature; models and their metrics must not, beyond the
    # last-bit noise of fitting the model again in other JVMs (integer counts match exactly).
    for model in MODELS:
        assert "roc_auc" in model_metrics(local, model)
        assert model_metrics(summary, model) == pytest.approx(
            model_metrics(local, model), **REFIT
        ), model


@pytest.mark.timeout(RUN_TIMEOUT_S + 600)
def test_data_layers_over_spark_connect_match_local_mode(
    tmp_path: Path, telco_csv: Path, telco_pipeline: PipelineRun
) -> None:
    """Models are left out: MLflow 3.17's Spark flavor cannot log a model over Spark Connect
    (see docs/PRODUCTION.md)."""
    server_logs = tmp_path / "connect"
    with connect_server(os.environ, master="local[2]", log_dir=server_logs) as remote:
        home = tmp_path / "connect_mode"
        with pipeline_run(home, telco_csv, DATA_LAYERS, {"SPARK_REMOTE": remote}) as run:
            summary = summary_of(run, home)
    assert set(summary["assets"]) == set(DATA_ASSETS)
    # The server, not a local JVM of the client, read this run's input.
    server_log = (server_logs / "connect-server.log").read_text(errors="replace")
    assert str(home / "data" / "telco_churn.csv") in server_log
    assert_same_data_layers(summary, telco_pipeline.summary)
