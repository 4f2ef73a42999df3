"""Churn models fit, beat chance, persist, never touch test rows and evaluate exactly."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow.spark
import numpy as np
import pandas as pd
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.feature import OneHotEncoder, StringIndexer, VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.core.evaluation import (
    choose_threshold,
    curves,
    evaluate,
    judge,
    plot_curves,
    ranking_metrics,
    roc_auc_by_group,
    thinned,
)
from churn_platform.core.models.ensembles import BASE_SUFFIX, platt, simplex_grid
from churn_platform.core.models.explain import feature_importance, vector_feature_names
from churn_platform.core.models.fitting import (
    LOG_NUMERIC,
    PROBABILITY_COL,
    FitResult,
    TrainingFrame,
    full_model,
    predict,
    training_frame,
)
from churn_platform.core.models.kinds import MODEL_KINDS, merged_params
from churn_platform.core.models.training import fit_model
from churn_platform_tests.conftest import REFIT, SAME_MODEL, SUMMATION_ORDER, assert_same_scores

ID = "customer_id"
FOLDS = 3
SEED = 11
# Every kind with its quick profile: the cheapest settings that still exercise each code path.
QUICK = {kind: merged_params(kind, quick=True) for kind in MODEL_KINDS}
QUICK_BASES = QUICK["stacking"]["bases"]
LR_GRID = {**QUICK["logistic_regression"], "regParam": [0.0, 0.3]}
OOF_COLUMNS = [ID, "label", "fold", PROBABILITY_COL]
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
def frame(features: DataFrame) -> Iterator[TrainingFrame]:
    with training_frame(features, ID) as cached:
        yield cached


@pytest.fixture(scope="module")
def fit_once(frame: TrainingFrame) -> Callable[[str, dict], FitResult]:
    """Each (kind, parameters) fitted once per module, on demand: the base models the
    ensembles reuse and the models tested on their own share fits where their settings agree."""
    cache: dict[tuple[str, str], FitResult] = {}

    def get(kind: str, params: dict) -> FitResult:
        key = (kind, repr(sorted(params.items())))
        if key not in cache:
            cache[key] = fit_model(kind, frame, params, seed=SEED)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def fitted(fit_once: Callable[[str, dict], FitResult]) -> Callable[[str], FitResult]:
    """Each model kind with its quick profile."""
    return lambda kind: fit_once(kind, QUICK[kind])


def _probabilities(model: PipelineModel, df: DataFrame) -> list[tuple[str, float]]:
    return [tuple(r) for r in model.transform(df).select(ID, PROBABILITY_COL).orderBy(ID).collect()]


def _by_id(table: pd.DataFrame, column: str = PROBABILITY_COL) -> list[tuple[str, float]]:
    return [tuple(r) for r in table.sort_values(ID)[[ID, column]].itertuples(index=False)]


def _test_rows(df: DataFrame) -> DataFrame:
    return df.filter(F.col("split") == "test")


def _assert_out_of_fold(oof: pd.DataFrame, features: DataFrame) -> None:
    """Every training row exactly once, with its assigned fold and label, and no test row."""
    train = features.filter("split = 'train'").select(ID, "fold", "label").collect()
    expected = {(r[ID], r["fold"], r["label"]) for r in train}
    rows = list(oof[[ID, "fold", "label"]].itertuples(index=False, name=None))
    assert len(rows) == len(set(rows)) == len(expected)
    assert set(rows) == expected


def test_training_frame_assembles_features_and_releases_its_caches(
    engineered: DataFrame, feature_pipeline: PipelineModel
) -> None:
    customers = _customers()
    cached_rdds = engineered.sparkSession.sparkContext._jsc.getPersistentRDDs
    before = len(cached_rdds())
    with training_frame(engineered, ID, feature_pipeline) as built:
        assert built.folds == tuple(range(FOLDS))
        assert built.train_rows == int((customers["split"] == "train").sum())
        assert built.test_rows == int((customers["split"] == "test").sum())
        assert built.train.is_cached and built.test.is_cached
        # The one read both splits were cut from is released once they are cached.
        assert len(cached_rdds()) == before + 2
        assert vector_feature_names(built.train)[:3] == ["x1", "x2", "x3"]
    assert not built.train.is_cached and not built.test.is_cached
    assert len(cached_rdds()) == before
    with pytest.raises(ValueError, match="no 'features' column"):
        with training_frame(engineered, ID):
            pass
    one_fold = engineered.withColumn("fold", F.lit(0))
    with pytest.raises(ValueError, match="k >= 2"):
        with training_frame(one_fold, ID, feature_pipeline):
            pass
    assert len(cached_rdds()) == before


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_kind_gives_probabilities_that_beat_chance(
    kind: str, features: DataFrame, frame: TrainingFrame, fitted: Callable[[str], FitResult]
) -> None:
    result = fitted(kind)
    scored = result.model.transform(_test_rows(features))
    assert scored.columns == [*features.columns, PROBABILITY_COL]
    assert dict(scored.dtypes)[PROBABILITY_COL] == "double"
    low, high, nulls = scored.agg(
        F.min(PROBABILITY_COL), F.max(PROBABILITY_COL), F.count_if(F.col(PROBABILITY_COL).isNull())
    ).first()
    assert 0.0 <= low <= high <= 1.0 and nulls == 0
    test = predict(result.model, frame)
    assert sorted(test[ID]) == sorted(r[ID] for r in _test_rows(features).collect())
    assert evaluate(test["label"], test[PROBABILITY_COL], 0.5)["roc_auc"] > 0.7
    assert evaluate(result.oof["label"], result.oof[PROBABILITY_COL], 0.5)["roc_auc"] > 0.7
    _assert_out_of_fold(result.oof, features)
    assert list(result.oof.columns) == OOF_COLUMNS


def _hand_fold_predictions(
    features: DataFrame, params: dict, fold: int
) -> list[tuple[str, int, float]]:
    """(id, label, P(churn)) of fold `fold`'s rows from a logistic regression fitted by hand
    on the other training folds only."""
    train = features.where((F.col("split") == "train") & (F.col("fold") != fold))
    held_out = features.where((F.col("split") == "train") & (F.col("fold") == fold))
    # logNumeric is the platform's switch, off here: the same plain regression Spark fits.
    spark_params = {k: v for k, v in params.items() if k != LOG_NUMERIC}
    model = LogisticRegression(featuresCol="features", labelCol="label", **spark_params).fit(train)
    rows = model.transform(held_out).select(ID, "label", "probability").collect()
    return sorted((r[ID], int(r["label"]), float(r["probability"][1])) for r in rows)


def test_grid_winner_has_the_best_mean_fold_auc_and_its_fold_models_give_the_oof(
    features: DataFrame, fit_once: Callable[[str, dict], FitResult]
) -> None:
    """Each candidate's CV score is its mean fold ROC-AUC; the winner's fold models, each
    fitted without its fold, are the out-of-fold predictions."""
    result = fit_once("logistic_regression", LR_GRID)
    by_hand = {}
    for reg in LR_GRID["regParam"]:
        folds = [
            _hand_fold_predictions(features, {**LR_GRID, "regParam": reg}, f) for f in range(FOLDS)
        ]
        auc = np.mean(
            [_brute_force_auc([p for *_, p in rows], [y for _, y, _ in rows]) for rows in folds]
        )
        by_hand[f"regParam={reg}"] = (float(auc), [row for rows in folds for row in rows])
    assert result.cv == pytest.approx({label: auc for label, (auc, _) in by_hand.items()}, **REFIT)
    winner = max(by_hand, key=lambda label: by_hand[label][0])
    assert f"regParam={result.params['regParam']}" == winner
    expected = sorted(by_hand[winner][1])
    oof = sorted(result.oof[[ID, "label", PROBABILITY_COL]].itertuples(index=False, name=None))
    assert_same_scores(oof, expected, REFIT)


def test_grid_search_resolves_to_one_value_per_parameter_and_lists_every_candidate(
    fitted: Callable[[str], FitResult],
) -> None:
    tuned = fitted("gbt_tuned")
    assert tuned.params["maxDepth"] in (2, 3)
    assert set(tuned.cv) == {"maxDepth=2", "maxDepth=3"}
    assert tuned.cv[f"maxDepth={tuned.params['maxDepth']}"] == max(tuned.cv.values())
    assert fitted("decision_tree").cv == {}


def test_early_stopping_stops_each_fold_on_its_held_out_fold_and_refits_with_their_mean_rounds(
    features: DataFrame, frame: TrainingFrame, fit_once: Callable[[str, dict], FitResult]
) -> None:
    """Each fold model boosts on the other folds until its held-out fold's loss stops improving,
    and gives that fold's out-of-fold predictions; the final model gets their mean rounds."""
    params = {
        "maxIter": 40,
        "maxDepth": 3,
        "stepSize": 0.5,
        "validationTol": 0.05,
        "subsamplingRate": 1.0,
    }
    result = fit_once("gbt", {**params, "earlyStopping": True})
    train = frame.train  # the same rows in the same partitions: stopping is a sharp decision
    rounds, by_hand = [], []
    for fold in range(FOLDS):
        model = GBTClassifier(
            featuresCol="features",
            labelCol="label",
            seed=SEED,
            **params,
            validationIndicatorCol="held_out",
        ).fit(train.withColumn("held_out", F.col("fold") == fold))
        rounds.append(len(model.trees))
        rows = model.transform(train.where(F.col("fold") == fold)).collect()
        by_hand += [(r[ID], float(r["probability"][1])) for r in rows]
    assert max(rounds) < params["maxIter"]
    assert result.params["maxIter"] == round(float(np.mean(rounds)))
    assert len(result.model.stages[0].trees) == result.params["maxIter"]
    assert_same_scores(_by_id(result.oof), sorted(by_hand), REFIT)
    with pytest.raises(ValueError, match="boosting"):
        fit_model("decision_tree", frame, {"earlyStopping": True})


