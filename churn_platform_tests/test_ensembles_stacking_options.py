"""Stacking's options: a meta-learner that also sees the feature vector, and one that weights
the classes equally. Each is still cross-fitted on out-of-fold base predictions only (checked
against the same regression fitted by hand), scores from the feature vector alone and explains
itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import OneHotEncoder, StringIndexer, VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.core.models.ensembles import BASE_SUFFIX
from churn_platform.core.models.explain import feature_importance, vector_feature_names
from churn_platform.core.models.fitting import PROBABILITY_COL, FitResult, TrainingFrame
from churn_platform.core.models.fitting import training_frame as cached_frame
from churn_platform.core.models.kinds import merged_params
from churn_platform.core.models.training import fit_model
from churn_platform_tests.conftest import REFIT, SAME_MODEL, assert_same_scores
from churn_platform_tests.test_modeling import FOLDS, ID, SEED, _customers

STACKING = merged_params("stacking", quick=True)
BASES = STACKING["bases"]


@pytest.fixture(scope="module")
def features(spark: SparkSession) -> DataFrame:
    """test_modeling's simulated customers (fewer of them), one-hot plan and vector."""
    engineered = spark.createDataFrame(_customers(rows=360, seed=3))
    encode = [
        StringIndexer(inputCol="plan", outputCol="plan_index", stringOrderType="alphabetAsc"),
        OneHotEncoder(inputCol="plan_index", outputCol="plan_onehot"),
        VectorAssembler(inputCols=["x1", "x2", "x3", "plan_onehot"], outputCol="features"),
    ]
    vectors = Pipeline(stages=encode).fit(engineered).transform(engineered)
    return vectors.select(ID, "label", "split", "fold", "features").cache()


@pytest.fixture(scope="module")
def frame(features: DataFrame) -> Iterator[TrainingFrame]:
    with cached_frame(features, ID) as cached:
        yield cached


def _by_hand(
    result: FitResult, features: DataFrame, with_features: bool, weighted: bool
) -> list[tuple[str, float]]:
    """The stack's out-of-fold predictions recomputed: fold f's rows through a meta
    regression fitted on the other folds' OOF base log-odds (and features, and weights)."""
    assert result.base_oof is not None
    spark = features.sparkSession
    cols = [b + BASE_SUFFIX for b in BASES]
    clipped = {c: F.least(F.greatest(F.col(c), F.lit(1e-6)), F.lit(1 - 1e-6)) for c in cols}
    logits = {c + "_logit": F.log(p / (1 - p)) for c, p in clipped.items()}
    rows = spark.createDataFrame(result.base_oof).withColumns(logits)
    if with_features:
        rows = rows.join(features.select(ID, "features"), ID)
    positives = float(result.base_oof["label"].mean())
    rows = rows.withColumn(
        "w", F.when(F.col("label") == 1, 0.5 / positives).otherwise(0.5 / (1 - positives))
    )
    inputs = [*logits, "features"] if with_features else list(logits)
    meta = VectorAssembler(inputCols=inputs, outputCol="meta").transform(rows)
    regression = LogisticRegression(
        featuresCol="meta", labelCol="label", regParam=STACKING["regParam"]
    )
    if weighted:
        regression.setWeightCol("w")
    found = []
    for fold in range(FOLDS):
        head = regression.fit(meta.where(F.col("fold") != fold))
        scored = head.transform(meta.where(F.col("fold") == fold)).select(ID, "probability")
        found += [(r[ID], float(r["probability"][1])) for r in scored.collect()]
    return sorted(found)


def _oof(result: FitResult) -> list[tuple[str, float]]:
    table = result.oof.sort_values(ID)
    return list(table[[ID, PROBABILITY_COL]].itertuples(index=False, name=None))


def _scores(model: PipelineModel, df: DataFrame) -> list[tuple[str, float]]:
    return [tuple(r) for r in model.transform(df).select(ID, PROBABILITY_COL).orderBy(ID).collect()]


@pytest.mark.parametrize(
    ("with_features", "weighted"), [(True, False), (False, True), (True, True)]
)
def test_the_stacking_options_are_cross_fitted_on_out_of_fold_rows(
    with_features: bool,
    weighted: bool,
    features: DataFrame,
    frame: TrainingFrame,
    tmp_path: Path,
) -> None:
    params = {**STACKING, "metaFeatures": with_features}
    params["classWeight"] = "balanced" if weighted else "none"
    result = fit_model("stacking", frame, params, seed=SEED)

    assert_same_scores(_oof(result), _by_hand(result, features, with_features, weighted), REFIT)
    # The saved model scores from the feature vector alone, and loads back unchanged.
    model = result.model
    model.write().overwrite().save(str(tmp_path / "stack"))
    loaded = PipelineModel.load(str(tmp_path / "stack"))
    assert_same_scores(_scores(loaded, features), _scores(model, features), SAME_MODEL)
    assert set(model.transform(features).columns) == {*features.columns, PROBABILITY_COL}
    names = vector_feature_names(features)
    explained = dict(feature_importance(model, names))
    assert set(explained) == ({*BASES, *names} if with_features else set(BASES))
    assert result.params["weights"].keys() == set(BASES)


def test_balanced_weights_lift_the_minority_class_scores(frame: TrainingFrame) -> None:
    plain = fit_model("stacking", frame, STACKING, seed=SEED).oof
    weighted = fit_model("stacking", frame, {**STACKING, "classWeight": "balanced"}, seed=SEED).oof
    churn_rate = float(plain["label"].mean())
    assert churn_rate < 0.5
    # Equal class weights centre the predictions near one half instead of the churn rate.
    assert abs(float(plain[PROBABILITY_COL].mean()) - churn_rate) < 0.03
    assert float(weighted[PROBABILITY_COL].mean()) > churn_rate + 0.05
    with pytest.raises(ValueError, match="classWeight"):
        fit_model("stacking", frame, {**STACKING, "classWeight": "inverse"}, seed=SEED)
