"""Reading, cleaning and feature functions: every bad row is quarantined with file and line."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from churn_platform.config import DatasetSpec, SourceSpec, TargetSpec, load_spec
from churn_platform.core import cleaning, features, sources
from churn_platform.core.columns import (
    BATCH_COL,
    BATCH_ORDER_COL,
    DETAIL_COL,
    DUPLICATE_ID,
    FEATURES_COL,
    FILE_COL,
    INVALID_ENCODING,
    LABEL_COL,
    LINE_COL,
    MALFORMED_LINE,
    MISSING_ID,
    MISSING_TARGET,
    NON_FINITE_NUMBER,
    OUT_OF_RANGE,
    REASON_COL,
    SPLIT_COL,
    UNKNOWN_TARGET,
    UNPARSEABLE_NUMBER,
    WRONG_FIELD_COUNT,
)
from churn_platform.core.features import assign_split, cap_training_rows, engineer_features
from churn_platform.core.input_files import InputDataError
from churn_platform.core.lines import HERE_MAX_BYTES, one_split_bytes, with_line_numbers
from churn_platform.core.schemas import cleaned_schema, features_schema
from churn_platform.core.spark_setup import even_scans, even_split_bytes
from churn_platform.settings import DEFAULT_SPEC
from churn_platform_tests.conftest import TELCO_HEADER, telco_row


def _spec(tmp_path: Path) -> DatasetSpec:
    return load_spec(DEFAULT_SPEC, tmp_path)


def _write(path: Path, lines: list[str], newline: str = "\n", bom: bool = False) -> Path:
    data = newline.join(lines) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode())
    return path


def _read(spark: SparkSession, spec: DatasetSpec, path: Path):
    source = SourceSpec(name="customers", format="csv", path=str(path))
    return sources.read_batch(spark, spec, (source,), "base", 0).frame


@contextmanager
def _files_conf(spark: SparkSession, **values: str) -> Iterator[None]:
    """`spark.sql.files.<key>` set to each value for the block, then back to the default."""
    for key, value in values.items():
        spark.conf.set(f"spark.sql.files.{key}", value)
    try:
        yield
    finally:
        for key in values:
            spark.conf.unset(f"spark.sql.files.{key}")


def _reasons(quarantined) -> dict[int, str]:
    return {row[LINE_COL]: row[REASON_COL] for row in quarantined.collect()}


def test_bad_rows_are_quarantined_with_reason_and_line(spark, tmp_path):
    spec = _spec(tmp_path)
    path = _write(
        tmp_path / "bad.csv",
        [
            TELCO_HEADER,
            telco_row("0001-A"),  # line 2: good
            telco_row("0002-B") + ",extra",  # line 3: too many fields
            telco_row("0003-C").rsplit(",", 2)[0],  # line 4: too few fields
            telco_row("0004-D", total="12,5x").replace("12,5x", "abc"),  # line 5: bad number
            telco_row(""),  # line 6: blank id
            telco_row("0007-G", churn="Maybe"),  # line 7: unknown target
            telco_row("0008-H", churn=""),  # line 8: missing target
            telco_row("0009-I"),  # line 9: duplicate (kept: line 10)
            telco_row("0009-I", churn="Yes"),  # line 10
            "",  # line 11: blank line
            telco_row("0012-L"),  # line 12: good
        ],
    )
    result = cleaning.clean_customers(_read(spark, spec, path), spec)
    quarantined = result.quarantined.collect()  # one pass over the file for the three checks
    assert {row[LINE_COL]: row[REASON_COL] for row in quarantined} == {
        3: WRONG_FIELD_COUNT,
        4: WRONG_FIELD_COUNT,
        5: UNPARSEABLE_NUMBER,
        6: MISSING_ID,
        7: UNKNOWN_TARGET,
        8: MISSING_TARGET,
        9: DUPLICATE_ID,
        11: MALFORMED_LINE,
    }
    assert {r[FILE_COL] for r in quarantined} == {str(path)}
    details = {r[LINE_COL]: r[DETAIL_COL] for r in quarantined}
    assert details[5] == "TotalCharges"
    assert details[3] == "22"
    cleaned = {r["customerID"]: r for r in result.cleaned.collect()}
    assert set(cleaned) == {"0001-A", "0009-I", "0012-L"}
    assert cleaned["0009-I"][LABEL_COL] == 1  # the later line of the duplicate wins
    assert result.counts["rows_in"] == 11
    assert result.counts["rows_quarantined"] == 8
    assert result.counts["rows_out"] + result.counts["rows_quarantined"] == result.counts["rows_in"]
    assert sum(result.by_reason.values()) == 8


def test_blank_numeric_is_missing_not_an_error(spark, tmp_path):
    spec = _spec(tmp_path)
    path = _write(tmp_path / "blank.csv", [TELCO_HEADER, telco_row("1", tenure="0", total=" ")])
    result = cleaning.clean_customers(_read(spark, spec, path), spec)
    assert result.quarantined.count() == 0
    row = result.cleaned.first()
    assert row["TotalCharges"] is None and row["tenure"] == 0.0
    assert result.blanks["TotalCharges"] == 1


def test_bom_and_crlf_read_correctly(spark, tmp_path):
    spec = _spec(tmp_path)
    lines = [TELCO_HEADER, telco_row("1"), telco_row("2", churn="Yes")]
    path = _write(tmp_path / "crlf.csv", lines, newline="\r\n", bom=True)
    result = cleaning.clean_customers(_read(spark, spec, path), spec)
    assert result.quarantined.count() == 0
    rows = {r["customerID"]: r[LABEL_COL] for r in result.cleaned.collect()}
    assert rows == {"1": 0, "2": 1}


def test_non_utf8_bytes_are_quarantined(spark, tmp_path):
    spec = _spec(tmp_path)
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        (TELCO_HEADER + "\n" + telco_row("1") + "\n").encode()
        + telco_row("2").replace("Female", "F\xe9male").encode("latin-1")
        + b"\n"
    )
    result = cleaning.clean_customers(_read(spark, spec, path), spec)
    assert _reasons(result.quarantined) == {3: INVALID_ENCODING}


def test_missing_column_names_column_and_file(spark, tmp_path):
    spec = _spec(tmp_path)
    header = TELCO_HEADER.replace(",Contract", "")
    row = telco_row("1").replace(",Month-to-month", "")
    path = _write(tmp_path / "nocontract.csv", [header, row])
    with pytest.raises(InputDataError, match=r"Contract.*") as info:
        _read(spark, spec, path)
    assert str(path) in str(info.value)


def test_empty_file_is_a_clear_error(spark, tmp_path):
    spec = _spec(tmp_path)
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(InputDataError, match="empty"):
        _read(spark, spec, path)


def test_line_numbers_follow_file_order_across_partitions(spark, tmp_path):
    path = _write(tmp_path / "many.txt", [f"line-{i}" for i in range(1, 5001)])
    with _files_conf(spark, maxPartitionBytes="4096"):
        df = with_line_numbers(spark.read.text(str(path)))
        assert df.rdd.getNumPartitions() > 1
        mismatched = df.where(F.col("value") != F.concat(F.lit("line-"), F.col(LINE_COL)))
        assert mismatched.count() == 0


@pytest.mark.parametrize(
    ("quoted", "newline", "partitions"),
    [(False, "\n", "many"), (True, "\n", "many"), (False, "\r\n", "many"), (False, "\r", "one")],
    ids=["driver-counted", "quoted-driver-counted", "crlf-driver-counted", "cr-multiline"],
)
def test_a_file_of_many_partitions_quarantines_by_line(
    spark, tmp_path, quoted, newline, partitions
):
    """A file larger than one split has its lines counted per split on the driver (a quoted
    field with its quotes paired, CR LF line ends). Lines that end at a CR alone go to Spark's
    job, whose count the file's line feeds do not match, so the file is read as multi-line CSV
    in one partition. Either way a bad record deep in the file keeps its line number."""
    spec = _spec(tmp_path)
    rows = [telco_row(str(i), tenure="abc" if i in (3, 250) else "12") for i in range(300)]
    if quoted:
        rows[100] = rows[100].replace("Electronic check", '"Electronic, check"')
    path = _write(tmp_path / "many.csv", [TELCO_HEADER, *rows], newline=newline)
    with _files_conf(spark, maxPartitionBytes="4096"):
        assert path.stat().st_size > one_split_bytes(spark)
        raw = _read(spark, spec, path)
        assert (raw.rdd.getNumPartitions() > 1) == (partitions == "many")
        result = cleaning.clean_customers(raw, spec)
        assert _reasons(result.quarantined) == {5: UNPARSEABLE_NUMBER, 252: UNPARSEABLE_NUMBER}


def test_even_scans_read_a_large_file_in_even_partitions_keeping_line_numbers(spark, tmp_path):
    """Spark's own splits leave the last partition of a large file small, and one core idle
    while the other reads a whole split; under `even_scans` the splits are a multiple of the
    cores in number and about equal, the setting is restored after, and line numbers hold."""
    spec = _spec(tmp_path)
    # 33 KB: nine 4 KB splits, the last a fraction of the others (no cost to open a file, as
    # against a split's 4 KB the default's 4 MB would swamp it).
    rows = [telco_row(str(i), tenure="abc" if i in (3, 250) else "12") for i in range(330)]
    path = _write(tmp_path / "large.csv", [TELCO_HEADER, *rows])
    cores = spark.sparkContext.defaultParallelism
    with _files_conf(spark, maxPartitionBytes="4096", openCostInBytes="1"):
        assert _read(spark, spec, path).rdd.getNumPartitions() % cores != 0
        with even_scans(spark, [str(path)]):
            raw = _read(spark, spec, path)
            sizes = raw.rdd.glom().map(len).collect()
            assert len(sizes) % cores == 0 and max(sizes) - min(sizes) <= 0.2 * max(sizes)
            result = cleaning.clean_customers(raw, spec)
            assert _reasons(result.quarantined) == {5: UNPARSEABLE_NUMBER, 252: UNPARSEABLE_NUMBER}
        assert spark.conf.get("spark.sql.files.maxPartitionBytes") == "4096"


def test_even_split_bytes_balances_only_scans_longer_than_one_round():
    mb = 1 << 20
    # The 10M-customer CSV (1.4 GB): 12 splits of 110 MiB instead of 10 of 128 and one of 32.
    split = even_split_bytes([1_375_721_604], 2, 4 * mb, 128 * mb)
    assert -(-1_375_721_604 // split) == 12 and split < 128 * mb
    # Eleven 25 MB Parquet files: four partitions' worth instead of 4 + 4 + 3 files.
    split = even_split_bytes([25 * mb] * 11, 2, 4 * mb, 128 * mb)
    assert split == -(-11 * 29 * mb // 4)
    # Within one partition per core Spark's own choice stands.
    assert even_split_bytes([138 * mb], 2, 4 * mb, 128 * mb) == 0
    assert even_split_bytes([], 2, 4 * mb, 128 * mb) == 0


def test_the_driver_counts_the_lines_of_small_files_only(spark):
    """However large Spark's splits are configured, the driver reads at most HERE_MAX_BYTES of
    a file into memory to count its lines; above that Spark's job counts them."""
    assert 0 < one_split_bytes(spark) <= HERE_MAX_BYTES
    with _files_conf(spark, openCostInBytes="1g", maxPartitionBytes="1g"):
        assert one_split_bytes(spark) == HERE_MAX_BYTES