def test_stacking_meta_model_learns_only_from_out_of_fold_base_predictions(
    features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    """The meta-model's inputs are each base's OOF predictions, and the stack's own OOF
    prediction of fold f comes from a meta-model fitted without fold f."""
    result = fitted("stacking")
    assert result.base_oof is not None
    _assert_out_of_fold(result.base_oof, features)
    base_cols = [base + BASE_SUFFIX for base in QUICK_BASES]
    assert set(result.base_oof.columns) == {ID, "fold", "label", *base_cols}
    for base, column in zip(QUICK_BASES, base_cols, strict=True):
        own_oof = fitted(base).oof
        assert_same_scores(_by_id(result.base_oof, column), _by_id(own_oof), REFIT)
    importance = dict(feature_importance(result.model, []))
    assert set(importance) == set(QUICK_BASES)

    spark = features.sparkSession
    clipped = {c: F.least(F.greatest(F.col(c), F.lit(1e-6)), F.lit(1 - 1e-6)) for c in base_cols}
    logits = {c + "_logit": F.log(p / (1 - p)) for c, p in clipped.items()}
    meta = VectorAssembler(inputCols=list(logits), outputCol="meta").transform(
        spark.createDataFrame(result.base_oof).withColumns(logits)
    )
    regression = LogisticRegression(
        featuresCol="meta", labelCol="label", regParam=QUICK["stacking"]["regParam"]
    )
    by_hand = []
    for fold in range(FOLDS):
        head = regression.fit(meta.where(F.col("fold") != fold))
        rows = head.transform(meta.where(F.col("fold") == fold)).select(ID, "probability")
        by_hand += [(r[ID], float(r["probability"][1])) for r in rows.collect()]
    assert_same_scores(_by_id(result.oof), sorted(by_hand), REFIT)


def test_stacking_ignores_test_rows_entirely(
    features: DataFrame, fitted: Callable[[str], FitResult]
) -> None:
    """Flipping every test row's label leaves the fitted stack unchanged."""
    scrambled = features.withColumn(
        "label", F.when(F.col("split") == "test", 1 - F.col("label")).otherwise(F.col("label"))
    )
    with training_frame(scrambled, ID) as other:
        refit = fit_model("stacking", other, QUICK["stacking"], seed=SEED)
    original = fitted("stacking")
    assert_same_scores(
        _probabilities(refit.model, features), _probabilities(original.model, features), REFIT
    )
    assert_same_scores(_by_id(refit.oof), _by_id(original.oof), REFIT)


def test_voting_weights_are_a_convex_combination(fitted: Callable[[str], FitResult]) -> None:
    weights = fitted("voting").params["weights"]
    step = QUICK["voting"]["weightStep"]
    assert set(weights) == set(QUICK_BASES)
    assert all(w >= 0 and math.isclose(w / step, round(w / step)) for w in weights.values())
    # Multiples of weightStep: their floating-point sum is 1 only up to rounding.
    assert math.isclose(sum(weights.values()), 1.0, abs_tol=1e-12)
    kept = dict(feature_importance(fitted("voting").model, []))
    assert kept == {b: w for b, w in weights.items() if w > 0}


# Stacking and voting share the reuse code; mixing reused and refitted bases is checked once.
@pytest.mark.parametrize(
    ("kind", "reused"),
    [
        ("stacking", tuple(QUICK_BASES)),
        ("voting", tuple(QUICK_BASES)),
        ("voting", ("decision_tree",)),
    ],
)
def test_ensemble_reusing_fitted_bases_matches_fitting_them_itself(
    kind: str,
    reused: tuple[str, ...],
    features: DataFrame,
    frame: TrainingFrame,
    fitted: Callable[[str], FitResult],
) -> None:
    """Handing an ensemble the base assets' fits and OOF predictions changes nothing but cost."""
    bases = {base: fitted(base).as_base() for base in reused}
    again = fit_model(kind, frame, QUICK[kind], seed=SEED, fitted_bases=bases)
    own = fitted(kind)
    assert again.params["reused_bases"] == sorted(reused)
    assert own.params["reused_bases"] == []
    assert again.params["base_params"] == own.params["base_params"]
    assert again.params["weights"] == pytest.approx(own.params["weights"], **REFIT)
    assert_same_scores(
        _probabilities(again.model, features), _probabilities(own.model, features), REFIT
    )
    assert_same_scores(_by_id(again.oof), _by_id(own.oof), REFIT)
    _assert_out_of_fold(again.oof, features)


def test_same_seed_reproduces_probabilities_and_metrics(
    features: DataFrame, frame: TrainingFrame, fitted: Callable[[str], FitResult]
) -> None:
    """Bagged trees draw bootstrap samples: the seed alone fixes them."""
    first = fitted("bagged_trees")
    again = fit_model("bagged_trees", frame, QUICK["bagged_trees"], seed=SEED)
    assert_same_scores(
        _probabilities(again.model, features), _probabilities(first.model, features), REFIT
    )
    before, after = predict(first.model, frame), predict(again.model, frame)
    before = evaluate(before["label"], before[PROBABILITY_COL], 0.5)
    after = evaluate(after["label"], after[PROBABILITY_COL], 0.5)
    assert [after[k] for k in COUNTS] == [before[k] for k in COUNTS]
    assert after == pytest.approx(before, **REFIT)
    assert_same_scores(_by_id(again.oof), _by_id(first.oof), REFIT)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_full_model_mlflow_round_trip_scores_and_explains_as_before(
    kind: str,
    tmp_path: Path,
    engineered: DataFrame,
    features: DataFrame,
    feature_pipeline: PipelineModel,
    fitted: Callable[[str], FitResult],
) -> None:
    """The model as it is logged and served (feature pipeline + fit), saved by MLflow's Spark
    flavor (Spark's own PipelineModel writer underneath) and loaded back, scores engineered
    columns and explains itself exactly as the fit did."""
    fit = fitted(kind).model
    model = full_model(feature_pipeline, fit)
    path = str(tmp_path / "mlflow_model")
    mlflow.spark.save_model(model, path, pip_requirements=PIP_REQUIREMENTS)
    loaded = mlflow.spark.load_model(path)
    assert isinstance(loaded, PipelineModel)
    scores = _probabilities(model, engineered)
    assert_same_scores(_probabilities(loaded, engineered), scores, SAME_MODEL)
    assert_same_scores(scores, _probabilities(fit, features), SAME_MODEL)
    names = vector_feature_names(features)
    assert_same_scores(
        feature_importance(loaded, names), feature_importance(fit, names), SAME_MODEL
    )


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


def test_unknown_kind_parameter_and_bases_fail_loudly(frame: TrainingFrame) -> None:
    with pytest.raises(ValueError, match="unknown model kind"):
        fit_model("svm", frame)
    with pytest.raises(ValueError, match="unknown Spark parameter"):
        fit_model("decision_tree", frame, {"numTrees": 3})
    with pytest.raises(ValueError, match="not grids"):
        fit_model("bagged_lr", frame, {"regParam": [0.01, 0.1]})
    with pytest.raises(ValueError, match="bases must be"):
        fit_model("stacking", frame, {"bases": ["logistic_regression", "stacking"]})


def _confusion(scores: list[float], labels: list[int], threshold: float) -> tuple[int, ...]:
    tp = sum(s >= threshold and y == 1 for s, y in zip(scores, labels, strict=True))
    fp = sum(s >= threshold and y == 0 for s, y in zip(scores, labels, strict=True))
    fn = sum(s < threshold and y == 1 for s, y in zip(scores, labels, strict=True))
    tn = len(scores) - tp - fp - fn
    return tp, fp, tn, fn


def _brute_force_auc(scores: list[float], labels: list[int]) -> float:
    """Mann-Whitney over every (churner, non-churner) pair; ties count one half."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _brute_force_metrics(scores: list[float], labels: list[int], threshold: float) -> dict:
    average_precision, last_recall = 0.0, 0.0
    for cut in sorted(set(scores), reverse=True):
        tp, fp, _, _ = _confusion(scores, labels, cut)
        recall = tp / sum(labels)
        average_precision += (recall - last_recall) * tp / (tp + fp)
        last_recall = recall
    tp, fp, tn, fn = _confusion(scores, labels, threshold)
    return {
        "accuracy": (tp + tn) / len(scores),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "roc_auc": _brute_force_auc(scores, labels),
        "pr_auc": average_precision,
        "brier": sum((s - y) ** 2 for s, y in zip(scores, labels, strict=True)) / len(scores),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _assert_metrics(metrics: dict, expected: dict) -> None:
    assert metrics.keys() >= expected.keys()
    for name, value in expected.items():
        close = value if name in COUNTS else pytest.approx(value, **SUMMATION_ORDER)
        assert metrics[name] == close, name


def _tied_predictions(rows: int, seed: int) -> tuple[list[float], list[int]]:
    """Scores rounded to two decimals: many ties, within and across the classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    scores = np.round(np.clip(0.3 * labels + rng.uniform(0, 0.7, rows), 0, 1), 2)
    return scores.tolist(), labels.tolist()


def test_evaluate_matches_brute_force_with_ties() -> None:
    scores = [0.9, 0.8, 0.8, 0.7, 0.6, 0.6, 0.6, 0.4, 0.3, 0.3, 0.2, 0.1]
    labels = [1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0]
    metrics = evaluate(labels, scores, threshold=0.6)
    expected = _brute_force_metrics(scores, labels, 0.6)
    assert metrics.keys() == expected.keys()
    _assert_metrics(metrics, expected)


def test_evaluate_is_exact_on_many_tied_scores() -> None:
    scores, labels = _tied_predictions(1500, seed=3)
    _assert_metrics(evaluate(labels, scores, 0.5), _brute_force_metrics(scores, labels, 0.5))


def test_ranking_metrics_are_undefined_with_one_class() -> None:
    auc, average_precision = ranking_metrics([1, 1, 1], [0.2, 0.5, 0.9])
    assert math.isnan(auc) and math.isnan(average_precision)
    with pytest.raises(ValueError, match="equal-length"):
        evaluate([1, 0], [0.5], 0.5)


def test_roc_auc_by_group_matches_brute_force_per_fold() -> None:
    scores, labels = _tied_predictions(600, seed=5)
    folds = np.random.default_rng(6).integers(0, 4, 600).tolist()
    by_fold = roc_auc_by_group(labels, scores, folds)
    assert set(by_fold) == set(folds)
    for fold, auc in by_fold.items():
        members = [i for i, f in enumerate(folds) if f == fold]
        expected = _brute_force_auc([scores[i] for i in members], [labels[i] for i in members])
        assert auc == pytest.approx(expected, **SUMMATION_ORDER), fold


def test_judge_takes_the_threshold_out_of_fold_and_the_metrics_from_the_test_rows() -> None:
    oof_scores, oof_labels = _tied_predictions(300, seed=8)
    folds = [i % FOLDS for i in range(300)]
    test_scores, test_labels = _tied_predictions(200, seed=9)
    oof = {"label": oof_labels, "churn_probability": oof_scores, "fold": folds}
    test = {"label": test_labels, "churn_probability": test_scores}
    threshold, value, metrics = judge(oof, test, "f1")

    def f1(t: float) -> float:
        return _brute_force_metrics(oof_scores, oof_labels, t)["f1"]

    best = max(set(oof_scores), key=lambda t: (f1(t), t))
    assert (threshold, value) == (best, pytest.approx(f1(best), **SUMMATION_ORDER))
    expected = _brute_force_metrics(test_scores, test_labels, threshold)
    expected["cv_roc_auc_mean"] = np.mean(
        [
            _brute_force_auc(
                [s for s, f in zip(oof_scores, folds, strict=True) if f == fold],
                [y for y, f in zip(oof_labels, folds, strict=True) if f == fold],
            )
            for fold in range(FOLDS)
        ]
    )
    _assert_metrics(metrics, expected)
    flipped = {**test, "label": [1 - y for y in test_labels]}
    assert judge(oof, flipped, "f1")[0] == threshold


def test_choose_threshold_maximises_f1_on_a_hand_checked_example() -> None:
    # Sorted by score: 0.9:1 0.8:1 0.7:0 0.6:1 0.4:0 0.3:0 0.2:1. Cutting at 0.6 catches three of
    # four churners with one false alarm: F1 = 2*3 / (2*3 + 1 + 1) = 0.75, the best cut.
    scores = [0.2, 0.9, 0.4, 0.6, 0.8, 0.3, 0.7]
    labels = [1, 1, 0, 1, 1, 0, 0]
    threshold, value = choose_threshold(labels, scores, strategy="f1")
    assert (threshold, value) == (0.6, 0.75)
    f1 = {t: _brute_force_metrics(scores, labels, t)["f1"] for t in scores}
    assert value == pytest.approx(max(f1.values()))


def test_choose_threshold_for_profit_matches_brute_force() -> None:
    scores = [0.2, 0.9, 0.4, 0.6, 0.8, 0.3, 0.7, 0.5]
    labels = [1, 1, 0, 1, 1, 0, 0, 0]

    def profit(t: float, missed: float, offer: float) -> float:
        tp, fp, _, _ = _confusion(scores, labels, t)
        return missed * tp - offer * (tp + fp)

    threshold, value = choose_threshold(
        labels, scores, "profit", cost_missed_churner=100, cost_retention_offer=40
    )
    best = max(scores, key=lambda t: (profit(t, 100, 40), t))
    assert (threshold, value) == (best, profit(best, 100, 40))
    threshold, value = choose_threshold(
        labels, scores, "profit", cost_missed_churner=10, cost_retention_offer=40
    )
    assert threshold > max(scores) and value == 0.0
    with pytest.raises(ValueError, match="CHURN_COST_MISSED_CHURNER"):
        choose_threshold(labels, scores, "profit")


def test_curves_give_the_same_auc_as_the_metrics() -> None:
    """The curves' AUC (on the leaderboard and the ROC plot) is the test metric, to the bit."""
    for seed in range(5):
        scores, labels = _tied_predictions(2_000, seed=seed)
        assert curves(labels, scores).roc_auc == ranking_metrics(labels, scores)[0]


def test_thinned_curves_keep_their_ends_and_shape() -> None:
    x = np.linspace(0.0, 1.0, 100_001)
    y = np.sqrt(x)
    few_x, few_y = thinned((x, y), 2_000)
    assert len(few_x) == 2_000 and (few_x[0], few_x[-1]) == (0.0, 1.0)
    assert np.array_equal(few_y, np.sqrt(few_x)) and np.all(np.diff(few_x) > 0)
    short = (x[:10], y[:10])
    assert all(np.array_equal(a, b) for a, b in zip(thinned(short, 2_000), short, strict=True))


def test_plot_curves_writes_three_pngs(tmp_path: Path) -> None:
    scores, labels = _tied_predictions(300, seed=4)
    paths = plot_curves(curves(labels, scores), tmp_path / "curves")
    assert set(paths) == {"roc", "precision_recall", "calibration"}
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_simplex_grid_lists_every_weight_vector_once() -> None:
    grid = [tuple(w) for w in simplex_grid(3, 0.25)]
    expected = {(a / 4, b / 4, (4 - a - b) / 4) for a in range(5) for b in range(5) if a + b <= 4}
    # Quarters are exact in binary floating point: the vectors compare exactly.
    assert len(grid) == len(set(grid)) == len(expected)
    assert set(grid) == expected


def test_platt_recovers_a_known_calibration() -> None:
    """Probabilities whose true log-odds are 2 * logit(p) - 0.5 get slope 2 and intercept -0.5."""
    rng = np.random.default_rng(2)
    p = rng.uniform(0.02, 0.98, 50_000)
    truth = 1 / (1 + np.exp(-(2.0 * np.log(p / (1 - p)) - 0.5)))
    y = (rng.uniform(size=p.size) < truth).astype(float)
    slope, intercept = platt(p, y)
    assert slope == pytest.approx(2.0, abs=0.1)
    assert intercept == pytest.approx(-0.5, abs=0.1)
