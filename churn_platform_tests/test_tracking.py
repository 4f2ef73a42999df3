"""MLflow runs record their provenance, and the champion alias moves only through the gate."""

from __future__ import annotations

import itertools
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow.spark
import numpy as np
import pandas as pd
import pytest
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.backup_drill import golden_prediction_hash
from churn_platform.config import DatasetSpec, SourceSpec, TargetSpec
from churn_platform.core import tracking
from churn_platform.core.evaluation import curves, plot_curves
from churn_platform.core.input_files import SchemaMismatchError, check_input_columns
from churn_platform.core.model_loading import load_local_pipeline
from churn_platform.core.models.explain import feature_importance, vector_feature_names
from churn_platform.core.models.fitting import PROBABILITY_COL, full_model, training_frame
from churn_platform.core.models.training import fit_model
from churn_platform.core.ops.changes import list_changes
from churn_platform.core.ops.log import OpsLog
from churn_platform.core.registry import promote, register_candidate, registry_snapshot, rollback
from churn_platform.core.tracking import (
    ModelIntegrityError,
    TrainingRun,
    git_commit,
    load_model,
    log_training_run,
    model_input_columns,
    model_threshold,
)
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import Settings
from churn_platform_tests.conftest import SAME_MODEL, assert_same_scores
from churn_platform_tests.test_ops_log import clear_ambient_ops_env, ops_log_file, ops_records

ID = "customer_id"
INPUT_COLUMNS = [ID, "x1", "x2", "x3"]
# Feature subsets give three genuinely different models: noise only, one weak signal, both.
FEATURE_SETS = {"weak": ["x3"], "medium": ["x2", "x3"], "strong": ["x1", "x2", "x3"]}
_spec_names = (f"t{i}" for i in itertools.count())


@dataclass(frozen=True)
class Trained:
    model: PipelineModel
    metrics: dict[str, float]
    run: TrainingRun


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_ambient_ops_env(monkeypatch)


def _spec(name: str | None = None) -> DatasetSpec:
    """A spec per test, so each test has its own registered model in the shared backend."""
    return DatasetSpec(
        name=name or next(_spec_names),
        sources=(SourceSpec(name="customers", format="csv", path="unused.csv"),),
        id_column=ID,
        target=TargetSpec(column="churn", positive="Yes"),
    )


def _customers(rows: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.normal(size=rows), rng.normal(size=rows), rng.normal(size=rows)
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-(2.5 * x1 + 1.0 * x2)))).astype(int)
    return pd.DataFrame(
        {
            ID: [f"c{i:04d}" for i in range(rows)],
            "x1": x1,
            "x2": x2,
            "x3": x3,
            "label": label,
            "split": np.where(np.arange(rows) % 4 == 0, "test", "train"),
            "fold": np.arange(rows) % 2,
        }
    )


@pytest.fixture(scope="module")
def customers(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(_customers()).cache()


@pytest.fixture(scope="module")
def resource(tmp_path_factory: pytest.TempPathFactory) -> MlflowResource:
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowResource(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "artifacts")
    )


@pytest.fixture(scope="module")
def trained(
    resource: MlflowResource, customers: DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Trained]:
    """Three models trained and logged once per module: logging a Spark model costs seconds.

    Only the strong model gets curves and importances; the others exist for the registry tests.
    """
    spec = _spec("logged")
    result = {}
    for name, columns in FEATURE_SETS.items():
        assembler = VectorAssembler(inputCols=columns, outputCol="features")
        features_pipeline = Pipeline(stages=[assembler]).fit(customers)
        features = features_pipeline.transform(customers)
        with training_frame(features, ID) as frame:
            fit = fit_model("logistic_regression", frame, {"regParam": 0.01, "maxIter": 10})
        model = full_model(features_pipeline, fit.model)
        test_predictions = model.transform(customers.filter(F.col("split") == "test"))
        metrics = {"roc_auc": _roc_auc(test_predictions), "test_rows": 100}
        evaluation = {}
        if name == "strong":
            evaluation = {
                "artifacts": plot_curves(
                    curves(*_labels_and_scores(test_predictions)), tmp_path_factory.mktemp(name)
                ),
                "feature_importance": feature_importance(fit.model, vector_feature_names(features)),
            }
        run = log_training_run(
            resource,
            spec,
            model_kind="logistic_regression",
            model=model,
            params={"regParam": 0.01, "features": columns, "base_params": {"lr": {"maxIter": 10}}},
            metrics=metrics,
            threshold=0.5,
            input_schema=customers.select(*INPUT_COLUMNS).schema,
            dagster_run_id=f"dagster-{name}",
            asset_key="training/model",
            code_version="cv-1",
            data_version=f"features-{name}",
            git_commit=git_commit(),
            tags={"feature_set": name},
            **evaluation,
        )
        result[name] = Trained(model, metrics, run)
    return result