def test_newest_batch_wins_and_older_records_are_superseded(spark, tmp_path):
    spec = _spec(tmp_path)
    first = _write(tmp_path / "b1.csv", [TELCO_HEADER, telco_row("1"), telco_row("2")])
    second = _write(tmp_path / "b2.csv", [TELCO_HEADER, telco_row("2", churn="Yes")])
    raw = sources.read_batch(
        spark, spec, (SourceSpec("b1", "csv", str(first)),), "base", 0
    ).frame.unionByName(
        sources.read_batch(spark, spec, (SourceSpec("b2", "csv", str(second)),), "b2", 1).frame
    )
    result = cleaning.clean_customers(raw, spec)
    rows = {r["customerID"]: (r[LABEL_COL], r[BATCH_COL]) for r in result.cleaned.collect()}
    assert rows == {"1": (0, "base"), "2": (1, "b2")}
    assert result.counts["rows_superseded"] == 1
    assert result.quarantined.count() == 0


def _generic_spec(path: Path, drop: tuple[str, ...] = ()) -> DatasetSpec:
    """A spec without roles: an id, a 0/1 target `left`, everything else inferred."""
    return DatasetSpec(
        name="generic",
        sources=(SourceSpec("s", "csv", str(path)),),
        id_column="id",
        target=TargetSpec("left", "1", "0"),
        drop=drop,
    )


