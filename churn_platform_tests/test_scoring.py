"""Scoring for the retention team: who is scored, tiers, reason codes and unseen values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.classification import DecisionTreeClassifier, LogisticRegression
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform import etl
from churn_platform.config import DatasetSpec, ScorePopulationSpec, SourceSpec, load_spec
from churn_platform.core import cleaning, reasons, scoring, sources
from churn_platform.core.features import assign_split, engineer_features, fit_feature_pipeline
from churn_platform.core.models.fitting import PROBABILITY_COL
from churn_platform.core.models.stages import DropColumns, PositiveProbability
from churn_platform.settings import DEFAULT_SPEC


def _telco(spark: SparkSession, spec: DatasetSpec, path: Path) -> DataFrame:
    source = SourceSpec(name="customers", format="csv", path=str(path))
    return cleaning.clean_customers(
        sources.read_batch(spark, spec, (source,), "base", 0).frame, spec
    ).cleaned


def _champion(cleaned: DataFrame, spec: DatasetSpec, classifier) -> PipelineModel:
    """A model shaped like a logged champion: feature stages, classifier, P(churn)."""
    train = assign_split(engineer_features(cleaned, spec), spec).where(
        F.col(etl.SPLIT_COL) == "train"
    )
    numeric, categorical = etl.feature_roles(train.drop(etl.SPLIT_COL, etl.FOLD_COL), spec)
    features = fit_feature_pipeline(train, numeric, categorical)
    classifier.setFeaturesCol(etl.FEATURES_COL).setLabelCol(etl.LABEL_COL)
    classifier.setProbabilityCol("p_vec").setRawPredictionCol("raw").setPredictionCol("pred")
    fitted = classifier.fit(features.transform(train))
    positive = PositiveProbability(inputCol="p_vec", outputCol=PROBABILITY_COL)
    drop = DropColumns(columns=["p_vec", "raw", "pred"])
    return PipelineModel(stages=[*features.stages, fitted, positive, drop])


@pytest.fixture(scope="module")
def telco(spark: SparkSession, telco_csv: Path, tmp_path_factory) -> tuple[DatasetSpec, DataFrame]:
    spec = load_spec(DEFAULT_SPEC, tmp_path_factory.mktemp("home"))
    return spec, _telco(spark, spec, telco_csv).persist()


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, reasons.LOGIT_CLIP, 1 - reasons.LOGIT_CLIP)
    return np.log(p / (1 - p))


def _contributions(scores: scoring.Scores, model: PipelineModel, cleaned, spec) -> np.ndarray:
    transformed = model.transform(engineer_features(cleaned, spec))
    frame = reasons.with_contributions(transformed, scores.attribution).toPandas()
    columns = [c for c in frame.columns if c.startswith("contribution:")]
    return frame, frame[columns].to_numpy()


def test_linear_reasons_add_up_exactly_to_each_customers_log_odds(telco) -> None:
    spec, cleaned = telco
    model = _champion(cleaned, spec, LogisticRegression(regParam=0.01, maxIter=50))
    population = cleaned.where(scoring.population_filter(spec))
    train = assign_split(cleaned, spec).where(F.col(etl.SPLIT_COL) == "train")
    scores = scoring.score_customers(
        population, spec, model, ("churn-telco", "1", 0.35), scoring.ScoringPolicy(), train
    )
    assert scores.attribution.method == reasons.EXACT
    frame, parts = _contributions(scores, model, population, spec)
    p = frame[PROBABILITY_COL].to_numpy()
    exact = np.log(p / (1 - p))
    assert parts.sum(axis=1) + scores.attribution.baseline_log_odds == pytest.approx(
        exact, abs=1e-9
    )

    rows = {r[spec.id_column]: r for r in scores.frame.collect()}
    assert len(rows) == 5174  # the Telco customers who have not churned
    columns = [c.removeprefix("contribution:") for c in frame.columns if ":" in c]
    for i in range(0, len(frame), 500):
        customer = rows[frame[spec.id_column][i]]
        top = np.argsort(-np.abs(parts[i]))[:3]
        assert [r["feature"] for r in customer["reasons"]] == [columns[j] for j in top]
        assert [r["contribution"] for r in customer["reasons"]] == pytest.approx(parts[i][top])
        contract = frame["Contract"][i]
        shown = {r["feature"]: r["value"] for r in customer["reasons"]}
        assert shown.get("Contract", contract) == contract
    scores.release()


def test_a_tree_champion_is_explained_by_a_surrogate_with_its_true_fidelity(telco) -> None:
    spec, cleaned = telco
    model = _champion(cleaned, spec, DecisionTreeClassifier(maxDepth=4, seed=1))
    population = cleaned.where(scoring.population_filter(spec))
    scores = scoring.score_customers(
        population, spec, model, ("churn-telco", "2", 0.4), scoring.ScoringPolicy()
    )
    attribution = scores.attribution
    assert attribution.method == reasons.SURROGATE
    frame, parts = _contributions(scores, model, population, spec)
    champion = _log_odds(frame[PROBABILITY_COL].to_numpy())
    surrogate = parts.sum(axis=1) + attribution.baseline_log_odds
    r2 = 1 - ((champion - surrogate) ** 2).sum() / ((champion - champion.mean()) ** 2).sum()
    assert attribution.fidelity_r2 == pytest.approx(r2, abs=1e-6)
    assert attribution.fidelity_r2 > 0.5
    scores.release()


def test_tiers_follow_the_decision_threshold_and_the_contact_break_even() -> None:
    cuts = scoring.tier_cuts(0.35, scoring.ScoringPolicy())
    assert (cuts.high, cuts.medium) == (0.35, pytest.approx(0.1))
    # A medium cut above the high one is capped there: "medium" never outranks "high".
    custom = scoring.ScoringPolicy(tier_high_ratio=1.5, tier_medium_probability=0.9)
    cuts = scoring.tier_cuts(0.4, custom)
    assert (cuts.high, cuts.medium) == (pytest.approx(0.6), pytest.approx(0.6))


def test_only_customers_who_can_still_churn_are_scored(spark: SparkSession, tmp_path) -> None:
    spec = load_spec(DEFAULT_SPEC, tmp_path)
    rows = [("a", 0, "Month-to-month"), ("b", 1, "Month-to-month"), ("c", None, "Two year")]
    frame = spark.createDataFrame(rows, f"{spec.id_column} string, label int, Contract string")
    kept = frame.where(scoring.population_filter(spec)).select(spec.id_column).collect()
    assert sorted(r[0] for r in kept) == ["a", "c"]
    by_status = DatasetSpec(
        **{
            **{k: getattr(spec, k) for k in ("name", "sources", "id_column", "target")},
            "categorical": spec.categorical,
            "score_population": ScorePopulationSpec(column="Contract", values=("Two year",)),
        }
    )
    kept = frame.where(scoring.population_filter(by_status)).select(spec.id_column).collect()
    assert [r[0] for r in kept] == ["c"]


def test_unseen_category_values_are_marked_and_counted(telco) -> None:
    spec, cleaned = telco
    model = _champion(cleaned, spec, LogisticRegression(regParam=0.01, maxIter=20))
    sample = cleaned.where(F.col(etl.LABEL_COL) == 0).limit(20)
    odd = sample.withColumn(
        "Contract",
        F.when(
            F.col(spec.id_column) == sample.first()[spec.id_column], F.lit("Quarterly")
        ).otherwise(F.col("Contract")),
    )
    scores = scoring.score_customers(
        odd, spec, model, ("churn-telco", "1", 0.35), scoring.ScoringPolicy()
    )
    summary = scoring.summarize(scores)
    assert summary["rows"] == 20
    assert summary["unseen_by_column"]["Contract"] == 1
    assert summary["unseen_by_column"]["contract_payment"] == 1
    marked = [r["unseen_values"] for r in scores.frame.collect() if r["unseen_values"]]
    assert len(marked) == 1 and "Contract=Quarterly" in marked[0]
    scores.release()
