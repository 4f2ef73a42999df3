"""Churn models fit, beat chance, persist, never touch test rows and evaluate exactly."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import mlflow.spark
import numpy as np
import pandas as pd
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import OneHotEncoder, StringIndexer, VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.modeling import (
    MODEL_KINDS,
    PROBABILITY_COL,
    BaseFit,
    FitResult,
    choose_threshold,
    evaluate,
    evaluate_fit,
    feature_importance,
    fit_model,
    full_model,
    out_of_fold_predictions,
    plot_curves,
    roc_auc_by_group,
    train_model,
    vector_feature_names,
)
from churn_platform_tests.conftest import REFIT, SAME_MODEL, SUMMATION_ORDER, assert_same_scores

ID = "customer_id"
FOLDS = 3
# Ensembles over a linear and a tree model: every ensemble code path, at two base fits each.
SMALL_BASES = {
    "logistic_regression": {"regParam": 0.01, "maxIter": 15},
    "random_forest": {"numTrees": 8, "maxDepth": 4},
}
SMALL_PARAMS: dict[str, dict] = {
    "logistic_regression": {"regParam": [0.0, 0.01], "maxIter": 15},
    "decision_tree": {"maxDepth": 4, "minInstancesPerNode": 5},
    "random_forest": {"numTrees": 8, "maxDepth": 4},
    "gbt": {"maxIter": 4, "maxDepth": 2, "stepSize": 0.3},
    "gbt_tuned": {"maxIter": 3, "maxDepth": [2, 3], "stepSize": 0.3},
    "bagged_lr": {"numModels": 2, "maxIter": 15},
    "bagged_trees": {"numModels": 2, "maxDepth": 4},
    "stacking": {"bases": list(SMALL_BASES), "base_params": SMALL_BASES},
    "voting": {"bases": list(SMALL_BASES), "base_params": SMALL_BASES, "weightStep": 0.1},
}
PIP_REQUIREMENTS = ["pyspark==4.3.0"]
# The decisions at a threshold: compared exactly, unlike the metrics computed from them.
COUNTS = ("tp", "fp", "tn", "fn")


def _customers(rows: int = 480, seed: int = 7) -> pd.DataFrame:
    """An engineered customer table with a known signal, a test split and stratified folds."""
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.uniform(0, 1, rows), rng.normal(size=rows), rng.normal(size=rows)
    plan = rng.choice(["basic", "plus", "premium"], size=rows)
    logit = -0.5 - 2.5 * x1 + 1.5 * x2 + 1.5 * (x3 > 0.5) + 1.0 * (plan == "basic")
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype(int)
    split = np.where(rng.uniform(size=rows) < 0.25, "test", "train")
    fold = np.full(rows, -1)
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero((label == value) & (split == "train")))
        fold[members] = np.arange(len(members)) % FOLDS
    return pd.DataFrame(
        {
            ID: [f"c{i:04d}" for i in range(rows)],
            "x1": x1,
            "x2": x2,
            "x3": x3,
            "plan": plan,
            "label": label,
            "split": split,
            "fold": fold,
        }
    )


@pytest.fixture(scope="module")
def engineered(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(_customers()).cache()


@pytest.fixture(scope="module")
def feature_pipeline(engineered: DataFrame) -> PipelineModel:
    return Pipeline(
        stages=[
            StringIndexer(inputCol="plan", outputCol="plan_index", stringOrderType="alphabetAsc"),
            OneHotEncoder(inputCol="plan_index", outputCol="plan_onehot"),
            VectorAssembler(inputCols=["x1", "x2", "x3", "plan_onehot"], outputCol="features"),
        ]
    ).fit(engineered)


@pytest.fixture(scope="module")
def features(engineered: DataFrame, feature_pipeline: PipelineModel) -> DataFrame:
    columns = [ID, "label", "split", "fold", "features"]
    return feature_pipeline.transform(engineered).select(*columns).cache()


@pytest.fixture(scope="module")
def fit_once(features: DataFrame) -> Callable[[str, dict], FitResult]:
    """Each (kind, parameters) fitted once per module, on demand: the base models the
    ensembles reuse and the models tested on their own share fits where their settings agree."""
    cache: dict[tuple[str, str], FitResult] = {}

    def get(kind: str, params: dict) -> FitResult:
        key = (kind, repr(sorted(params.items())))
        if key not in cache:
            cache[key] = fit_model(kind, features, params, seed=11, id_col=ID)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def fitted(fit_once: Callable[[str, dict], FitResult]) -> Callable[[str], FitResult]:
    """Each model kind with the small settings of SMALL_PARAMS."""
    return lambda kind: fit_once(kind, SMALL_PARAMS[kind])


@pytest.fixture(scope="module")
def base_fits(fit_once: Callable[[str, dict], FitResult]) -> Callable[[str], BaseFit]:
    """Base models fitted as the base model assets do, for ensembles to reuse."""

    def get(kind: str) -> BaseFit:
        result = fit_once(kind, SMALL_BASES[kind])
        return BaseFit(result.model, result.oof, result.params)

    return get


def _probabilities(model: PipelineModel, df: DataFrame) -> list[tuple[str, float]]:
    return [tuple(r) for r in model.transform(df).select(ID, PROBABILITY_COL).orderBy(ID).collect()]


def _test_rows(df: DataFrame) -> DataFrame:
    return df.filter(F.col("split") == "test")


def _assert_out_of_fold(oof: DataFrame, features: DataFrame) -> None:
    """Every training row exactly once, with the fold it was assigned, and no test row."""
    expected = {(r[ID], r["fold"]) for r in features.filter("split = 'train'").collect()}
    rows = [(r[ID], r["fold"]) for r in oof.select(ID, "fold").collect()]
    assert len(rows) == len(set(rows)) == len(expected)
    assert set(rows) == expected


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_kind_gives_probabilities_that_beat_chance(
    kind: str, features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    result = fitted(kind)
    scored = result.model.transform(_test_rows(features))
    assert scored.columns == [*features.columns, PROBABILITY_COL]
    assert dict(scored.dtypes)[PROBABILITY_COL] == "double"
    low, high, nulls = scored.agg(
        F.min(PROBABILITY_COL), F.max(PROBABILITY_COL), F.count_if(F.col(PROBABILITY_COL).isNull())
    ).first()
    assert 0.0 <= low <= high <= 1.0 and nulls == 0
    assert evaluate(scored, 0.5)["roc_auc"] > 0.7
    assert evaluate(result.oof, 0.5)["roc_auc"] > 0.7
    _assert_out_of_fold(result.oof, features)
    assert result.oof.columns == [ID, "fold", "label", PROBABILITY_COL]


def test_grid_search_resolves_to_one_value_per_parameter(
    fitted: Callable[[str], FitResult],
) -> None:
    assert fitted("logistic_regression").params["regParam"] in (0.0, 0.01)
    assert fitted("gbt_tuned").params["maxDepth"] in (2, 3)


def test_stacking_meta_model_learns_only_from_out_of_fold_training_rows(
    features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    result = fitted("stacking")
    assert result.base_oof is not None
    _assert_out_of_fold(result.base_oof, features)
    base_cols = [f"{b}_probability" for b in SMALL_BASES]
    assert result.base_oof.columns == [ID, "fold", "label", *base_cols]
    importance = dict(feature_importance(result.model, []))
    assert set(importance) == set(SMALL_BASES)


def test_stacking_ignores_test_rows_entirely(
    features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    """Flipping every test row's label leaves the fitted stack unchanged."""
    scrambled = features.withColumn(
        "label", F.when(F.col("split") == "test", 1 - F.col("label")).otherwise(F.col("label"))
    )
    refit = train_model("stacking", scrambled, SMALL_PARAMS["stacking"], seed=11)
    original = fitted("stacking").model
    assert_same_scores(_probabilities(refit, features), _probabilities(original, features), REFIT)


