"""Ensembles reuse a base model asset's fit only when it was made from the same data; model
summaries keep their tables through the IO manager; run parameters merge in one order."""

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster_pyspark import PySparkResource
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, SparkSession

from churn_platform.assets.training import _reusable_bases
from churn_platform.config import DatasetSpec, SourceSpec, TargetSpec
from churn_platform.core import tracking
from churn_platform.core.features import fit_feature_pipeline
from churn_platform.core.models.explain import feature_importance, vector_feature_names
from churn_platform.core.models.fitting import (
    PROBABILITY_COL,
    FitResult,
    TrainingFrame,
    full_model,
    numeric_slots,
    training_frame,
)
from churn_platform.core.models.kinds import KINDS, merged_params
from churn_platform.core.models.stages import DropColumns, RenameColumn, SignedLog, WeightedAverage
from churn_platform.core.models.training import fit_model
from churn_platform.core.versions import current_version
from churn_platform.io_managers import SUMMARY, VersionedParquetIOManager
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.model_config import LogisticRegressionConfig, ModelConfig, model_params
from churn_platform_tests.conftest import SAME_MODEL, assert_same_scores

ID = "customer_id"
FINGERPRINT = {"features_data_version": "abc123", "seed": 42, "train_max_rows": 500_000}
BASE_KEY = "model_logistic_regression"


def _manager(base: Path) -> VersionedParquetIOManager:
    """The warehouse IO manager; summaries never need its Spark session."""
    return VersionedParquetIOManager(base_path=str(base), pyspark=PySparkResource(spark_config={}))


def _round_trip(base: Path, key: str, summary: dict) -> dict:
    """Store a model asset's summary as the IO manager does and load it as a downstream input."""
    manager = _manager(base)
    asset_key = dg.AssetKey(key)
    manager.handle_output(dg.build_output_context(asset_key=asset_key, run_id="run00001"), summary)
    return manager.load_input(dg.build_input_context(asset_key=asset_key))


@pytest.fixture(scope="module")
def engineered(spark: SparkSession) -> DataFrame:
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=120), rng.normal(size=120)
    label = (rng.uniform(size=120) < 1 / (1 + np.exp(-2 * x1))).astype(int)
    table = pd.DataFrame(
        {
            ID: [f"c{i:03d}" for i in range(120)],
            "x1": x1,
            "x2": x2,
            "label": label,
            "split": ["train" if i < 90 else "test" for i in range(120)],
            "fold": [i % 3 for i in range(120)],
        }
    )
    return spark.createDataFrame(table).cache()


@pytest.fixture(scope="module")
def feature_pipeline(engineered: DataFrame) -> PipelineModel:
    return Pipeline(stages=[VectorAssembler(inputCols=["x1", "x2"], outputCol="features")]).fit(
        engineered
    )


@pytest.fixture(scope="module")
def frame(engineered: DataFrame, feature_pipeline: PipelineModel) -> Iterator[TrainingFrame]:
    with training_frame(engineered, ID, feature_pipeline) as cached:
        yield cached


@pytest.fixture(scope="module")
def mlflow_resource(tmp_path_factory: pytest.TempPathFactory) -> MlflowResource:
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowResource(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "artifacts")
    )


@pytest.fixture(scope="module")
def base_fit(frame: TrainingFrame) -> FitResult:
    return fit_model("logistic_regression", frame, {"regParam": 0.1, "maxIter": 10})


