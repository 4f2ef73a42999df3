"""Ensembles take a base model's stored fit only when it was made from the same data."""

import json
from pathlib import Path

import dagster as dg
import pytest
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame, SparkSession

from churn_platform import modeling
from churn_platform.assets.training import _reusable_bases, _store_fit
from churn_platform.io_managers import SUMMARY, new_version_dir, publish_version
from churn_platform_tests.conftest import SAME_MODEL, assert_same_scores

ID = "customer_id"
FINGERPRINT = {"features_data_version": "abc123", "seed": 42, "train_max_rows": 500_000}


@pytest.fixture(scope="module")
def features(spark: SparkSession) -> DataFrame:
    rows = [
        (f"c{i:03d}", float(i % 2), "train" if i < 60 else "test", i % 3, Vectors.dense(i % 2, i))
        for i in range(80)
    ]
    return spark.createDataFrame(rows, [ID, "label", "split", "fold", "features"])


def _publish_base(warehouse: Path, training: Path, fit: modeling.FitResult) -> None:
    """What the model_logistic_regression asset leaves behind: its fit and its summary."""
    reuse = _store_fit(training / "logistic_regression", "run-1", fit, FINGERPRINT)
    folder = warehouse / "model_logistic_regression"
    folder.mkdir(parents=True)
    version = new_version_dir(folder, "run-1")
    version.mkdir()
    summary = {"mlflow_run_id": "mlflow-1", "params": fit.params, "reuse": reuse}
    (version / SUMMARY).write_text(json.dumps(summary))
    publish_version(folder, version)


def test_a_stored_base_fit_is_reused_only_for_the_same_features_seed_and_cap(
    tmp_path: Path, features: DataFrame
) -> None:
    fit = modeling.fit_model(
        "logistic_regression", features, {"regParam": 0.1, "maxIter": 10}, id_col=ID
    )
    warehouse, training = tmp_path / "warehouse", tmp_path / "training"
    _publish_base(warehouse, training, fit)
    context = dg.build_asset_context()
    wanted = ["logistic_regression", "gbt"]

    found = _reusable_bases(context, features, wanted, FINGERPRINT, warehouse)
    assert set(found) == {"logistic_regression"}, "gbt was never materialized: fitted in place"
    base, run_id = found["logistic_regression"]
    assert run_id == "mlflow-1"

    def probabilities(model: modeling.PipelineModel) -> list:
        return model.transform(features).select(ID, modeling.PROBABILITY_COL).collect()

    assert_same_scores(probabilities(base.model), probabilities(fit.model), SAME_MODEL)
    assert_same_scores(sorted(base.oof.collect()), sorted(fit.oof.collect()), SAME_MODEL)

    for key, other in (("features_data_version", "def456"), ("seed", 7), ("train_max_rows", 10)):
        changed = {**FINGERPRINT, key: other}
        assert _reusable_bases(context, features, wanted, changed, warehouse) == {}, key
