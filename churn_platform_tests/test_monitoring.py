"""Drift: population stability of every feature column, computed in a few Spark jobs."""

import math

import numpy as np
import pytest
from pyspark.sql import SparkSession

from churn_platform.assets.monitoring import PSI_BINS, PSI_FLOOR, population_stability
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