def test_voting_weights_are_a_convex_combination(fitted: Callable[[str], FitResult]) -> None:
    weights = fitted("voting").params["weights"]
    assert set(weights) == set(SMALL_BASES)
    assert all(w >= 0 for w in weights.values())
    # Multiples of weightStep: their floating-point sum is 1 only up to rounding.
    assert math.isclose(sum(weights.values()), 1.0, abs_tol=1e-12)
    kept = dict(feature_importance(fitted("voting").model, []))
    assert kept == {b: w for b, w in weights.items() if w > 0}


# Stacking and voting share the reuse code; mixing reused and refitted bases is checked once.
@pytest.mark.parametrize(
    ("kind", "reused"),
    [
        ("stacking", tuple(SMALL_BASES)),
        ("voting", tuple(SMALL_BASES)),
        ("voting", ("random_forest",)),
    ],
)
def test_ensemble_reusing_fitted_bases_matches_fitting_them_itself(
    kind: str,
    reused: tuple[str, ...],
    features: DataFrame,
    fitted: Callable[[str], FitResult],
    base_fits: Callable[[str], BaseFit],
) -> None:
    """Handing an ensemble the base assets' fits and OOF predictions changes nothing but cost."""
    bases = {base: base_fits(base) for base in reused}
    again = fit_model(kind, features, SMALL_PARAMS[kind], seed=11, id_col=ID, fitted_bases=bases)
    own = fitted(kind)
    assert again.params["reused_bases"] == sorted(reused)
    assert own.params["reused_bases"] == []
    assert again.params["weights"] == pytest.approx(own.params["weights"], **REFIT)
    assert_same_scores(
        _probabilities(again.model, features), _probabilities(own.model, features), REFIT
    )
    _assert_out_of_fold(again.oof, features)