def test_roles_are_inferred_when_the_spec_has_none(spark, tmp_path):
    path = _write(tmp_path / "g.csv", ["id,plan,spend,left", "a,gold,1.5,1", "b,basic,,0"])
    spec = _generic_spec(path)
    result = cleaning.clean_customers(_read(spark, spec, path), spec)
    assert result.numeric == ["spend"] and result.categorical == ["plan"]
    built = features.build_features(result.cleaned, spec)
    assert built.numeric == ["spend"] and built.categorical == ["plan"]
    assert built.pipeline.transform(built.features).select(FEATURES_COL).count() == 2


def test_customers_to_score_need_neither_the_target_nor_the_dropped_columns(spark, tmp_path):
    """New customers have no outcome yet, nor the columns a spec drops (leakage such as a churn
    reason): `score` checks for `scoring_columns` and the cleaning asks for no more."""
    path = _write(tmp_path / "new.csv", ["id,plan,spend", "a,gold,1.5", "b,basic,2"])
    spec = _generic_spec(path, drop=("churn_reason",))
    read = sources.read_source(spark, SourceSpec("new", "csv", str(path))).frame
    raw = read.withColumn(BATCH_COL, F.lit("score")).withColumn(
        BATCH_ORDER_COL, F.lit(0).cast("long")
    )
    result = cleaning.clean_customers(raw, spec, require_target=False)
    assert spec.scoring_columns == ("id",)
    assert result.counts["rows_out"] == 2 and result.categorical == ["plan"]


