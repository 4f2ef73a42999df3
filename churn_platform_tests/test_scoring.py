"""Scoring for the retention team: the same probabilities as the logged model, who is scored,
tiers, reason codes, unseen values and the statistics observed by the one write."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.classification import (
    DecisionTreeClassifier,
    LogisticRegression,
    RandomForestClassifier,
)
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.config import DatasetSpec, ScorePopulationSpec, SourceSpec, load_spec
from churn_platform.core import attribution as stored_attribution
from churn_platform.core import cleaning, reasons, scoring, sources
from churn_platform.core.columns import FEATURES_COL, FOLD_COL, LABEL_COL, SPLIT_COL
from churn_platform.core.encoding import SLOTS_COL, read_encoding
from churn_platform.core.features import (
    assign_split,
    engineer_features,
    feature_roles,
    fit_feature_pipeline,
)
from churn_platform.core.models.ensembles import BASE_SUFFIX, voting_head
from churn_platform.core.models.fitting import PROBABILITY_COL, Part, assemble, numeric_slots
from churn_platform.core.models.stages import (
    DropColumns,
    PositiveProbability,
    RenameColumn,
    SignedLog,
)
from churn_platform.core.population import population_filter, population_labels
from churn_platform.settings import DEFAULT_SPEC
from churn_platform_tests.conftest import SAME_MODEL

# The new scoring path may differ from the logged pipeline only by summation order (issue 17).
SAME_PROBABILITY = 1e-9


def _telco(spark: SparkSession, spec: DatasetSpec, path: Path) -> DataFrame:
    source = SourceSpec(name="customers", format="csv", path=str(path))
    return cleaning.clean_customers(
        sources.read_batch(spark, spec, (source,), "base", 0).frame, spec
    ).cleaned


def _champion(
    cleaned: DataFrame, spec: DatasetSpec, classifier, log_numeric: bool = False
) -> PipelineModel:
    """A model shaped like a logged champion: feature stages, classifier, P(churn); with
    `log_numeric`, the numeric slots also on a log scale first (the default profile's LR)."""
    train = assign_split(engineer_features(cleaned, spec), spec).where(F.col(SPLIT_COL) == "train")
    numeric, categorical = feature_roles(train.drop(SPLIT_COL, FOLD_COL), spec)
    features = fit_feature_pipeline(train, numeric, categorical)
    rows = features.transform(train)
    before, temps = [], ["p_vec", "raw", "pred"]
    classifier.setFeaturesCol(FEATURES_COL).setLabelCol(LABEL_COL)
    if log_numeric:
        before = [SignedLog(inputCol=FEATURES_COL, outputCol="logged", slots=numeric_slots(rows))]
        rows, temps = before[0].transform(rows), [*temps, "logged"]
        classifier.setFeaturesCol("logged")
    classifier.setProbabilityCol("p_vec").setRawPredictionCol("raw").setPredictionCol("pred")
    fitted = classifier.fit(rows)
    positive = PositiveProbability(inputCol="p_vec", outputCol=PROBABILITY_COL)
    drop = DropColumns(columns=temps)
    return PipelineModel(stages=[*features.stages, *before, fitted, positive, drop])


def _voting(lr: PipelineModel, forest: PipelineModel, feature_stages: int) -> PipelineModel:
    """A soft-voting ensemble of two champions' classifiers, as core.models.ensembles builds."""
    bases = {"logistic_regression": lr, "random_forest": forest}
    parts = [
        Part(
            [
                *m.stages[feature_stages:],
                RenameColumn(inputCol=PROBABILITY_COL, outputCol=b + BASE_SUFFIX),
            ],
            [],
            b + BASE_SUFFIX,
        )
        for b, m in bases.items()
    ]
    head = voting_head(
        list(bases),
        {"logistic_regression": (1.1, -0.2), "random_forest": (0.8, 0.1)},
        {"logistic_regression": 0.6, "random_forest": 0.4},
    )
    ensemble = assemble(parts, head.stages, [*head.temp_cols, *(b + BASE_SUFFIX for b in bases)])
    return PipelineModel(stages=[*lr.stages[:feature_stages], *ensemble.stages])


@pytest.fixture(scope="module")
def telco(spark: SparkSession, telco_csv: Path, tmp_path_factory) -> tuple[DatasetSpec, DataFrame]:
    spec = load_spec(DEFAULT_SPEC, tmp_path_factory.mktemp("home"))
    return spec, _telco(spark, spec, telco_csv).persist()


@pytest.fixture(scope="module")
def lr_champion(telco) -> PipelineModel:
    spec, cleaned = telco
    return _champion(cleaned, spec, LogisticRegression(regParam=0.01, maxIter=50))


@pytest.fixture(scope="module")
def logged_lr_champion(telco) -> PipelineModel:
    spec, cleaned = telco
    return _champion(cleaned, spec, LogisticRegression(regParam=0.01, maxIter=50), True)


def _odd(cleaned: DataFrame, spec: DatasetSpec) -> DataFrame:
    """The customers with a few values the model never saw or must impute."""
    rank = F.pmod(F.xxhash64(F.col(spec.id_column)), F.lit(97))
    return cleaned.withColumns(
        {
            "Contract": F.when(rank == 1, F.lit("Quarterly")).otherwise(F.col("Contract")),
            "gender": F.when(rank == 2, F.lit(None).cast("string")).otherwise(F.col("gender")),
            "TotalCharges": F.when(rank == 3, F.lit(None).cast("double")).otherwise(
                F.col("TotalCharges")
            ),
        }
    )


def test_probabilities_equal_the_logged_pipelines_for_each_kind_of_model(
    telco, lr_champion, logged_lr_champion
):
    spec, cleaned = telco
    customers = _odd(cleaned, spec)
    forest = _champion(
        cleaned, spec, RandomForestClassifier(numTrees=10, maxDepth=5, seed=3, subsamplingRate=0.8)
    )
    count = read_encoding(lr_champion).stage_count
    models = {
        "lr": lr_champion,
        "lr with logged numbers": logged_lr_champion,
        "forest": forest,
        "voting": _voting(lr_champion, forest, count),
    }
    for name, model in models.items():
        today = model.transform(engineer_features(customers, spec)).select(
            spec.id_column, vector_to_array(FEATURES_COL).alias("vector"), PROBABILITY_COL
        )
        new = scoring.probabilities(customers, spec, model).select(
            spec.id_column, F.col(PROBABILITY_COL).alias("new")
        )
        slots = read_encoding(model).slotted(engineer_features(customers, spec))
        both = today.join(new, spec.id_column).join(slots, spec.id_column).toPandas()
        assert len(both) == 7043, name
        # The vector the classifier reads is the pipeline's own, slot for slot (NaN included).
        np.testing.assert_array_equal(np.stack(both["vector"]), np.stack(both[SLOTS_COL]))
        difference = np.abs(both[PROBABILITY_COL] - both["new"]).max()
        assert difference <= SAME_PROBABILITY, (name, difference)


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, reasons.LOGIT_CLIP, 1 - reasons.LOGIT_CLIP)
    return np.log(p / (1 - p))