@pytest.fixture(scope="module")
def base_summary(
    engineered: DataFrame,
    feature_pipeline: PipelineModel,
    mlflow_resource: MlflowResource,
    base_fit: FitResult,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """What model_logistic_regression hands an ensemble: its MLflow run, fingerprint and OOF
    table, stored and loaded again through the warehouse IO manager."""
    spec = DatasetSpec(
        name="reuse",
        sources=(SourceSpec(name="customers", format="csv", path="unused.csv"),),
        id_column=ID,
        target=TargetSpec(column="churn", positive="Yes"),
    )
    run = tracking.log_training_run(
        mlflow_resource,
        spec,
        model_kind="logistic_regression",
        model=full_model(feature_pipeline, base_fit.model),
        params=base_fit.params,
        metrics={"roc_auc": 0.8},
        threshold=0.5,
        input_schema=engineered.select("x1", "x2").schema,
        dagster_run_id="dagster-1",
        asset_key=BASE_KEY,
        code_version="2",
        data_version=FINGERPRINT["features_data_version"],
        git_commit="test",
    )
    summary = {
        "kind": "logistic_regression",
        "mlflow_run_id": run.run_id,
        "model_uri": run.model_uri,
        "params": base_fit.params,
        "reuse": FINGERPRINT,
        "oof": base_fit.oof,
    }
    return _round_trip(tmp_path_factory.mktemp("warehouse"), BASE_KEY, summary)


def test_a_base_fit_is_reused_for_the_same_features_seed_and_cap(
    frame: TrainingFrame,
    feature_pipeline: PipelineModel,
    mlflow_resource: MlflowResource,
    base_fit: FitResult,
    base_summary: dict,
) -> None:
    context = dg.build_asset_context()
    found = _reusable_bases(
        context, {BASE_KEY: base_summary}, FINGERPRINT, mlflow_resource, feature_pipeline
    )
    assert set(found) == {"logistic_regression"}
    base, run_id = found["logistic_regression"]
    assert run_id == base_summary["mlflow_run_id"]
    assert base.params == base_fit.params
    pd.testing.assert_frame_equal(base.oof, base_fit.oof)

    def probabilities(model: PipelineModel) -> list:
        return model.transform(frame.train).select(ID, PROBABILITY_COL).orderBy(ID).collect()

    assert_same_scores(probabilities(base.model), probabilities(base_fit.model), SAME_MODEL)


@pytest.mark.parametrize(
    ("key", "other"), [("features_data_version", "def456"), ("seed", 7), ("train_max_rows", 10)]
)
def test_a_base_fit_from_other_features_seed_or_cap_is_fitted_again(
    key: str, other: object, base_summary: dict, feature_pipeline: PipelineModel
) -> None:
    """Stale summaries are turned down before MLflow is asked for anything."""
    unreachable = MlflowResource(tracking_uri="sqlite:///nowhere/none.db", artifact_root="nowhere")
    changed = {**FINGERPRINT, key: other}
    found = _reusable_bases(
        dg.build_asset_context(), {BASE_KEY: base_summary}, changed, unreachable, feature_pipeline
    )
    assert found == {}


@pytest.mark.parametrize("missing", ["oof", "reuse"])
def test_a_base_summary_without_a_fingerprint_or_oof_table_is_fitted_again(
    missing: str, base_summary: dict, feature_pipeline: PipelineModel
) -> None:
    unreachable = MlflowResource(tracking_uri="sqlite:///nowhere/none.db", artifact_root="nowhere")
    partial = {k: v for k, v in base_summary.items() if k != missing}
    found = _reusable_bases(
        dg.build_asset_context(), {BASE_KEY: partial}, FINGERPRINT, unreachable, feature_pipeline
    )
    assert found == {}


def test_a_summary_keeps_its_pandas_tables_through_the_io_manager(tmp_path: Path) -> None:
    oof = pd.DataFrame(
        {
            ID: ["c1", "c2", "c3"],
            "label": [1, 0, 1],
            "fold": [0, 1, 0],
            PROBABILITY_COL: [0.9, 0.2, 1 / 3],
        }
    )
    summary = {
        "kind": "gbt",
        "metrics": {"roc_auc": 0.8125},
        "params": {"maxDepth": 3},
        "cv": {"maxDepth=2": 0.75, "maxDepth=3": 0.8125},
        "reuse": FINGERPRINT,
        "oof": oof,
    }
    loaded = _round_trip(tmp_path, "model_gbt", summary)
    pd.testing.assert_frame_equal(loaded.pop("oof"), oof)
    assert loaded == {k: v for k, v in summary.items() if k != "oof"}
    version = current_version(tmp_path / "model_gbt")
    assert version is not None
    stored = json.loads((version / SUMMARY).read_text())
    assert (version / stored["oof"]).is_file(), "the table sits beside summary.json"


def test_model_params_merge_defaults_run_config_quick_profile_and_extra_json_in_order() -> None:
    lr = KINDS["logistic_regression"]
    config = LogisticRegressionConfig(
        reg_param=[0.5], elastic_net_param=0.2, extra_params_json='{"maxIter": 7}'
    )
    assert model_params("logistic_regression", config) == {
        **lr.defaults,
        "regParam": [0.5],
        "elasticNetParam": 0.2,
        "maxIter": 7,
    }
    quick = model_params("logistic_regression", config, "quick")
    assert quick == {
        **lr.defaults,
        "regParam": 0.01,
        "elasticNetParam": 0.2,
        "maxIter": 7,
        "logNumeric": False,
    }
    extra = LogisticRegressionConfig(extra_params_json='{"regParam": [0.1, 0.2]}')
    assert model_params("logistic_regression", extra, "quick")["regParam"] == [0.1, 0.2]
    assert model_params("stacking", ModelConfig()) == dict(KINDS["stacking"].defaults)


def test_merged_params_precedence_and_unknown_kind() -> None:
    defaults = dict(KINDS["gbt"].defaults)
    merged = merged_params(
        "gbt", {"maxIter": 9, "stepSize": 0.3}, quick=True, extra={"stepSize": 1}
    )
    assert merged == {**defaults, "maxIter": 5, "maxDepth": 3, "stepSize": 1}
    assert merged_params("gbt", {"maxIter": 9}) == {**defaults, "maxIter": 9}
    assert dict(KINDS["gbt"].defaults) == defaults, "merging never changes the table"
    with pytest.raises(ValueError, match="unknown model kind 'svm'"):
        merged_params("svm")


def test_log_numeric_adds_the_log_of_numeric_slots_only(spark: SparkSession) -> None:
    """`logNumeric` gives the regression sign(x) * log(1 + |x|) of the numeric columns; the
    one-hot indicators of a categorical column are not repeated."""
    table = spark.createDataFrame(
        [(3.0, "a"), (-1.0, "b"), (0.0, "a")], "tenure double, plan string"
    )
    pipeline = fit_feature_pipeline(table, ["tenure"], ["plan"])
    vectors = pipeline.transform(table)
    assert numeric_slots(vectors) == [0]
    logged = SignedLog(inputCol="features", outputCol="logged", slots=numeric_slots(vectors))
    rows = logged.transform(vectors).collect()
    assert [list(r.logged)[:-1] for r in rows] == [list(r.features) for r in rows]
    appended = [r.logged[len(r.features)] for r in rows]
    assert appended == pytest.approx([np.log(4.0), -np.log(2.0), 0.0], **SAME_MODEL)


def test_the_platforms_stages_save_without_a_spark_job_and_load_with_sparks_reader(
    spark: SparkSession, engineered: DataFrame, tmp_path: Path
) -> None:
    """A model's own stages write their params from the driver (Spark ran a job per stage, 44 of
    the 188 that saved the demo's models) in the layout Spark's reader loads."""
    stages = [
        RenameColumn(inputCol="x1", outputCol="renamed"),
        WeightedAverage(inputCols=["renamed", "x2"], weights=[0.25, 0.75], outputCol="mean"),
        DropColumns(columns=["renamed"]),
    ]
    model = PipelineModel(stages=stages)
    group = f"save-{tmp_path.name}"
    context = spark.sparkContext
    context.setJobGroup(group, "saving the platform's stages")
    try:
        model.write().save(str(tmp_path / "model"))
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    # One job: the pipeline's own metadata, which PySpark's pipeline writer writes.
    assert len(context.statusTracker().getJobIdsForGroup(group)) == 1
    folders = sorted((tmp_path / "model" / "stages").iterdir())
    assert [sorted(p.name for p in (f / "metadata").iterdir()) for f in folders] == [
        ["_SUCCESS", "part-00000"]
    ] * 3

    def described(pipeline: PipelineModel) -> list[tuple[type, str, dict[str, object]]]:
        return [
            (type(s), s.uid, {p.name: v for p, v in s.extractParamMap().items()})
            for s in pipeline.stages
        ]

    loaded = PipelineModel.load(str(tmp_path / "model"))
    assert described(loaded) == described(model)
    assert loaded.transform(engineered).collect() == model.transform(engineered).collect()
    with pytest.raises(FileExistsError):  # as Spark's writer, never over an earlier save
        stages[0].write().save(str(folders[0]))


def test_a_log_numeric_regression_scores_the_same_after_saving_and_names_its_log_slots(
    frame: TrainingFrame, feature_pipeline: PipelineModel, engineered: DataFrame, tmp_path: Path
) -> None:
    """The stage persists by its params, so the model is served as it was fitted; its
    coefficients are reported on the plain and the log slots."""
    params = {"regParam": 0.1, "maxIter": 10, "logNumeric": True}
    fit = fit_model("logistic_regression", frame, params)
    model = full_model(feature_pipeline, fit.model)
    model.write().save(str(tmp_path / "model"))
    scored = model.transform(engineered).select(ID, PROBABILITY_COL).orderBy(ID).collect()
    loaded = PipelineModel.load(str(tmp_path / "model")).transform(engineered)
    assert_same_scores(loaded.select(ID, PROBABILITY_COL).orderBy(ID).collect(), scored, SAME_MODEL)
    assert not [c for c in loaded.columns if c.endswith("_logged")], "scratch column left"
    importance = feature_importance(fit.model, vector_feature_names(frame.train))
    assert {name for name, _ in importance} == {"x1", "x2", "log x1", "log x2"}
    with pytest.raises(ValueError, match="logistic regression only"):
        fit_model("gbt", frame, {"maxIter": 2, "logNumeric": True})
