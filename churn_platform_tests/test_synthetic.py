"""Synthetic Telco customers: exact schema and format, consistency, determinism, signal, drift."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pyspark.ml.classification import LogisticRegression, LogisticRegressionModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.core.synthetic.generate import generate_customers
from churn_platform.core.synthetic.write import write_customers
from churn_platform_tests.conftest import TELCO_HEADER

TELCO_COLUMNS = TELCO_HEADER.split(",")
YES_NO = ["No", "Yes"]
ADD_ONS = [
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
    "StreamingTV",
    "StreamingMovies",
]
DOMAINS: dict[str, list[str]] = {
    "gender": ["Female", "Male"],
    "SeniorCitizen": ["0", "1"],
    "Partner": YES_NO,
    "Dependents": YES_NO,
    "PhoneService": YES_NO,
    "MultipleLines": [*YES_NO, "No phone service"],
    "InternetService": ["DSL", "Fiber optic", "No"],
    **{name: [*YES_NO, "No internet service"] for name in ADD_ONS},
    "Contract": ["Month-to-month", "One year", "Two year"],
    "PaperlessBilling": YES_NO,
    "PaymentMethod": [
        "Electronic check",
        "Mailed check",
        "Bank transfer (automatic)",
        "Credit card (automatic)",
    ],
    "Churn": YES_NO,
}
# Dollars as the Telco file writes them: 29.85, 56.5, 45 (never 56.50 or 45.00).
MONEY = re.compile(r"^\d+(\.\d?[1-9])?$")
# The public Telco tariff: every service has a list price; charges are within ~$2 of the sum.
TARIFF = {
    "PhoneService": 20.0,
    "MultipleLines": 5.0,
    "OnlineSecurity": 5.0,
    "OnlineBackup": 5.0,
    "DeviceProtection": 5.0,
    "TechSupport": 5.0,
    "StreamingTV": 10.0,
    "StreamingMovies": 10.0,
}
INTERNET_TARIFF = {"DSL": 25.0, "Fiber optic": 50.0, "No": 0.0}


@pytest.fixture(scope="module")
def customers(spark: SparkSession) -> Iterator[DataFrame]:
    """One cached batch shared by the tests: enough rows that brand-new customers occur."""
    df = generate_customers(spark, 10_000, seed=1).cache()
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def sample(customers: DataFrame) -> pd.DataFrame:
    return customers.toPandas()


def _features(df: DataFrame) -> DataFrame:
    """One-hot categoricals and numeric charges, as a plain churn model would use them."""
    indicators = [
        (F.col(name) == value).cast("double").alias(f"{name}={value}")
        for name, values in DOMAINS.items()
        if name != "Churn"
        for value in values[1:]
    ]
    numeric = [
        F.col("tenure").cast("double").alias("tenure"),
        F.col("MonthlyCharges").cast("double").alias("monthly"),
        F.coalesce(F.expr("try_cast(TotalCharges AS double)"), F.lit(0.0)).alias("total"),
    ]
    table = df.select(
        *indicators, *numeric, (F.col("Churn") == "Yes").cast("double").alias("label")
    )
    assembler = VectorAssembler(
        inputCols=[c for c in table.columns if c != "label"], outputCol="features"
    )
    return assembler.transform(table).select("features", "label")


def _auc(model: LogisticRegressionModel, df: DataFrame) -> float:
    evaluator = BinaryClassificationEvaluator(metricName="areaUnderROC")
    return evaluator.evaluate(model.transform(_features(df)))


@pytest.fixture(scope="module")
def undrifted_model(customers: DataFrame) -> LogisticRegressionModel:
    return LogisticRegression(maxIter=15).fit(_features(customers))


@pytest.fixture(scope="module")
def fresh(spark: SparkSession) -> Iterator[DataFrame]:
    """Undrifted customers the model has never seen (other seed, other indexes)."""
    df = generate_customers(spark, 3_000, seed=2, id_start=100_000).cache()
    yield df
    df.unpersist()


def test_schema_is_the_telco_header_all_strings(customers: DataFrame) -> None:
    assert customers.columns == TELCO_COLUMNS
    assert {dtype for _, dtype in customers.dtypes} == {"string"}


def test_values_stay_within_telco_domains(sample: pd.DataFrame) -> None:
    for name, domain in DOMAINS.items():
        assert set(sample[name]) <= set(domain), name
    assert sample["customerID"].str.fullmatch(r"\d{4}-[A-Z]{5}").all()
    assert sample["customerID"].is_unique
    tenure = sample["tenure"].astype(int)
    assert tenure.between(0, 72).all()
    assert (sample["tenure"] == tenure.astype(str)).all()
    assert sample["MonthlyCharges"].str.fullmatch(MONEY).all()
    totals = sample.loc[tenure > 0, "TotalCharges"]
    assert totals.str.fullmatch(MONEY).all()


def test_services_are_consistent_with_internet_and_phone(sample: pd.DataFrame) -> None:
    no_internet = sample["InternetService"] == "No"
    for name in ADD_ONS:
        assert ((sample[name] == "No internet service") == no_internet).all(), name
    no_phone = sample["PhoneService"] == "No"
    assert ((sample["MultipleLines"] == "No phone service") == no_phone).all()
    assert not (no_phone & no_internet).any()

    list_price = sample["InternetService"].map(INTERNET_TARIFF)
    for name, price in TARIFF.items():
        list_price = list_price + (sample[name] == "Yes") * price
    monthly = sample["MonthlyCharges"].astype(float)
    assert (monthly - list_price).abs().max() <= 2.0


def test_total_charges_blank_exactly_when_tenure_is_zero(sample: pd.DataFrame) -> None:
    new = sample["tenure"] == "0"
    assert new.any()
    assert ((sample["TotalCharges"] == " ") == new).all()
    billed = sample[~new]
    ratio = billed["TotalCharges"].astype(float) / (
        billed["tenure"].astype(int) * billed["MonthlyCharges"].astype(float)
    )
    assert ratio.between(0.69, 1.51).all()
    assert abs(ratio.median() - 1.0) < 0.01


def test_churn_rate_is_telco_like(sample: pd.DataFrame) -> None:
    assert 0.22 <= (sample["Churn"] == "Yes").mean() <= 0.31


def test_same_seed_gives_identical_rows_for_any_partitioning(
    spark: SparkSession, sample: pd.DataFrame
) -> None:
    one = generate_customers(spark, 1_000, seed=2, id_start=700, partitions=1)
    five = generate_customers(spark, 1_000, seed=2, id_start=700, partitions=5)
    assert (one.rdd.getNumPartitions(), five.rdd.getNumPartitions()) == (1, 5)
    rows = one.collect()
    assert five.collect() == rows

    other_seed = sample.iloc[700:1_700]
    assert [row.customerID for row in rows] == other_seed["customerID"].tolist()
    assert [row.tenure for row in rows] != other_seed["tenure"].tolist()


def test_overlapping_batches_update_existing_customers(
    spark: SparkSession, sample: pd.DataFrame
) -> None:
    later = generate_customers(spark, 1_000, seed=2, id_start=9_800).toPandas()
    shared = sample.merge(later, on="customerID", suffixes=("_old", "_new"))
    assert len(shared) == 200
    assert (shared["gender_old"] == shared["gender_new"]).all()
    assert (shared["SeniorCitizen_old"] == shared["SeniorCitizen_new"]).all()
    assert (shared["tenure_old"] != shared["tenure_new"]).any()


def test_a_model_finds_a_real_churn_signal(
    undrifted_model: LogisticRegressionModel, fresh: DataFrame
) -> None:
    assert _auc(undrifted_model, fresh) > 0.75


def test_drift_shifts_the_population_and_degrades_an_undrifted_model(
    spark: SparkSession, undrifted_model: LogisticRegressionModel, fresh: DataFrame
) -> None:
    drifted = generate_customers(spark, 3_000, seed=2, drift=1.0, id_start=100_000)
    assert _auc(undrifted_model, drifted) < _auc(undrifted_model, fresh) - 0.1

    def shares(df: DataFrame) -> pd.Series:
        return (
            df.select(
                F.avg((F.col("InternetService") == "Fiber optic").cast("double")).alias("fiber"),
                F.avg((F.col("Contract") == "Month-to-month").cast("double")).alias("monthly"),
                F.avg(F.col("MonthlyCharges").cast("double")).alias("charges"),
            )
            .toPandas()
            .iloc[0]
        )

    before, after = shares(fresh), shares(drifted)
    assert (after > before).all()


def test_csv_is_one_telco_formatted_file_that_spark_reads_back(
    spark: SparkSession, customers: DataFrame, sample: pd.DataFrame, tmp_path: Path
) -> None:
    written = write_customers(customers, tmp_path / "out" / "customers.csv")

    assert written == tmp_path / "out" / "customers.csv"
    assert [p.name for p in written.parent.iterdir()] == ["customers.csv"]
    raw = written.read_bytes()
    assert b"\r" not in raw
    assert raw.split(b"\n", 1)[0].decode() == TELCO_HEADER
    back = spark.read.csv(str(written), header=True, schema=customers.schema).toPandas()
    assert len(back) == len(sample)
    assert back.equals(sample)
    assert (back["TotalCharges"] == " ").any()

    write_customers(customers.limit(10), written)
    assert spark.read.csv(str(written), header=True).count() == 10


def test_parquet_is_one_file_that_spark_reads_back(
    spark: SparkSession, customers: DataFrame, sample: pd.DataFrame, tmp_path: Path
) -> None:
    written = write_customers(customers, tmp_path / "customers.parquet", fmt="parquet")
    assert written.is_file()
    assert spark.read.parquet(str(written)).toPandas().equals(sample)


def test_invalid_arguments_fail_loudly(
    spark: SparkSession, customers: DataFrame, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="drift"):
        generate_customers(spark, 10, drift=1.5)
    with pytest.raises(ValueError, match="customer indexes"):
        generate_customers(spark, 10, id_start=-1)
    with pytest.raises(ValueError, match="partitions"):
        generate_customers(spark, 10, partitions=0)
    with pytest.raises(ValueError, match="fmt"):
        write_customers(customers, tmp_path / "x", fmt="json")  # type: ignore[arg-type]