def test_engineered_features(spark, tmp_path):
    spec = _spec(tmp_path)
    path = _write(tmp_path / "f.csv", [TELCO_HEADER, telco_row("1", tenure="0", total=" ")])
    cleaned = cleaning.clean_customers(_read(spark, spec, path), spec).cleaned
    row = engineer_features(cleaned, spec).first()
    # DSL internet + PhoneService + OnlineSecurity are the "Yes"/active services of telco_row.
    assert row["num_services"] == 3.0
    assert row["tenure_bucket"] == "0-6m"
    assert row["contract_payment"] == "Month-to-month|Electronic check"
    assert row["auto_pay"] == 0.0
    assert row["charges_per_tenure_month"] is None


def test_split_is_stable_when_new_customers_arrive(spark, tmp_path):
    spec = _spec(tmp_path)
    ids = [(f"c{i}", i % 4 == 0) for i in range(2000)]
    df = spark.createDataFrame(ids, ["customerID", "label"]).withColumn(
        LABEL_COL, F.col("label").cast("int")
    )
    before = {r["customerID"]: (r["split"], r["fold"]) for r in assign_split(df, spec).collect()}
    more = df.unionByName(
        spark.createDataFrame([(f"n{i}", 1) for i in range(500)], ["customerID", "label"])
    )
    after = {r["customerID"]: (r["split"], r["fold"]) for r in assign_split(more, spec).collect()}
    assert all(after[k] == v for k, v in before.items())
    test_share = sum(1 for s, _ in before.values() if s == "test") / len(before)
    assert abs(test_share - spec.test_fraction) < 0.03
    folds = {f for s, f in before.values() if s == "train"}
    assert folds == set(range(spec.folds))
    assert all(f == -1 for s, f in before.values() if s == "test")


def test_training_cap_samples_train_rows_stably_and_keeps_every_test_row(spark, tmp_path):
    spec = _spec(tmp_path)
    ids = spark.createDataFrame([(f"c{i}", i % 4 == 0) for i in range(4000)], ["customerID", "y"])
    df = assign_split(ids.withColumn(LABEL_COL, F.col("y").cast("int")), spec)
    train_rows = df.where("split = 'train'").count()

    capped = cap_training_rows(df, spec, 1000)
    kept = {r["customerID"] for r in capped.where("split = 'train'").collect()}
    assert abs(len(kept) - 1000) < 100
    assert capped.where("split = 'test'").count() == df.where("split = 'test'").count()
    again = cap_training_rows(df, spec, 1000).where("split = 'train'").collect()
    assert {r["customerID"] for r in again} == kept
    assert cap_training_rows(df, spec, train_rows).count() == df.count()
    assert cap_training_rows(df, spec, 0).count() == df.count()