def _contributions(
    attribution: stored_attribution.Attribution, model: PipelineModel, cleaned, spec
):
    """Contributions computed the long way: on the logged pipeline's vector."""
    transformed = model.transform(engineer_features(cleaned, spec))
    frame = reasons.with_contributions(transformed, attribution).toPandas()
    columns = [c for c in frame.columns if c.startswith("contribution:")]
    return frame, frame[columns].to_numpy()


def test_linear_reasons_add_up_exactly_to_each_customers_log_odds(
    telco, logged_lr_champion
) -> None:
    """Also with the default profile's log-scale numbers: a column's reason is the sum of its
    slot's and its log's terms."""
    spec, cleaned = telco
    model = logged_lr_champion
    train = assign_split(cleaned, spec).where(F.col(SPLIT_COL) == "train")
    scores = scoring.score_customers(
        cleaned,
        spec,
        model,
        ("churn-telco", "1", 0.35),
        scoring.ScoringPolicy(),
        train,
        population=population_filter(spec),
    )
    assert scores.attribution.method == stored_attribution.EXACT
    rows = {r[spec.id_column]: r for r in scores.frame.collect()}
    summary = scores.summary()
    assert len(rows) == summary["rows"] == 5174  # the Telco customers who have not churned
    assert summary["excluded"] == 1869
    assert sum(summary["tiers"].values()) == 5174
    assert summary["predicted_churners"] == summary["tiers"]["high"]

    population = cleaned.where(population_filter(spec))
    frame, parts = _contributions(scores.attribution, model, population, spec)
    p = frame[PROBABILITY_COL].to_numpy()
    exact = np.log(p / (1 - p))
    assert parts.sum(axis=1) + scores.attribution.baseline_log_odds == pytest.approx(
        exact, abs=1e-9
    )
    columns = [c.removeprefix("contribution:") for c in frame.columns if ":" in c]
    for i in range(0, len(frame), 500):
        customer = rows[frame[spec.id_column][i]]
        top = np.argsort(-np.abs(parts[i]))[:3]
        assert [r["feature"] for r in customer["reasons"]] == [columns[j] for j in top]
        assert [r["contribution"] for r in customer["reasons"]] == pytest.approx(parts[i][top])
        contract = frame["Contract"][i]
        shown = {r["feature"]: r["value"] for r in customer["reasons"]}
        assert shown.get("Contract", contract) == contract


