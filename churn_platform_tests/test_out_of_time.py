"""Out-of-time validation on the real Telco data: fitted on the older batches, judged on the
newest, for a base model and for an ensemble (issue 18, item 6)."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform import runner
from churn_platform.config import DatasetSpec, SourceSpec, load_spec
from churn_platform.core import cleaning, sources
from churn_platform.core.columns import BATCH_ORDER_COL
from churn_platform.core.features import FeatureResult, build_features
from churn_platform.core.models import out_of_time
from churn_platform.core.models.ensembles import BASE_SUFFIX
from churn_platform.core.models.fitting import (
    PROBABILITY_COL,
    FitResult,
    TrainingFrame,
    predict,
    training_frame,
)
from churn_platform.core.models.kinds import merged_params
from churn_platform.core.models.training import fit_model
from churn_platform.partitions import BASE_BATCH, ingest_batches
from churn_platform.settings import DEFAULT_SPEC, load_settings

NEWEST = 20261201000000  # the batch order of an inbox file named 20261201T000000_*.csv


def _features(spark: SparkSession, spec: DatasetSpec, path: Path, newest_share: float):
    """Telco's customers as two batches: about `newest_share` of them arrived last."""
    source = SourceSpec(name="customers", format="csv", path=str(path))
    cleaned = cleaning.clean_customers(
        sources.read_batch(spark, spec, (source,), "base", 0).frame, spec
    ).cleaned
    arrival = F.when(F.rand(seed=3) < newest_share, F.lit(NEWEST)).otherwise(F.lit(0))
    return build_features(cleaned.withColumn(BATCH_ORDER_COL, arrival.cast("long")), spec)


@pytest.fixture(scope="module")
def telco(spark: SparkSession, telco_csv: Path, tmp_path_factory) -> Iterator[FeatureResult]:
    spec = load_spec(DEFAULT_SPEC, tmp_path_factory.mktemp("home"))
    result = _features(spark, spec, telco_csv, 0.3)
    stored = result.features.persist()
    yield dataclasses.replace(result, features=stored)
    stored.unpersist()


def _ids(df: DataFrame, id_col: str) -> set[str]:
    return {r[0] for r in df.select(id_col).collect()}


@dataclasses.dataclass(frozen=True)
class Fitted:
    frame: TrainingFrame
    oot: out_of_time.OutOfTimeFrame
    lr: FitResult
    voting: FitResult


@pytest.fixture(scope="module")
def fitted(telco: FeatureResult) -> Iterator[Fitted]:
    """The random split's LR and voting fits (quick profile), voting reusing the LR fit."""
    features, id_col = telco.features, telco.id_column
    quick = {k: merged_params(k, None, quick=True) for k in ("logistic_regression", "voting")}
    with (
        training_frame(features, id_col, telco.pipeline) as frame,
        out_of_time.out_of_time_frame(frame) as oot,
    ):
        assert oot is not None
        lr = fit_model("logistic_regression", frame, quick["logistic_regression"])
        bases = {"logistic_regression": lr.as_base()}
        voting = fit_model("voting", frame, quick["voting"], fitted_bases=bases)
        yield Fitted(frame, oot, lr, voting)


def test_the_newest_batch_is_judged_by_models_that_never_saw_it(
    telco: FeatureResult, fitted: Fitted
) -> None:
    features, id_col, oot = telco.features, telco.id_column, fitted.oot
    newest = features.where(F.col(BATCH_ORDER_COL) == NEWEST)
    assert oot.newest_batch_order == NEWEST
    assert _ids(oot.newest, id_col) == _ids(newest, id_col)
    assert oot.newest_rows == newest.count()
    assert oot.older_rows == features.count() - oot.newest_rows
    assert not _ids(oot.older, id_col) & _ids(oot.newest, id_col)

    scored = out_of_time.predictions("logistic_regression", fitted.lr, oot, seed=42)
    assert _ids_of(scored, id_col) == _ids(newest, id_col)
    found = out_of_time.metrics(scored, threshold=0.3, frame=oot)
    # Telco's customers do not change between these random "batches": the figure must be
    # close to the random split's (0.86), far from chance.
    assert 0.80 < found["oot_roc_auc"] < 0.90
    assert found["oot_train_rows"] == oot.older_rows
    assert found["oot_test_rows"] == oot.newest_rows


def _ids_of(table: pd.DataFrame, id_col: str) -> set[str]:
    return set(table[id_col])


