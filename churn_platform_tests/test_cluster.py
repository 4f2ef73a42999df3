"""The unchanged pipeline on a Spark standalone cluster (SPARK_MASTER) and over Spark Connect
(SPARK_REMOTE), chosen by configuration alone, gives the same results as local mode."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from churn_platform.cluster import connect_server, standalone_cluster
from churn_platform_tests.conftest import REFIT, PipelineRun

pytestmark = pytest.mark.cluster

CLI = Path(sys.executable).with_name("churn-platform")
DATA_LAYERS = "group:ingestion or group:cleaning or group:features"
# One model on the data layers: an ML pipeline, out-of-fold cross-fitting, model save and
# MLflow logging on the cluster. The tree is the cheapest; another model would add no new kind
# of work.
MODELS = ("model_decision_tree",)
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


def run_pipeline(home: Path, selection: str, spark_var: str, spark_url: str) -> dict[str, Any]:
    """`churn-platform run --json` in a child process (one SparkContext per process, and the
    test session already holds a local one); returns the JSON summary it prints last. Output
    goes to files named after `spark_var` (a full pipe would stall the child); its process group
    is killed if the test ends first."""
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
    )
    env[spark_var] = spark_url
    stdout, stderr = home / f"{spark_var}.stdout", home / f"{spark_var}.stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [str(CLI), "run", "--select", selection, "--json"],
            env=env,
            stdout=out,
            stderr=err,
            process_group=0,
        )
    try:
        code = process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if code != 0:
        tail = "\n".join(stderr.read_text().splitlines()[-40:])
        pytest.fail(f"{spark_var} run of {selection!r} in {home} exited with {code}:\n{tail}")
    return json.loads(stdout.read_text().strip().splitlines()[-1])


def model_metrics(summary: dict[str, Any], model: str) -> dict[str, float]:
    """A model's evaluation metadata; timings differ by nature and are left out."""
    return {k: v for k, v in summary["assets"][model].items() if not k.endswith("_seconds")}


def assert_same_data_layers(summary: dict[str, Any], local: dict[str, Any]) -> None:
    assert summary["success"] and local["success"]
    for key in DATA_ASSETS:
        assert summary["assets"][key] == local["assets"][key], key
    assert summary["assets"]["raw_customers"]["row_count"] == 7043
    assert summary["quarantine"] == local["quarantine"]


@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 600)
def test_pipeline_over_spark_connect_and_on_a_standalone_cluster_matches_local_mode(
    tmp_path: Path, telco_csv: Path, telco_pipeline: PipelineRun
) -> None:
    """The reference is the session's local-mode run of the whole graph (same data, profile,
    seed and shuffle partitions). On one standalone cluster, the data layers are built over
    Spark Connect (a Connect server whose executors are the cluster's), then a model is trained
    on them as a classic SPARK_MASTER application: the layers and the model must be identical
    to local mode's. Models are not trained over Connect: MLflow 3.17's Spark flavor cannot log
    a model there (see docs/PRODUCTION.md)."""
    home = tmp_path / "cluster_home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "telco_churn.csv").symlink_to(telco_csv)
    spark_logs, server_logs = tmp_path / "spark", tmp_path / "connect"
    local = telco_pipeline.summary
    with standalone_cluster(os.environ, cores=2, memory="2g", log_dir=spark_logs) as master_url:
        # The server holds the worker's cores while it runs: stopped before the next application.
        with connect_server(os.environ, master=master_url, log_dir=server_logs) as remote:
            layers = run_pipeline(home, DATA_LAYERS, "SPARK_REMOTE", remote)
        # Only the model: it reads the layers just built over Connect.
        models = run_pipeline(
            home, " or ".join(f"key:{m}" for m in MODELS), "SPARK_MASTER", master_url
        )

    assert set(layers["assets"]) == set(DATA_ASSETS)
    assert_same_data_layers(layers, local)
    # Both applications (the server's and the model run's) had an executor on the worker, and
    # the server's side (its executor logs there), not a local JVM of the client, read the input.
    executors = sorted((spark_logs / "work").glob("app-*/0"))
    assert len(executors) == 2, executors
    server_side = [server_logs / "connect-server.log", *(e / "stderr" for e in executors)]
    logs = "".join(log.read_text(errors="replace") for log in server_side if log.is_file())
    assert str(home / "data" / "telco_churn.csv") in logs

    assert models["success"] and set(models["assets"]) == set(MODELS)
    # Timings and run ids differ by nature; models and their metrics must not, beyond the
    # last-bit noise of fitting the model again in other JVMs (integer counts match exactly).
    for model in MODELS:
        assert "roc_auc" in model_metrics(local, model)
        assert model_metrics(models, model) == pytest.approx(
            model_metrics(local, model), **REFIT
        ), model