@pytest.fixture(scope="module")
def tree_champion(telco) -> PipelineModel:
    spec, cleaned = telco
    return _champion(cleaned, spec, DecisionTreeClassifier(maxDepth=4, seed=1))


def test_a_tree_champion_is_explained_by_a_surrogate_with_its_true_fidelity(
    telco, tree_champion
) -> None:
    spec, cleaned = telco
    model = tree_champion
    population = cleaned.where(population_filter(spec))
    scores = scoring.score_customers(
        population, spec, model, ("churn-telco", "2", 0.4), scoring.ScoringPolicy()
    )
    assert scores.attribution.method == stored_attribution.SURROGATE
    scores.frame.write.format("noop").mode("overwrite").save()
    scores.summary()
    attribution = scores.attribution
    frame, parts = _contributions(attribution, model, population, spec)
    champion = _log_odds(frame[PROBABILITY_COL].to_numpy())
    surrogate = parts.sum(axis=1) + attribution.baseline_log_odds
    r2 = 1 - ((champion - surrogate) ** 2).sum() / ((champion - champion.mean()) ** 2).sum()
    assert attribution.fidelity_r2 == pytest.approx(r2, abs=1e-6)
    assert attribution.fidelity_r2 > 0.5
    assert scores.metadata()["reasons_surrogate_r2"] == attribution.fidelity_r2


def test_a_few_customers_read_as_in_the_batch_scores_of_the_same_model(
    telco, tree_champion, tmp_path
) -> None:
    """`score` on a small file takes the attribution stored beside the batch scores, if it is
    the same model's: each customer's reasons read exactly as in the batch (no surrogate fitted
    on a handful of rows), and the surrogate's R² is measured on the file's customers."""
    spec, cleaned = telco
    population = cleaned.where(population_filter(spec))
    model_version, identity = ("churn-telco", "2", 0.4), ("churn-telco", "2", "sha-of-files")
    policy = scoring.ScoringPolicy()
    reference = scoring.training_reference(cleaned, spec)
    batch = scoring.score_customers(
        population, spec, tree_champion, model_version, policy, reference
    )
    in_batch = {row[spec.id_column]: row for row in batch.frame.collect()}
    batch.summary()
    stored_attribution.save_attribution(tmp_path, identity, batch.attribution)
    assert (
        stored_attribution.load_attribution(tmp_path, ("churn-telco", "3", "sha-of-files")) is None
    )
    assert (
        stored_attribution.load_attribution(tmp_path, ("churn-telco", "2", "other-files")) is None
    )
    stored = stored_attribution.load_attribution(tmp_path, identity)
    assert stored is not None and stored.baseline_log_odds == batch.attribution.baseline_log_odds

    few = population.orderBy(spec.id_column).limit(50)
    scores = scoring.score_customers(
        few, spec, tree_champion, model_version, policy, attribution=stored
    )
    rows = scores.frame.collect()
    assert len(rows) == 50
    for row in rows:
        expected = in_batch[row[spec.id_column]]
        assert row["churn_probability"] == pytest.approx(
            expected["churn_probability"], **SAME_MODEL
        )
        read = [(r["feature"], r["value"]) for r in row["reasons"]]
        assert read == [(r["feature"], r["value"]) for r in expected["reasons"]]
        assert [r["contribution"] for r in row["reasons"]] == pytest.approx(
            [r["contribution"] for r in expected["reasons"]], **SAME_MODEL
        )
    scores.summary()
    assert scores.attribution.method == stored_attribution.SURROGATE
    assert scores.attribution.fidelity_r2 != batch.attribution.fidelity_r2