def test_an_ensemble_combines_its_bases_out_of_time_scores_with_its_own_combiner(
    fitted: Fitted,
) -> None:
    frame, oot, voting = fitted.frame, fitted.oot, fitted.voting
    id_col = frame.id_col
    assert voting.params["reused_bases"] == ["logistic_regression"]

    # The combiner cut from the ensemble, after the stages up to its bases' probabilities,
    # gives the whole ensemble's test scores.
    head = out_of_time.combiner(voting.model)
    cut = len(voting.model.stages) - len(head.stages) - 1  # the last stage drops scratch columns
    bases = PipelineModel(stages=voting.model.stages[:cut]).transform(frame.test)
    used = {b for b, weight in voting.params["weights"].items() if weight > 0}
    assert {b + BASE_SUFFIX for b in used} <= set(bases.columns)
    mine = head.transform(bases).select(id_col, PROBABILITY_COL).toPandas()
    whole = predict(voting.model, frame)[[id_col, PROBABILITY_COL]]
    both = mine.merge(whole, on=id_col, suffixes=("_cut", "_whole"))
    assert len(both) == frame.test_rows
    assert np.allclose(both[f"{PROBABILITY_COL}_cut"], both[f"{PROBABILITY_COL}_whole"], atol=1e-12)

    # Given the LR asset's out-of-time scores, the ensemble uses them as they are and fits
    # only the base it did not reuse: the same scores as refitting both.
    lr_oot = out_of_time.predictions("logistic_regression", fitted.lr, oot, seed=42)
    given = out_of_time.predictions("voting", voting, oot, 42, {"logistic_regression": lr_oot})
    refit = out_of_time.predictions("voting", voting, oot, 42)
    assert _ids_of(given, id_col) == _ids_of(lr_oot, id_col)
    merged = given.merge(refit, on=id_col)
    assert np.allclose(merged[f"{PROBABILITY_COL}_x"], merged[f"{PROBABILITY_COL}_y"], atol=1e-12)
    assert out_of_time.metrics(given, 0.3, oot)["oot_roc_auc"] > 0.80


def test_one_batch_or_a_tiny_newest_batch_gives_no_out_of_time_figure(
    telco: FeatureResult,
) -> None:
    one_batch = telco.features.withColumn(BATCH_ORDER_COL, F.lit(0).cast("long"))
    few = telco.features.where(
        (F.col(BATCH_ORDER_COL) == 0) | (F.col(telco.id_column) < F.lit("0100"))
    )
    assert few.where(F.col(BATCH_ORDER_COL) == NEWEST).count() < out_of_time.MIN_ROWS
    for features in (one_batch, few):
        with (
            training_frame(features, telco.id_column, telco.pipeline) as frame,
            out_of_time.out_of_time_frame(frame) as oot,
        ):
            assert oot is None


BATCH_KEY = "20261201T000000Z-newest.csv"
MODEL_ASSETS = ("model_logistic_regression", "model_voting")


def test_a_second_batch_gives_each_model_and_the_leaderboard_an_out_of_time_figure(
    spark: SparkSession, churn_home: Path, telco_csv: Path
) -> None:
    """End to end through the assets: the first 5,000 Telco customers as the spec's file, the
    rest dropped as a newer batch; LR and voting (reusing LR, fitting its other base) report
    the out-of-time figure in their metadata and MLflow runs, the leaderboard in a table."""
    settings = load_settings(
        {
            "CHURN_HOME": str(churn_home),
            "CHURN_PSEUDONYM_KEY": "test-pseudonym-key",
            "CHURN_TRAINING_PROFILE": "quick",
            "CHURN_SHUFFLE_PARTITIONS": "2",
            "CHURN_MODELS": "logistic_regression,voting",
        }
    )
    settings.export_library_env()  # this process reads the instance too (churn_home restores)
    with telco_csv.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    for path, part in (
        (churn_home / "data" / "telco_churn.csv", rows[:5000]),
        (churn_home / "batches" / BATCH_KEY, rows[5000:]),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows([header, *part])
    with runner.open_instance(settings) as instance:
        instance.add_dynamic_partitions(ingest_batches.name, [BASE_BATCH, BATCH_KEY])
    for batch in (BASE_BATCH, BATCH_KEY):
        assert runner.materialize_selection(settings, "raw_customers", partition_key=batch).success
    downstream = (
        "cleaned_customers",
        "quarantined_customers",
        "customer_features",
        "feature_pipeline",
        *MODEL_ASSETS,
        "model_leaderboard",
    )
    selection = " or ".join(f"key:{key}" for key in downstream)
    assert runner.materialize_selection(settings, selection).success

    with runner.open_instance(settings) as instance:
        meta = {
            key: instance.get_latest_materialization_event(
                dg.AssetKey(key)
            ).asset_materialization.metadata
            for key in (*MODEL_ASSETS, "model_leaderboard")
        }
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    for key in MODEL_ASSETS:
        figures = {k: v.value for k, v in meta[key].items() if k.startswith("oot_")}
        assert figures["oot_train_rows"] == 5000
        assert figures["oot_test_rows"] == len(rows) - 5000
        assert 0.75 < figures["oot_roc_auc"] < 0.95
        run = client.get_run(meta[key]["mlflow_run_id"].value)
        assert run.data.metrics["oot_roc_auc"] == pytest.approx(figures["oot_roc_auc"])
    table = meta["model_leaderboard"]["out_of_time"].value
    by_model = {r.data["model"]: r.data for r in table.records}
    assert set(by_model) == {"logistic_regression", "voting"}
    assert all(0.75 < r["oot_roc_auc"] < 0.95 for r in by_model.values())
