"""The feature layer's encoders are fitted on the training rows the models are trained on."""

from pyspark.ml.feature import ImputerModel, StringIndexerModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from churn_platform.config import DatasetSpec, SourceSpec, TargetSpec
from churn_platform.core import features
from churn_platform.core.columns import LABEL_COL, SPLIT_COL


def _spec() -> DatasetSpec:
    return DatasetSpec(
        name="generic",
        sources=(SourceSpec("s", "csv", "unused.csv"),),
        id_column="id",
        target=TargetSpec("left", "1", "0"),
    )


def _fitted(model) -> tuple[float, list[str]]:
    imputer = next(s for s in model.stages if isinstance(s, ImputerModel))
    indexer = next(s for s in model.stages if isinstance(s, StringIndexerModel))
    return imputer.surrogateDF.first()["spend"], indexer.labelsArray[0]


def test_with_a_row_cap_the_encoders_see_exactly_the_capped_training_rows(
    spark: SparkSession,
) -> None:
    spec = _spec()
    # Spend grows with the row number and plans rotate, so the median and the plans' order
    # depend on which training rows the fit reads.
    rows = [
        (f"c{i}", f"plan{i % 7}" if i % 3 else "gold", float(i), i % 4 == 0) for i in range(600)
    ]
    cleaned = spark.createDataFrame(rows, ["id", "plan", "spend", "left"]).select(
        "id", "plan", "spend", F.col("left").cast("int").alias(LABEL_COL)
    )
    capped = features.build_features(cleaned, spec, fit_max_rows=100)
    whole = features.build_features(cleaned, spec)

    split = features.assign_split(features.engineer_features(cleaned, spec), spec)
    kept = features.cap_training_rows(split, spec, 100).where(F.col(SPLIT_COL) == "train")
    train = split.where(F.col(SPLIT_COL) == "train")
    assert 50 < kept.count() < 200 < train.count()
    for built, seen in ((capped, kept), (whole, train)):
        median, plans = _fitted(built.pipeline)
        values = sorted(r["spend"] for r in seen.collect())
        # Spark's median is the approximate quantile: an element within 0.1% of rank n/2.
        assert median in values[len(values) // 2 - 1 : len(values) // 2 + 2]
        counts = {r["plan"]: r["count"] for r in seen.groupBy("plan").count().collect()}
        assert plans == sorted(counts, key=lambda p: (-counts[p], p))
    # Every row is still in the table; only the fit reads fewer.
    assert capped.features.count() == whole.features.count() == 600
