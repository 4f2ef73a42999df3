"""Monitoring's measurements: PSI of every column in one aggregate, score drift against reference
scores held on the driver, bounded stable samples, and the newest batch's counts."""

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from churn_platform.core import monitoring
from churn_platform.core.columns import BATCH_COL, BATCH_ORDER_COL, LABEL_COL
from churn_platform.core.monitoring import PSI_BINS, PSI_FLOOR, population_stability
from churn_platform.core.sampling import sampled
from churn_platform_tests.conftest import SUMMATION_ORDER


def _psi_by_hand(reference: list, current: list) -> float:
    keys = set(reference) | set(current)
    value = 0.0
    for key in keys:
        e = max(reference.count(key) / len(reference), PSI_FLOOR)
        a = max(current.count(key) / len(current), PSI_FLOOR)
        value += (a - e) * math.log(a / e)
    return value


def _decile_bins(values: list, cuts: list[float]) -> list:
    return [-1 if v is None else sum(v > c for c in cuts) for v in values]


def test_psi_of_every_column_matches_a_hand_computation(spark: SparkSession) -> None:
    rng = np.random.default_rng(4)
    ref_charges = [None if i % 50 == 0 else float(x) for i, x in enumerate(rng.normal(60, 20, 800))]
    cur_charges = [None if i % 20 == 0 else float(x) for i, x in enumerate(rng.normal(75, 20, 300))]
    ref_plan = rng.choice(["month", "year", "two_year"], 800, p=[0.5, 0.3, 0.2]).tolist()
    cur_plan = rng.choice(["month", "year", "new_plan"], 300, p=[0.7, 0.2, 0.1]).tolist()
    reference = spark.createDataFrame(
        list(zip(ref_charges, ref_plan, strict=True)), "charges double, plan string"
    )
    current = spark.createDataFrame(
        list(zip(cur_charges, cur_plan, strict=True)), "charges double, plan string"
    )

    psi = population_stability(reference, current, ["charges", "plan"])

    probabilities = [i / PSI_BINS for i in range(1, PSI_BINS)]
    cuts = sorted(set(reference.approxQuantile("charges", probabilities, 0.001)))
    expected_charges = _psi_by_hand(
        _decile_bins(ref_charges, cuts), _decile_bins(cur_charges, cuts)
    )
    assert psi["charges"] == pytest.approx(expected_charges, **SUMMATION_ORDER)
    assert psi["plan"] == pytest.approx(_psi_by_hand(ref_plan, cur_plan), **SUMMATION_ORDER)
    assert psi["charges"] > 0.1  # the mean moved by three quarters of a standard deviation


def test_identical_data_has_no_drift(spark: SparkSession) -> None:
    rows = [(float(i % 37), f"p{i % 4}") for i in range(400)]
    df = spark.createDataFrame(rows, "tenure double, plan string")
    assert population_stability(df, df, ["tenure", "plan"]) == {"tenure": 0.0, "plan": 0.0}


def test_score_drift_bins_current_scores_on_the_reference_deciles(spark: SparkSession) -> None:
    rng = np.random.default_rng(9)
    reference = rng.beta(2, 5, 5000)
    current = rng.beta(2, 3, 700)
    frame = spark.createDataFrame(pd.DataFrame({"p": current}))

    drift = monitoring.score_drift(reference, frame, "p")

    cuts = sorted(set(np.quantile(reference, [i / PSI_BINS for i in range(1, PSI_BINS)])))
    by_hand = _psi_by_hand(
        _decile_bins(reference.tolist(), cuts), _decile_bins(current.tolist(), cuts)
    )
    assert drift.psi == pytest.approx(by_hand, **SUMMATION_ORDER)
    assert drift.rows == 700 and drift.nan == 0
    assert drift.mean == pytest.approx(current.mean(), **SUMMATION_ORDER)
    assert drift.std == pytest.approx(current.std(ddof=1), abs=1e-9)
    assert drift.sane and drift.psi > 0.1
    same = monitoring.score_drift(current, frame, "p")
    assert same.psi == pytest.approx(0.0, abs=1e-12)


def test_samples_are_bounded_and_pick_the_same_customers_every_time(spark: SparkSession) -> None:
    frame = spark.range(20_000).select(F.format_string("c%05d", "id").alias("customer"))
    assert sampled(frame, 20_000, 50_000, "customer") is frame
    sample = sampled(frame, 20_000, 2_000, "customer")
    ids = [r[0] for r in sample.collect()]
    assert 1_800 <= len(ids) <= 2_200
    again = sampled(frame.repartition(7), 20_000, 2_000, "customer")
    assert sorted(r[0] for r in again.collect()) == sorted(ids)


def test_the_newest_batch_counts_its_labelled_and_scoreable_customers(spark: SparkSession) -> None:
    rows = [
        ("a", 1, "base", 0),
        ("b", 0, "base", 0),
        ("c", None, "2026-02", 2),
        ("d", 0, "2026-02", 2),
        ("e", 1, "2026-02", 2),
        ("f", 0, "2026-01", 1),
    ]
    frame = spark.createDataFrame(
        rows, f"id string, {LABEL_COL} int, {BATCH_COL} string, {BATCH_ORDER_COL} long"
    )
    population = F.col(LABEL_COL).isNull() | (F.col(LABEL_COL) == 0)
    batch = monitoring.newest_batch(frame, population)
    assert (batch.order, batch.name, batch.rows) == (2, "2026-02", 3)
    assert (batch.labelled, batch.in_population) == (2, 2)
    assert sorted(r["id"] for r in frame.where(batch.rows_filter).collect()) == ["c", "d", "e"]


def test_quality_needs_both_outcomes() -> None:
    one_class = pd.DataFrame({LABEL_COL: [0, 0, 0], "p": [0.1, 0.4, 0.2]})
    assert monitoring.quality(one_class, "p", 0.3) == {}
    both = pd.DataFrame({LABEL_COL: [0, 1, 0, 1], "p": [0.1, 0.8, 0.4, 0.35]})
    metrics = monitoring.quality(both, "p", 0.3)
    assert metrics["roc_auc"] == pytest.approx(0.75) and metrics["tp"] == 2