def _labels_and_scores(predictions: DataFrame) -> tuple[pd.Series, pd.Series]:
    frame = predictions.select("label", PROBABILITY_COL).toPandas()
    return frame["label"], frame[PROBABILITY_COL]


def _roc_auc(predictions: DataFrame) -> float:
    """Rank-based AUC on the driver: the test split is 100 rows."""
    frame = predictions.select(PROBABILITY_COL, "label").toPandas()
    ranks = frame[PROBABILITY_COL].rank()
    positive = frame["label"] == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _register(
    resource: MlflowResource, spec: DatasetSpec, trained: Trained, **metrics: float
) -> ModelVersion:
    return register_candidate(resource, spec, trained.run, {**trained.metrics, **metrics}, 0.42)


def _probabilities(model: PipelineModel, df: DataFrame) -> list[tuple[str, float]]:
    return [tuple(r) for r in model.transform(df).select(ID, PROBABILITY_COL).orderBy(ID).collect()]


def _alias_events(settings: Settings) -> list[dict]:
    records = ops_records(ops_log_file(settings))
    return [r for r in records if r["event_code"] == "registry.alias.set"]


def test_training_run_records_provenance_metrics_and_a_signed_model(
    resource: MlflowResource, trained: dict[str, Trained], tmp_path: Path
) -> None:
    assert trained["strong"].metrics["roc_auc"] > trained["medium"].metrics["roc_auc"] + 0.1
    assert trained["medium"].metrics["roc_auc"] > trained["weak"].metrics["roc_auc"]
    client = resource.client()
    run = client.get_run(trained["strong"].run.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith(Path(resource.artifact_root).as_uri())
    assert run.data.params["regParam"] == "0.01"
    assert run.data.params["features"] == '["x1", "x2", "x3"]'
    assert run.data.params["base_params.lr.maxIter"] == "10"
    assert run.data.metrics["roc_auc"] == pytest.approx(trained["strong"].metrics["roc_auc"])
    tags = run.data.tags
    assert tags["dagster.run_id"] == "dagster-strong"
    assert tags["data_version"] == "features-strong"
    assert tags["git_commit"] == git_commit()
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["git_commit"])
    assert tags["feature_set"] == "strong" and re.fullmatch(r"[0-9a-f]{64}", tags["model_sha256"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {
        "evaluation/roc.png",
        "evaluation/precision_recall.png",
        "evaluation/calibration.png",
        "evaluation/feature_importance.json",
    }
    mlmodel = client.download_artifacts(run.info.run_id, "model/MLmodel", str(tmp_path))
    logged = Model.load(mlmodel)
    assert "spark" in logged.flavors
    assert logged.signature.inputs.input_names() == INPUT_COLUMNS
    assert logged.signature.outputs.input_names() == [PROBABILITY_COL]
    assert git_commit(tmp_path) == "unknown"


def test_a_failing_training_run_is_ended_failed(
    resource: MlflowResource, trained: dict[str, Trained], customers: DataFrame, tmp_path: Path
) -> None:
    spec = _spec()
    with pytest.raises(FileNotFoundError, match="roc"):
        log_training_run(
            resource, spec, model_kind="logistic_regression", model=trained["weak"].model,
            params={}, metrics={"roc_auc": 0.5}, threshold=0.5,
            input_schema=customers.select(*INPUT_COLUMNS).schema, dagster_run_id="dagster-fail",
            asset_key="training/model", code_version="cv-1", data_version="d", git_commit="abc",
            artifacts={"roc": tmp_path / "missing.png"},
        )  # fmt: skip
    (run,) = resource.client().search_runs([resource.experiment_id(spec.name)])
    assert run.info.status == "FAILED" and run.data.tags["dagster.run_id"] == "dagster-fail"


def test_first_model_becomes_champion_and_a_worse_one_only_challenger(
    resource: MlflowResource, trained: dict[str, Trained], settings: Settings, ops: OpsLog
) -> None:
    spec = _spec()
    first = _register(resource, spec, trained["medium"])
    decision = promote(resource, spec, first, settings=settings, ops_log=ops, actor="user:test")
    assert decision.promoted and decision.champion_version == "1"
    assert decision.previous_champion is None
    (change,) = list_changes(settings, f"model:{spec.model_name}")
    assert (change.what_from, change.what_to) == (None, "v1")

    worse = _register(resource, spec, trained["weak"])
    decision = promote(
        resource, spec, worse.version, settings=settings, ops_log=ops, actor="user:test"
    )
    assert not decision.promoted
    assert (decision.champion_version, decision.previous_champion) == ("1", "1")
    assert decision.gate["candidate_roc_auc"] < decision.gate["champion_roc_auc"]
    aliases = resource.client().get_registered_model(spec.model_name).aliases
    assert aliases == {"champion": 1, "challenger": 2}
    tags = resource.client().get_model_version(spec.model_name, "2").tags
    assert tags["promotion.decision"] == "rejected" and tags["promotion.by"] == "user:test"
    assert tags["promotion.previous_champion"] == "1"
    assert "does not beat" in tags["promotion.reason"]
    assert tags["promotion.at"] and tags["threshold"] == "0.42"
    assert len(list_changes(settings)) == 1
    events = _alias_events(settings)
    assert [e["outcome"] for e in events] == ["promoted", "rejected"]
    assert events[1]["model_version"] == "2" and events[1]["configuration_item"].endswith(spec.name)


def test_a_better_model_beyond_the_margin_replaces_the_champion_with_a_change(
    resource: MlflowResource, trained: dict[str, Trained], settings: Settings, ops: OpsLog
) -> None:
    spec = _spec()
    promote(
        resource, spec, _register(resource, spec, trained["medium"]), settings=settings, ops_log=ops
    )
    better = _register(resource, spec, trained["strong"])
    decision = promote(
        resource, spec, better, settings=settings, ops_log=ops, margin=0.05, actor="user:test"
    )
    assert decision.promoted
    assert (decision.champion_version, decision.previous_champion) == ("2", "1")
    assert decision.gate["improvement"] > 0.05
    aliases = resource.client().get_registered_model(spec.model_name).aliases
    assert aliases == {"champion": 2, "challenger": 2}
    change = list_changes(settings, f"model:{spec.model_name}")[-1]
    assert change.change_type == "standard" and change.who == "user:test"
    assert (change.what_from, change.what_to) == ("v1", "v2")
    assert change.why["candidate_roc_auc"] == pytest.approx(trained["strong"].metrics["roc_auc"])
    assert change.why["champion_roc_auc"] == pytest.approx(trained["medium"].metrics["roc_auc"])


def test_an_improvement_within_the_margin_keeps_the_champion(
    resource: MlflowResource, trained: dict[str, Trained], settings: Settings, ops: OpsLog
) -> None:
    spec = _spec()
    champion = _register(resource, spec, trained["medium"], roc_auc=0.80)
    promote(resource, spec, champion, settings=settings, ops_log=ops)
    slightly = _register(resource, spec, trained["strong"], roc_auc=0.805)
    decision = promote(resource, spec, slightly, settings=settings, ops_log=ops, margin=0.01)
    assert not decision.promoted and decision.champion_version == "1"
    assert decision.gate["improvement"] == pytest.approx(0.005)


def test_rollback_restores_the_previous_champion_as_an_emergency_change(
    resource: MlflowResource, trained: dict[str, Trained], settings: Settings, ops: OpsLog
) -> None:
    spec = _spec()
    medium = _register(resource, spec, trained["medium"], roc_auc=0.80)
    promote(resource, spec, medium, settings=settings, ops_log=ops)
    promote(
        resource,
        spec,
        _register(resource, spec, trained["strong"], roc_auc=0.85),
        settings=settings,
        ops_log=ops,
    )
    # A clearly worse model (0.05 below the champion) needs an explicit --force.
    with pytest.raises(ValueError, match=r"v1 .*worse than the champion v2.*--force"):
        rollback(resource, spec, settings, "user:oncall", "complaints about scores", ops_log=ops)
    assert resource.client().get_registered_model(spec.model_name).aliases["champion"] == 2
    decision = rollback(
        resource, spec, settings, "user:oncall", "complaints about scores", force=True, ops_log=ops
    )
    assert decision.promoted
    assert (decision.champion_version, decision.previous_champion) == ("1", "2")
    client = resource.client()
    assert client.get_registered_model(spec.model_name).aliases["champion"] == 1
    restored = client.get_model_version(spec.model_name, "1").tags
    assert restored["promotion.decision"] == "rollback"
    assert restored["promotion.previous_champion"] == "2"
    demoted = client.get_model_version(spec.model_name, "2").tags
    assert demoted["promotion.decision"] == "rolled_back"
    assert demoted["promotion.by"] == "user:oncall"
    assert demoted["promotion.reason"] == "complaints about scores"
    change = list_changes(settings, f"model:{spec.model_name}")[-1]
    assert change.change_type == "emergency" and change.who == "user:oncall"
    assert (change.what_from, change.what_to) == ("v2", "v1")
    assert change.why["reason"] == "complaints about scores"
    assert _alias_events(settings)[-1]["outcome"] == "rolled_back"
    with pytest.raises(ValueError, match="no earlier champion"):
        rollback(resource, spec, settings, "user:oncall", "again", ops_log=ops)


def test_scoring_by_alias_loads_that_version_and_reproduces_its_predictions(
    resource: MlflowResource,
    trained: dict[str, Trained],
    settings: Settings,
    customers: DataFrame,
    ops: OpsLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As another process loads it (`score`, the daemon's runs): from the checked files."""
    monkeypatch.setattr(tracking, "_LOGGED", {})
    spec = _spec()
    promote(
        resource, spec, _register(resource, spec, trained["medium"]), settings=settings, ops_log=ops
    )
    promote(
        resource, spec, _register(resource, spec, trained["strong"]), settings=settings, ops_log=ops
    )
    rollback(resource, spec, settings, "user:oncall", "drill", force=True, ops_log=ops)

    model, version = load_model(resource, spec)
    assert str(version.version) == "1" and model_threshold(version) == 0.42
    golden = customers.filter(F.col("split") == "test").select(*INPUT_COLUMNS)
    expected = _probabilities(trained["medium"].model, golden)
    assert_same_scores(_probabilities(model, golden), expected, SAME_MODEL)
    assert golden_prediction_hash(model, golden, id_col=ID) == golden_prediction_hash(
        trained["medium"].model, golden, id_col=ID
    )
    snapshot = registry_snapshot(resource, spec)
    assert [(m["name"], m["version"], m["aliases"]) for m in snapshot] == [
        (spec.model_name, "1", ["champion"]),
        (spec.model_name, "2", ["challenger"]),
    ]
    # What `status` shows per version: the kind and the test ROC-AUC it was registered with.
    assert [m["model_kind"] for m in snapshot] == ["logistic_regression"] * 2
    assert float(snapshot[0]["roc_auc"]) == trained["medium"].metrics["roc_auc"]


def test_a_model_this_process_logged_is_checked_and_not_read_back(
    resource: MlflowResource, trained: dict[str, Trained], settings: Settings, ops: OpsLog
) -> None:
    """`churn-platform run` trains, then scores in one process: the champion's files are
    checked against their hash as always, and the fitted model they were written from is
    scored, without Spark jobs reading them back."""
    spec = _spec()
    promote(
        resource, spec, _register(resource, spec, trained["strong"]), settings=settings, ops_log=ops
    )
    jobs = SparkSession.active().sparkContext.statusTracker()
    before = len(jobs.getJobIdsForGroup(None))
    model, version = load_model(resource, spec)
    assert model is trained["strong"].model and str(version.version) == "1"
    assert len(jobs.getJobIdsForGroup(None)) == before


def test_a_model_whose_files_changed_is_refused(
    resource: MlflowResource, trained: dict[str, Trained], settings: Settings, ops: OpsLog
) -> None:
    """Also where this process logged it and holds the fitted model: the registry's files are
    what another process would serve."""
    spec = _spec()
    promote(
        resource, spec, _register(resource, spec, trained["weak"]), settings=settings, ops_log=ops
    )
    run_id = trained["weak"].run.run_id
    (metadata,) = Path(resource.artifact_root).glob(f"*/{run_id}/artifacts/model/MLmodel")
    original = metadata.read_bytes()
    try:
        metadata.write_bytes(original + b"\n# tampered\n")
        with pytest.raises(ModelIntegrityError, match="hash"):
            load_model(resource, spec)
    finally:
        metadata.write_bytes(original)


def test_a_logged_model_loads_in_place_with_the_stages_and_probabilities_of_mlflows_load(
    resource: MlflowResource, trained: dict[str, Trained], customers: DataFrame
) -> None:
    """`score` loads the champion's checked folder in place, metadata read without Spark jobs:
    the same stages, parameters and probabilities as `mlflow.spark.load_model`."""
    run_id = trained["strong"].run.run_id
    (folder,) = Path(resource.artifact_root).glob(f"*/{run_id}/artifacts/model")
    by_mlflow = mlflow.spark.load_model(str(folder))
    in_place = load_local_pipeline(folder / "sparkml")

    def described(model: PipelineModel) -> list[tuple[type, str, dict[str, object]]]:
        return [
            (type(s), s.uid, {p.name: v for p, v in s.extractParamMap().items()})
            for s in model.stages
        ]

    assert in_place.uid == by_mlflow.uid
    assert described(in_place) == described(by_mlflow)
    modules = {type(s).__module__.split(".")[0] for s in in_place.stages}
    assert modules == {"pyspark", "churn_platform"}  # JVM stages and the platform's own
    assert _probabilities(in_place, customers) == _probabilities(by_mlflow, customers)


def test_schema_mismatch_names_the_missing_columns(
    resource: MlflowResource, trained: dict[str, Trained]
) -> None:
    spec = _spec()
    version = _register(resource, spec, trained["strong"])
    required = model_input_columns(resource, version)
    assert required == INPUT_COLUMNS
    check_input_columns([*INPUT_COLUMNS, "extra"], required)
    with pytest.raises(SchemaMismatchError, match="2 column.*x1, x3") as error:
        check_input_columns([ID, "x2"], required)
    assert error.value.missing == ("x1", "x3")


def test_golden_hash_ignores_row_order_and_detects_a_different_model(
    trained: dict[str, Trained], customers: DataFrame
) -> None:
    """Stability across a save/load is covered by the scoring-by-alias test above."""
    golden = customers.filter(F.col("split") == "test").select(*INPUT_COLUMNS)
    model = trained["strong"].model
    expected = golden_prediction_hash(model, golden, id_col=ID)
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    assert golden_prediction_hash(model, golden.orderBy(F.rand(5)), id_col=ID) == expected
    assert golden_prediction_hash(trained["medium"].model, golden, id_col=ID) != expected


def test_experiment_is_created_once_even_when_raced(resource: MlflowResource) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = set(pool.map(lambda _: resource.experiment_id("raced"), range(8)))
    (experiment_id,) = ids
    experiment = resource.client().get_experiment(experiment_id)
    assert experiment.name == "churn-raced"
    expected = (Path(resource.artifact_root) / "churn-raced").as_uri()
    assert experiment.artifact_location == expected
    assert registry_snapshot(resource, _spec("raced")) == []


def test_one_evaluation_file_is_fetched_alone_and_a_missing_one_is_an_mlflow_error(
    resource: MlflowResource, tmp_path: Path
) -> None:
    """Scoring reads the reference customer and monitoring the out-of-fold scores, each one
    file of the run's evaluation artifacts; a run without the file (logged before it was)
    raises MLflow's error, which `logged_reference` reports and measures past."""
    written = tmp_path / "written"
    written.mkdir()
    (written / tracking.OOF_SCORES).write_bytes(b"scores")
    (written / "roc.png").write_bytes(b"curve")
    client = resource.client()
    run = client.create_run(resource.experiment_id("evaluation"))
    client.log_artifacts(run.info.run_id, str(written), tracking.EVALUATION_ARTIFACTS)
    version = ModelVersion("m", "1", 0, run_id=run.info.run_id)
    found = tracking.evaluation_file(resource, version, tracking.OOF_SCORES, str(tmp_path))
    assert found.name == tracking.OOF_SCORES and found.read_bytes() == b"scores"
    with pytest.raises(mlflow.exceptions.MlflowException):
        tracking.evaluation_file(resource, version, "reasons_reference.json", str(tmp_path))
    assert tracking.logged_reference(resource, version) is None