def test_feature_pipeline_is_fitted_on_training_rows_only(spark, tmp_path):
    spec = _spec(tmp_path)
    rows = [TELCO_HEADER] + [telco_row(f"id{i}", tenure=str(i % 70)) for i in range(300)]
    path = _write(tmp_path / "t.csv", rows)
    cleaned = cleaning.clean_customers(_read(spark, spec, path), spec).cleaned
    result = features.build_features(cleaned, spec)
    imputer = result.pipeline.stages[0]
    train = result.features.where(F.col(SPLIT_COL) == "train")
    median_train = train.approxQuantile("tenure", [0.5], 0.001)[0]
    assert imputer.surrogateDF.first()["tenure"] == pytest.approx(median_train)


def test_valid_csv_parses_as_the_standard_says_and_bad_rows_keep_their_line(spark, tmp_path):
    """Issue 19.2: a 2,000+ character quoted field threw StackOverflowError in the old reader."""
    spec = _spec(tmp_path)
    long_text = "word, " * 2000
    lines = [
        TELCO_HEADER,
        telco_row("1").replace("Electronic check", f'"{long_text}"'),  # line 2
        telco_row("2").replace("Electronic check", '"two\nlines"'),  # lines 3-4
        telco_row("3").replace("Electronic check", '"say ""hi"", twice"'),  # line 5
        telco_row("4", total="abc"),  # line 6
    ]
    result = cleaning.clean_customers(_read(spark, spec, _write(tmp_path / "q.csv", lines)), spec)
    assert _reasons(result.quarantined) == {6: UNPARSEABLE_NUMBER}
    payment = {r["customerID"]: r["PaymentMethod"] for r in result.cleaned.collect()}
    assert payment == {"1": long_text.strip(), "2": "two\nlines", "3": 'say "hi", twice'}


def test_non_finite_and_out_of_range_numbers_are_quarantined(spark, tmp_path):
    """Issue 19.6: Infinity, 1e309 and NaN were cleaned and scored; a declared range applies."""
    spec = _spec(tmp_path)
    lines = [
        TELCO_HEADER,
        telco_row("1", total="Infinity"),
        telco_row("2", total="1e309"),
        telco_row("3", tenure="NaN"),
        telco_row("4", total="-1e300"),
        telco_row("5"),
    ]
    raw = _read(spark, spec, _write(tmp_path / "n.csv", lines))
    result = cleaning.clean_customers(raw, spec, ranges={"TotalCharges": (0, None)})
    rows = {r[LINE_COL]: (r[REASON_COL], r[DETAIL_COL]) for r in result.quarantined.collect()}
    assert rows == {
        2: (NON_FINITE_NUMBER, "TotalCharges"),
        3: (NON_FINITE_NUMBER, "TotalCharges"),
        4: (NON_FINITE_NUMBER, "tenure"),
        5: (OUT_OF_RANGE, "TotalCharges"),
    }
    assert [r["customerID"] for r in result.cleaned.collect()] == ["5"]


def test_checks_and_fingerprint_come_from_the_layer_aggregate(spark, tmp_path):
    spec = _spec(tmp_path)
    lines = [TELCO_HEADER, telco_row("1"), telco_row("2", churn="Yes"), telco_row("2")]
    raw = _read(spark, spec, _write(tmp_path / "c.csv", lines))
    result = cleaning.clean_customers(raw, spec, schema=lambda n, c: cleaned_schema(spec, n, c))
    assert result.stats["quality:rows"] == 2 and result.stats["quality:ids"] == 2
    assert result.stats["schema_problems"] == {}
    again = cleaning.clean_customers(raw.orderBy(F.rand()), spec)
    assert again.fingerprint == result.fingerprint
    built = features.build_features(result.cleaned, spec, features_schema(spec))
    assert built.cleaned_fingerprint == result.fingerprint
    assert built.stats["schema_problems"] == {}
    assert FEATURES_COL not in built.features.columns
    assert sum(built.split_counts.values()) == 2