def test_stored_reasons_that_do_not_read_are_measured_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged `_reasons.json` (a disk filled mid-write, a hand edit) does not fail `score`:
    it says which file, and the reasons are measured as without one."""
    identity = ("churn-telco", "2", "sha-of-files")
    attribution = stored_attribution.Attribution(
        stored_attribution.SURROGATE,
        np.array([0.5, -1.0]),
        0.1,
        np.array([1.0, 0.0]),
        ("tenure", "Contract"),
    )
    stored_attribution.save_attribution(tmp_path, identity, attribution)
    assert stored_attribution.load_attribution(
        tmp_path, identity
    ).baseline_log_odds == pytest.approx(0.6)
    stored = tmp_path / stored_attribution.STORED
    text = stored.read_text()
    for damaged in (text[:40], text.replace("[1.0, 0.0]", "[1.0]"), "{}"):
        stored.write_text(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=reasons.__name__):
            assert stored_attribution.load_attribution(tmp_path, identity) is None
        assert f"{stored} is unreadable" in caplog.text


def test_the_reference_customer_logged_with_the_model_is_the_one_measured_on_its_training_rows(
    telco, tree_champion, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Training logs the mean of its training customers' vectors (`write_reference`); scoring
    explains from it as given, with the same reference as measuring the training split, and
    measures again where it does not fit the model (a stored file of another vector size)."""
    spec, cleaned = telco
    population = cleaned.where(population_filter(spec))
    model_version, policy = ("churn-telco", "2", 0.4), scoring.ScoringPolicy()
    training = scoring.training_reference(cleaned, spec)
    encoding = read_encoding(tree_champion)
    vectors = encoding.vectors(engineer_features(training, spec))
    stored = tmp_path / stored_attribution.REFERENCE
    stored_attribution.write_reference(
        stored, reasons.reference_mean(tree_champion, encoding, vectors), training.count()
    )
    logged = stored_attribution.read_reference(stored)
    assert logged is not None and logged.shape == (len(encoding.slot_columns),)

    given = scoring.score_customers(population, spec, tree_champion, model_version, policy, logged)
    measured = scoring.score_customers(
        population, spec, tree_champion, model_version, policy, training
    )
    assert given.attribution.reference is logged
    assert measured.attribution.reference == pytest.approx(logged, abs=1e-12)
    assert given.attribution.baseline_log_odds == pytest.approx(
        measured.attribution.baseline_log_odds, abs=1e-9
    )

    with caplog.at_level(logging.WARNING, logger=scoring.__name__):
        misfit = scoring.score_customers(
            population, spec, tree_champion, model_version, policy, logged[:-1]
        )
    assert f"a stored reference of {logged.size - 1} slots" in caplog.text
    scored = reasons.mean_vector(encoding.vectors(engineer_features(population, spec)))
    assert misfit.attribution.reference == pytest.approx(scored, abs=1e-12)
    stored.write_text("{}")
    with caplog.at_level(logging.WARNING, logger=stored_attribution.__name__):
        assert stored_attribution.read_reference(stored) is None
    assert f"{stored} is unreadable" in caplog.text


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
    kept = frame.where(population_filter(spec)).select(spec.id_column).collect()
    assert sorted(r[0] for r in kept) == ["a", "c"]
    assert population_labels(spec) == (0,)
    by_status = DatasetSpec(
        **{
            **{k: getattr(spec, k) for k in ("name", "sources", "id_column", "target")},
            "categorical": spec.categorical,
            "score_population": ScorePopulationSpec(column="Contract", values=("Two year",)),
        }
    )
    kept = frame.where(population_filter(by_status)).select(spec.id_column).collect()
    assert [r[0] for r in kept] == ["c"]
    assert population_labels(by_status) is None


def test_unseen_category_values_are_marked_and_counted(telco, lr_champion) -> None:
    spec, cleaned = telco
    sample = cleaned.where(F.col(LABEL_COL) == 0).orderBy(spec.id_column).limit(20)
    first = sample.first()[spec.id_column]
    odd = sample.withColumn(
        "Contract",
        F.when(F.col(spec.id_column) == first, F.lit("Quarterly")).otherwise(F.col("Contract")),
    )
    scores = scoring.score_customers(
        odd, spec, lr_champion, ("churn-telco", "1", 0.35), scoring.ScoringPolicy()
    )
    marked = [r["unseen_values"] for r in scores.frame.collect() if r["unseen_values"]]
    summary = scores.summary()
    assert summary["rows"] == 20
    assert summary["unseen_by_column"] == {"Contract": 1, "contract_payment": 1}
    assert summary["unseen_rows"] == 1 and summary["unseen_worst_share"] == pytest.approx(0.05)
    assert len(marked) == 1 and "Contract=Quarterly" in marked[0]