def test_same_seed_reproduces_probabilities_and_metrics(
    features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    for kind in ("bagged_trees",):
        first = fitted(kind)
        again = fit_model(kind, features, SMALL_PARAMS[kind], seed=11, id_col=ID)
        assert_same_scores(
            _probabilities(again.model, features), _probabilities(first.model, features), REFIT
        )
        before = evaluate(first.model.transform(_test_rows(features)), 0.5)
        after = evaluate(again.model.transform(_test_rows(features)), 0.5)
        assert [after[k] for k in COUNTS] == [before[k] for k in COUNTS]
        assert after == pytest.approx(before, **REFIT)
        oof_sort = [ID, PROBABILITY_COL]
        assert_same_scores(
            again.oof.select(*oof_sort).orderBy(ID).collect(),
            first.oof.select(*oof_sort).orderBy(ID).collect(),
            REFIT,
        )


def test_out_of_fold_predictions_cover_training_rows_only(features: DataFrame) -> None:
    oof = out_of_fold_predictions(
        "decision_tree", features, SMALL_PARAMS["decision_tree"], id_col=ID
    )
    _assert_out_of_fold(oof, features)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_pipeline_model_save_load_round_trip(
    kind: str, tmp_path: Path, features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    model = fitted(kind).model
    model.write().overwrite().save(str(tmp_path / kind))
    loaded = PipelineModel.load(str(tmp_path / kind))
    assert_same_scores(
        _probabilities(loaded, features), _probabilities(model, features), SAME_MODEL
    )
    names = vector_feature_names(features)
    assert_same_scores(
        feature_importance(loaded, names), feature_importance(model, names), SAME_MODEL
    )


@pytest.mark.parametrize("kind", ["stacking", "voting", "bagged_lr"])
def test_full_model_mlflow_round_trip_scores_engineered_columns(
    kind: str,
    tmp_path: Path,
    engineered: DataFrame,
    features: DataFrame,
    feature_pipeline: PipelineModel,
    fitted: Callable[[str], FitResult],
) -> None:
    model = full_model(feature_pipeline, fitted(kind).model)
    path = str(tmp_path / "mlflow_model")
    mlflow.spark.save_model(model, path, pip_requirements=PIP_REQUIREMENTS)
    loaded = mlflow.spark.load_model(path)
    scores = _probabilities(model, engineered)
    assert_same_scores(_probabilities(loaded, engineered), scores, SAME_MODEL)
    assert_same_scores(scores, _probabilities(fitted(kind).model, features), SAME_MODEL)


def _confusion(scores: list[float], labels: list[int], threshold: float) -> tuple[int, ...]:
    tp = sum(s >= threshold and y == 1 for s, y in zip(scores, labels, strict=True))
    fp = sum(s >= threshold and y == 0 for s, y in zip(scores, labels, strict=True))
    fn = sum(s < threshold and y == 1 for s, y in zip(scores, labels, strict=True))
    tn = len(scores) - tp - fp - fn
    return tp, fp, tn, fn


def _brute_force_metrics(scores: list[float], labels: list[int], threshold: float) -> dict:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    average_precision, last_recall = 0.0, 0.0
    for cut in sorted(set(scores), reverse=True):
        tp, fp, _, _ = _confusion(scores, labels, cut)
        recall = tp / len(pos)
        average_precision += (recall - last_recall) * tp / (tp + fp)
        last_recall = recall
    tp, fp, tn, fn = _confusion(scores, labels, threshold)
    return {
        "accuracy": (tp + tn) / len(scores),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "roc_auc": wins / (len(pos) * len(neg)),
        "pr_auc": average_precision,
        "brier": sum((s - y) ** 2 for s, y in zip(scores, labels, strict=True)) / len(scores),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _predictions(spark: SparkSession, scores: list[float], labels: list[int]) -> DataFrame:
    rows = [
        (f"r{i}", float(s), int(y)) for i, (s, y) in enumerate(zip(scores, labels, strict=True))
    ]
    return spark.createDataFrame(rows, [ID, PROBABILITY_COL, "label"])


def test_evaluate_matches_brute_force_with_ties(spark: SparkSession) -> None:
    scores = [0.9, 0.8, 0.8, 0.7, 0.6, 0.6, 0.6, 0.4, 0.3, 0.3, 0.2, 0.1]
    labels = [1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0]
    metrics = evaluate(_predictions(spark, scores, labels), threshold=0.6)
    expected = _brute_force_metrics(scores, labels, 0.6)
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        close = value if name in COUNTS else pytest.approx(value, **SUMMATION_ORDER)
        assert metrics[name] == close, name


def test_evaluate_is_exact_across_many_range_partitions(spark: SparkSession) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 1500).tolist()
    scores = np.round(np.clip(0.3 * np.array(labels) + rng.uniform(0, 0.7, 1500), 0, 1), 2)
    pred = _predictions(spark, scores.tolist(), labels).repartition(5)
    metrics = evaluate(pred, threshold=0.5)
    expected = _brute_force_metrics(scores.tolist(), labels, 0.5)
    for name in ("roc_auc", "pr_auc", "brier"):
        assert metrics[name] == pytest.approx(expected[name], **SUMMATION_ORDER), name
    assert [metrics[k] for k in COUNTS] == [expected[k] for k in COUNTS]


def test_roc_auc_by_group_matches_brute_force_per_fold(spark: SparkSession) -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 600).tolist()
    scores = np.round(np.clip(0.25 * np.array(labels) + rng.uniform(0, 0.75, 600), 0, 1), 2)
    folds = rng.integers(0, 4, 600).tolist()
    rows = [
        (f"r{i}", float(s), int(y), f)
        for i, (s, y, f) in enumerate(zip(scores, labels, folds, strict=True))
    ]
    pred = spark.createDataFrame(rows, [ID, PROBABILITY_COL, "label", "fold"]).repartition(3)
    by_fold = roc_auc_by_group(pred, "fold")
    assert set(by_fold) == set(folds)
    for fold, auc in by_fold.items():
        members = [i for i, f in enumerate(folds) if f == fold]
        expected = _brute_force_metrics(
            [float(scores[i]) for i in members], [labels[i] for i in members], 0.5
        )["roc_auc"]
        assert auc == pytest.approx(expected, **SUMMATION_ORDER), fold


def test_evaluate_fit_judges_out_of_fold_and_releases_what_it_cached(
    features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    """The threshold comes from the OOF predictions only, the metrics from the test rows."""
    fit = fitted("decision_tree")
    was_cached = fit.oof.is_cached
    judged = evaluate_fit(fit, _test_rows(features), ID)
    try:
        threshold, value = choose_threshold(fit.oof, "f1")
        folds = roc_auc_by_group(fit.oof, "fold")
        expected = evaluate(fit.model.transform(_test_rows(features)), threshold)
        expected["cv_roc_auc_mean"] = sum(folds.values()) / len(folds)
        chosen = (judged.threshold, judged.threshold_value)
        assert chosen == pytest.approx((threshold, value), **SAME_MODEL)
        assert [judged.metrics[k] for k in COUNTS] == [expected[k] for k in COUNTS]
        assert judged.metrics == pytest.approx(expected, **SAME_MODEL)
        assert judged.predictions.count() == _test_rows(features).count()
    finally:
        judged.predictions.unpersist()
    assert fit.oof.is_cached == was_cached


def test_choose_threshold_maximises_f1_on_a_hand_checked_example(spark: SparkSession) -> None:
    # Sorted by score: 0.9:1 0.8:1 0.7:0 0.6:1 0.4:0 0.3:0 0.2:1. Cutting at 0.6 catches three of
    # four churners with one false alarm: F1 = 2*3 / (2*3 + 1 + 1) = 0.75, the best cut.
    scores = [0.2, 0.9, 0.4, 0.6, 0.8, 0.3, 0.7]
    labels = [1, 1, 0, 1, 1, 0, 0]
    threshold, value = choose_threshold(_predictions(spark, scores, labels), strategy="f1")
    assert (threshold, value) == (0.6, 0.75)
    f1 = {t: _brute_force_metrics(scores, labels, t)["f1"] for t in scores}
    assert value == pytest.approx(max(f1.values()))


def test_choose_threshold_for_profit_matches_brute_force(spark: SparkSession) -> None:
    scores = [0.2, 0.9, 0.4, 0.6, 0.8, 0.3, 0.7, 0.5]
    labels = [1, 1, 0, 1, 1, 0, 0, 0]
    pred = _predictions(spark, scores, labels)

    def profit(t: float, missed: float, offer: float) -> float:
        tp, fp, _, _ = _confusion(scores, labels, t)
        return missed * tp - offer * (tp + fp)

    threshold, value = choose_threshold(
        pred, "profit", cost_missed_churner=100, cost_retention_offer=40
    )
    best = max(scores, key=lambda t: (profit(t, 100, 40), t))
    assert (threshold, value) == (best, profit(best, 100, 40))
    threshold, value = choose_threshold(
        pred, "profit", cost_missed_churner=10, cost_retention_offer=40
    )
    assert threshold > max(scores) and value == 0.0


def test_feature_importance_follows_the_simulated_signal(
    features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    names = vector_feature_names(features)
    assert names[:3] == ["x1", "x2", "x3"] and len(names) == 5
    assert all(name.startswith("plan_onehot_") for name in names[3:])
    coefficients = dict(feature_importance(fitted("logistic_regression").model, names))
    assert coefficients["x1"] < 0 < coefficients["x2"]
    for kind in ("random_forest", "bagged_trees", "gbt"):
        ranked = feature_importance(fitted(kind).model, names)
        values = [v for _, v in ranked]
        assert values == sorted(values, reverse=True) and min(values) >= 0
        assert {ranked[0][0], ranked[1][0]} <= {"x1", "x2", "x3"}


def test_plot_curves_writes_three_pngs(
    tmp_path: Path, features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    pred = fitted("gbt").model.transform(_test_rows(features))
    paths = plot_curves(pred, tmp_path / "curves")
    assert set(paths) == {"roc", "precision_recall", "calibration"}
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_unknown_kind_and_parameter_fail_loudly(features: DataFrame) -> None:
    with pytest.raises(ValueError, match="unknown model kind"):
        train_model("svm", features)
    with pytest.raises(ValueError, match="unknown Spark parameter"):
        train_model("decision_tree", features, {"numTrees": 3})
