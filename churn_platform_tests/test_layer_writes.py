"""The cleaned layer's write: quarantine written only as needed, yet always complete, the
distinct-id count behind the unique-ids check, and the fingerprint the feature layer reuses."""

from pathlib import Path

from pyspark.sql import SparkSession

from churn_platform.config import SourceSpec, load_spec
from churn_platform.core import cleaning, features, quality, sources
from churn_platform.core.columns import (
    DUPLICATE_ID,
    LINE_COL,
    REASON_COL,
    UNPARSEABLE_NUMBER,
    WRONG_FIELD_COUNT,
)
from churn_platform.settings import DEFAULT_SPEC
from churn_platform_tests.conftest import TELCO_HEADER, telco_row


def _clean(spark: SparkSession, tmp_path: Path, lines: list[str]) -> cleaning.CleanResult:
    spec = load_spec(DEFAULT_SPEC, tmp_path)
    path = tmp_path / "customers.csv"
    path.write_text("\n".join(lines) + "\n")
    source = SourceSpec(name="customers", format="csv", path=str(path))
    raw = sources.read_batch(spark, spec, (source,), "base", 0).frame
    planned = cleaning.clean_customers(raw, spec, ranges=spec.ranges, window=False)
    return planned.write(tmp_path / "cleaned", tmp_path / "quarantine")


def test_clean_input_writes_an_empty_quarantine_with_its_columns(spark, tmp_path) -> None:
    result = _clean(spark, tmp_path, [TELCO_HEADER, telco_row("1"), telco_row("2")])
    quarantine = spark.read.parquet(str(tmp_path / "quarantine"))
    assert quarantine.count() == 0
    assert quarantine.columns == result.quarantined.columns
    assert result.counts["rows_quarantined"] == 0
    assert spark.read.parquet(str(tmp_path / "cleaned")).count() == 2


def test_quarantined_rows_are_written_with_reason_and_line(spark, tmp_path) -> None:
    lines = [
        TELCO_HEADER,
        telco_row("1"),
        telco_row("2", tenure="abc"),
        "only,three,fields",
        telco_row("4"),
        telco_row("4", churn="Yes"),
    ]
    result = _clean(spark, tmp_path, lines)
    quarantine = spark.read.parquet(str(tmp_path / "quarantine"))
    reasons = {r[LINE_COL]: r[REASON_COL] for r in quarantine.collect()}
    assert reasons == {
        3: UNPARSEABLE_NUMBER,
        4: WRONG_FIELD_COUNT,
        5: DUPLICATE_ID,
    }
    assert result.counts["rows_quarantined"] == 3
    assert sorted(spark.read.parquet(str(tmp_path / "cleaned")).columns) == sorted(
        result.cleaned.columns
    )


def test_distinct_ids_counts_repeats_and_skips_nulls(spark) -> None:
    """The same counts whether Spark counts the hashes (no row count given, or above the bound)
    or the driver sorts them (a layer's known row count within it)."""
    frame = spark.createDataFrame([("a",), ("b",), ("a",), (None,), ("c",)], "id string")
    unique = frame.where("id != 'a' or id is null")
    for rows in (None, 5):
        assert quality.distinct_ids(frame, "id", rows) == 3
        assert quality.distinct_ids(unique, "id", rows) == 2
        assert quality.distinct_ids(frame.limit(0), "id", rows) == 0
    many = spark.range(5000).selectExpr("CAST(id % 4000 AS STRING) AS id")
    assert quality.distinct_ids(many, "id", 5000) == quality.distinct_ids(many, "id") == 4000


def test_feature_layer_reuses_the_fingerprint_the_cleaned_write_recorded(spark, tmp_path) -> None:
    """The feature layer's version follows the cleaned content: the fingerprint the cleaned
    write recorded equals the one hashed from the rows again; it is not trusted for a filtered
    read of the folder or for a record of other columns."""
    lines = [TELCO_HEADER, telco_row("1"), telco_row("2", churn="Yes"), telco_row("3")]
    result = _clean(spark, tmp_path, lines)
    spec = load_spec(DEFAULT_SPEC, tmp_path)
    written = spark.read.parquet(str(tmp_path / "cleaned"))
    reused = features.build_features(written, spec)
    in_memory = spark.createDataFrame(written.collect(), written.schema)
    hashed = features.build_features(in_memory, spec)
    assert reused.known_fingerprint == result.fingerprint
    assert "fingerprint:n" not in reused.stats
    assert hashed.known_fingerprint is None
    assert hashed.cleaned_fingerprint == reused.cleaned_fingerprint == result.fingerprint
    fewer = features.build_features(written.where("customerID != '3'"), spec)
    assert fewer.known_fingerprint is None
    assert fewer.cleaned_fingerprint != result.fingerprint
    quality.record_fingerprint(tmp_path / "cleaned", ["customerID"], "stale")
    assert features.build_features(written, spec).known_fingerprint is None
