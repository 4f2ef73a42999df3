"""Pure Spark functions for the data layers: read sources, clean with quarantine, build features.

No Dagster here: assets wrap these functions, and the benchmark's plain-PySpark baseline calls
them directly, so both measure the same transformations.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import Imputer, OneHotEncoder, StringIndexer, VectorAssembler
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from churn_platform.config import DatasetSpec, SourceSpec
from churn_platform.core.privacy import redact_message

# Bookkeeping columns carried from raw into quarantine; never features.
SOURCE_COL = "_source"
FILE_COL = "_file"
LINE_COL = "_line"
ERROR_COL = "_error"
BATCH_COL = "_batch"
BATCH_ORDER_COL = "_batch_order"
META_COLS = (SOURCE_COL, FILE_COL, LINE_COL, ERROR_COL, BATCH_COL, BATCH_ORDER_COL)

LABEL_COL = "label"
SPLIT_COL = "split"
FOLD_COL = "fold"
FEATURES_COL = "features"
REASON_COL = "reason"
DETAIL_COL = "detail"

# Quarantine reasons, one vocabulary across every layer and report.
MALFORMED_LINE = "malformed_line"
WRONG_FIELD_COUNT = "wrong_field_count"
INVALID_ENCODING = "invalid_encoding"
MISSING_ID = "missing_id"
MISSING_TARGET = "missing_target"
UNKNOWN_TARGET = "unknown_target"
UNPARSEABLE_NUMBER = "unparseable_number"
DUPLICATE_ID = "duplicate_id"

SERVICE_COLUMNS = (
    "PhoneService",
    "MultipleLines",
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
    "StreamingTV",
    "StreamingMovies",
)

# Telco engineered features: name -> columns they need. A spec opts in by listing the name.
ENGINEERED_FEATURES: dict[str, tuple[str, ...]] = {
    "tenure_bucket": ("tenure",),
    "num_services": ("InternetService", *SERVICE_COLUMNS),
    "charges_per_tenure_month": ("TotalCharges", "tenure"),
    "contract_payment": ("Contract", "PaymentMethod"),
    "auto_pay": ("PaymentMethod",),
}
ENGINEERED_CATEGORICAL = ("tenure_bucket", "contract_payment")


class InputDataError(ValueError):
    """Input that cannot be read at all; the message names the file and the column or row."""


# ---------------------------------------------------------------------------------------------
# Reading


def file_sha256(path: Path) -> str:
    """Content hash of a file or of every file below a folder (sorted, so it is stable)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        if path.is_dir():
            digest.update(str(item.relative_to(path)).encode())
        with item.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_csv_header(path: Path, delimiter: str) -> list[str]:
    """Column names from the first line; a UTF-8 BOM and CRLF are accepted."""
    if not path.is_file():
        raise InputDataError(f"{path}: file not found")
    with path.open("rb") as handle:
        first = handle.readline()
    if not first.strip():
        raise InputDataError(f"{path}: the file is empty (no header line)")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: line 1 (header) is not valid UTF-8: {exc.reason}") from exc
    names = next(csv.reader(io.StringIO(text.rstrip("\r\n")), delimiter=delimiter))
    names = [n.strip() for n in names]
    if len(set(names)) != len(names) or not all(names):
        raise InputDataError(f"{path}: the header has blank or repeated column names: {names}")
    refuse_case_duplicates(names, str(path))
    return names


def refuse_case_duplicates(names: list[str], where: str) -> None:
    """Spark resolves column names case-insensitively: `TENURE` beside `tenure` is ambiguous."""
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise InputDataError(
                f"{where}: columns {seen[name.lower()]!r} and {name!r} differ only in case; "
                "rename one (Spark cannot tell them apart)"
            )
        seen[name.lower()] = name


def with_line_numbers(df: DataFrame, first_line: int = 1) -> DataFrame:
    """Number rows in file order without a Python round trip.

    monotonically_increasing_id() encodes (partition, index in partition); adding the row counts
    of earlier partitions turns it into a dense line number. Valid for a scan of one file, whose
    partitions follow the file's byte order.
    """
    tagged = df.withColumn("_pid", F.spark_partition_id()).withColumn(
        "_mid", F.monotonically_increasing_id()
    )
    counts = sorted((row["_pid"], row["count"]) for row in tagged.groupBy("_pid").count().collect())
    offsets: dict[int, int] = {}
    running = 0
    for pid, count in counts:
        offsets[pid] = running
        running += count
    offset_map = F.create_map(*[F.lit(x) for pair in offsets.items() for x in pair])
    local_index = F.col("_mid") - F.shiftleft(F.col("_pid").cast("long"), 33)
    offset = offset_map[F.col("_pid")] if offsets else F.lit(0)
    return tagged.withColumn(
        LINE_COL, (offset + local_index + F.lit(first_line)).cast("long")
    ).drop("_pid", "_mid")


def _field_count(value: Column, delimiter: str) -> Column:
    """Fields in a CSV line: delimiters outside quoted sections, plus one."""
    unquoted = F.regexp_replace(value, '"([^"]|"")*"', "")
    return F.length(unquoted) - F.length(F.replace(unquoted, F.lit(delimiter))) + 1


def read_csv_source(spark: SparkSession, source: SourceSpec) -> DataFrame:
    """Read a CSV as text so every line keeps its number and malformed lines are flagged.

    Spark's CSV reader drops extra fields silently and skips blank lines, which would lose rows
    and shift line numbers; parsing each text line with from_csv keeps full control.
    """
    path = Path(str(source.path))
    names = read_csv_header(path, source.delimiter)
    lines = with_line_numbers(spark.read.text(str(path)))
    data = lines.where(F.col(LINE_COL) > 1)
    ddl = ", ".join(f"`c{i}` STRING" for i in range(len(names)))
    parsed = F.from_csv(F.col("value"), ddl, {"sep": source.delimiter, "mode": "PERMISSIVE"})
    fields = _field_count(F.col("value"), source.delimiter)
    error = (
        F.when(F.trim(F.col("value")) == "", F.lit(MALFORMED_LINE))
        .when(~F.is_valid_utf8(F.col("value")), F.lit(INVALID_ENCODING))
        .when(
            fields != len(names),
            F.concat(F.lit(f"{WRONG_FIELD_COUNT}:"), fields.cast("string")),
        )
    )
    return data.select(
        *[parsed[f"c{i}"].alias(name) for i, name in enumerate(names)],
        F.lit(source.name).alias(SOURCE_COL),
        F.lit(str(path)).alias(FILE_COL),
        F.col(LINE_COL),
        error.alias(ERROR_COL),
    )


def read_table_source(spark: SparkSession, source: SourceSpec) -> DataFrame:
    """Parquet or JDBC: typed sources, cast to text so raw has one shape for every format."""
    if source.format == "parquet":
        path = Path(str(source.path))
        if not path.exists():
            raise InputDataError(f"{path}: file not found")
        df = spark.read.parquet(str(path))
    else:
        reader = (
            spark.read.format("jdbc")
            .option("url", source.url)
            .option("dbtable", source.table)
            .option("driver", _jdbc_driver(source.url or ""))
        )
        if source.user:
            reader = reader.option("user", source.user)
        password = source.password()
        if password is not None:
            reader = reader.option("password", password)
        try:
            df = reader.load()
        except Exception as exc:  # Spark raises several types; all mean "cannot read this source"
            # Only the redacted first line: the driver's own error may echo the credentials.
            first_line = redact_message(
                str(exc).strip().splitlines()[0], source.url or "", password
            )
            raise InputDataError(
                f"source {source.name} ({source.location}): {first_line}"
            ) from None
    refuse_case_duplicates(df.columns, source.location)
    numbered = with_line_numbers(df)
    return numbered.select(
        *[F.col(f"`{c}`").cast("string").alias(c) for c in df.columns],
        F.lit(source.name).alias(SOURCE_COL),
        F.lit(source.location).alias(FILE_COL),
        F.col(LINE_COL),
        F.lit(None).cast("string").alias(ERROR_COL),
    )


def _jdbc_driver(url: str) -> str:
    drivers = {
        "jdbc:postgresql:": "org.postgresql.Driver",
        "jdbc:sqlite:": "org.sqlite.JDBC",
    }
    for prefix, driver in drivers.items():
        if url.startswith(prefix):
            return driver
    raise InputDataError(f"no JDBC driver known for {url.split('//')[0]}")


def read_source(spark: SparkSession, source: SourceSpec) -> DataFrame:
    if source.format == "csv":
        return read_csv_source(spark, source)
    return read_table_source(spark, source)


def source_fingerprint(spark: SparkSession, source: SourceSpec) -> str:
    """Content hash of a source: file bytes, or an order-free hash of a JDBC table's rows."""
    if source.format != "jdbc":
        return file_sha256(Path(str(source.path)))
    df = read_table_source(spark, source).drop(SOURCE_COL, FILE_COL, LINE_COL, ERROR_COL)
    row = df.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(
            F.pmod(F.xxhash64(*[F.col(f"`{c}`") for c in df.columns]), F.lit(1_000_000_007))
        ).alias("h"),
    ).first()
    return hashlib.sha256(f"{row['n']}:{row['h']}".encode()).hexdigest()


def require_columns(df: DataFrame, spec: DatasetSpec, where: str) -> None:
    missing = [c for c in spec.declared_columns if c not in df.columns]
    if missing:
        raise InputDataError(
            f"{where}: missing required column(s) {missing} named in the dataset spec "
            f"{spec.spec_file or spec.name}"
        )


def read_batch(
    spark: SparkSession,
    spec: DatasetSpec,
    sources: tuple[SourceSpec, ...],
    batch: str,
    batch_order: int,
) -> DataFrame:
    """One ingestion batch as raw text columns plus file/line bookkeeping.

    Secondary sources are left-joined to the first on the id column. Their malformed or
    duplicate rows are appended as error rows so that nothing read is lost.
    """
    frames = [read_source(spark, source) for source in sources]
    if len(frames) == 1:
        require_columns(frames[0], spec, str(sources[0].location))
        raw = frames[0]
    else:
        raw = _join_sources(frames, sources, spec)
    return raw.withColumn(BATCH_COL, F.lit(batch)).withColumn(
        BATCH_ORDER_COL, F.lit(batch_order).cast("long")
    )


def _join_sources(
    frames: list[DataFrame], sources: tuple[SourceSpec, ...], spec: DatasetSpec
) -> DataFrame:
    id_col = spec.id_column
    for frame, source in zip(frames, sources, strict=True):
        if id_col not in frame.columns:
            raise InputDataError(f"{source.location}: missing id column {id_col!r}")
    all_columns = set().union(*[set(f.columns) for f in frames])
    missing = [c for c in spec.declared_columns if c not in all_columns]
    if missing:
        locations = ", ".join(s.location for s in sources)
        raise InputDataError(
            f"missing required column(s) {missing} named in the dataset spec; "
            f"none of the sources has them: {locations}"
        )
    joined = frames[0]
    rejected: list[DataFrame] = []
    for frame in frames[1:]:
        own = [c for c in frame.columns if c not in joined.columns or c == id_col]
        trimmed_id = F.trim(F.col(id_col))
        ranked = frame.withColumn(
            "_rank",
            F.row_number().over(Window.partitionBy(trimmed_id).orderBy(F.col(LINE_COL).desc())),
        )
        usable = (F.col(ERROR_COL).isNull()) & (F.col("_rank") == 1) & (trimmed_id != "")
        rejected.append(
            ranked.where(~usable)
            .withColumn(ERROR_COL, F.coalesce(F.col(ERROR_COL), F.lit(DUPLICATE_ID)))
            .drop("_rank")
        )
        right = ranked.where(usable).select(
            *[F.col(c) for c in own if c != id_col], trimmed_id.alias("_join_id")
        )
        joined = joined.join(right, F.trim(F.col(id_col)) == F.col("_join_id"), "left").drop(
            "_join_id"
        )
    return (
        joined.unionByName(_union_all(rejected), allowMissingColumns=True) if rejected else joined
    )


def _union_all(frames: list[DataFrame]) -> DataFrame:
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame, allowMissingColumns=True)
    return result


# ---------------------------------------------------------------------------------------------
# Cleaning


@dataclass
class CleanResult:
    cleaned: DataFrame
    quarantined: DataFrame
    numeric: list[str]
    categorical: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    blanks: dict[str, int] = field(default_factory=dict)


def infer_roles(raw: DataFrame, spec: DatasetSpec) -> tuple[list[str], list[str]]:
    """Numeric and categorical columns: from the spec, or inferred from the values.

    A column is numeric when every non-blank value parses as a number.
    """
    if spec.roles_declared:
        return list(spec.numeric), list(spec.categorical)
    skip = {spec.id_column, spec.target.column, *spec.drop, *META_COLS}
    candidates = [c for c in raw.columns if c not in skip]
    valid = raw.where(F.col(ERROR_COL).isNull())
    aggs = []
    for c in candidates:
        value = F.trim(F.col(f"`{c}`"))
        present = value.isNotNull() & (value != "")
        aggs.append(F.sum(F.when(present, 1).otherwise(0)).alias(f"p_{c}"))
        aggs.append(
            F.sum(F.when(present & value.try_cast("double").isNull(), 1).otherwise(0)).alias(
                f"f_{c}"
            )
        )
    row = valid.agg(*aggs).first() if aggs else None
    numeric, categorical = [], []
    for c in candidates:
        present, failed = (row[f"p_{c}"] or 0, row[f"f_{c}"] or 0) if row else (0, 0)
        (numeric if present > 0 and failed == 0 else categorical).append(c)
    return numeric, categorical


def clean_customers(raw: DataFrame, spec: DatasetSpec, require_target: bool = True) -> CleanResult:
    """Typed, trimmed, de-duplicated customers plus every unusable row with a reason.

    A blank numeric value is a missing value (imputed downstream, counted here); text that does
    not parse as a number quarantines the row. Within a batch a repeated id is a duplicate
    (the last line wins); across batches the newest batch's record supersedes older ones.
    Scoring input may lack the target (`require_target=False`); its label is then null.
    """
    has_target = spec.target.column in raw.columns
    if require_target or has_target:
        require_columns(raw, spec, f"raw batch(es) of {spec.name}")
    else:
        missing = [c for c in spec.declared_columns if c not in raw.columns]
        missing.remove(spec.target.column)
        if missing:
            raise InputDataError(f"input lacks column(s) {missing} named in the dataset spec")
    numeric, categorical = infer_roles(raw, spec)
    id_col, target = spec.id_column, spec.target
    trimmed = raw.select(
        *[
            F.col(c) if c in META_COLS else F.nullif(F.trim(F.col(f"`{c}`")), F.lit("")).alias(c)
            for c in raw.columns
        ]
    )
    if has_target:
        label_value = F.col(f"`{target.column}`")
        label = F.when(label_value == target.positive, F.lit(1))
        label = (
            label.when(label_value == target.negative, F.lit(0))
            if target.negative is not None
            else label.otherwise(F.lit(0))
        )
    else:
        label_value = label = F.lit(None).cast("int")
    bad_number = [
        F.when(
            F.col(f"`{c}`").isNotNull() & F.col(f"`{c}`").try_cast("double").isNull(),
            F.lit(c),
        )
        for c in numeric
    ]
    first_bad_number = F.coalesce(*bad_number) if bad_number else F.lit(None).cast("string")
    reason = F.when(F.col(ERROR_COL).isNotNull(), F.split(F.col(ERROR_COL), ":")[0]).when(
        F.col(f"`{id_col}`").isNull(), F.lit(MISSING_ID)
    )
    if has_target:
        reason = reason.when(label_value.isNull(), F.lit(MISSING_TARGET)).when(
            label.isNull(), F.lit(UNKNOWN_TARGET)
        )
    reason = reason.when(first_bad_number.isNotNull(), F.lit(UNPARSEABLE_NUMBER))
    detail = (
        F.when(F.col(ERROR_COL).contains(":"), F.split(F.col(ERROR_COL), ":")[1])
        .when(reason == UNPARSEABLE_NUMBER, first_bad_number)
        .when(reason == UNKNOWN_TARGET, F.lit(target.column))
    )
    annotated = trimmed.withColumn(REASON_COL, reason).withColumn(DETAIL_COL, detail)
    keep_categorical = [c for c in categorical if c not in spec.drop]
    keep_numeric = [c for c in numeric if c not in spec.drop]
    stats = (
        annotated.groupBy(REASON_COL)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            *[
                F.sum(F.col(f"`{c}`").isNull().cast("long")).alias(f"blank_{c}")
                for c in keep_numeric
            ],
        )
        .collect()
    )

    within_batch = Window.partitionBy(F.col(f"`{id_col}`"), F.col(BATCH_COL)).orderBy(
        F.col(LINE_COL).desc()
    )
    across_batches = Window.partitionBy(F.col(f"`{id_col}`")).orderBy(F.col(BATCH_ORDER_COL).desc())
    ranked = (
        annotated.where(F.col(REASON_COL).isNull())
        .withColumn("_dup", F.row_number().over(within_batch))
        .withColumn("_newest", F.dense_rank().over(across_batches))
        .persist()
    )
    flags = ranked.agg(
        F.sum((F.col("_dup") > 1).cast("long")).alias("dups"),
        F.sum(((F.col("_dup") == 1) & (F.col("_newest") > 1)).cast("long")).alias("superseded"),
        F.sum(((F.col("_dup") == 1) & (F.col("_newest") == 1)).cast("long")).alias("kept"),
    ).first()

    duplicates = (
        ranked.where(F.col("_dup") > 1)
        .withColumn(REASON_COL, F.lit(DUPLICATE_ID))
        .withColumn(DETAIL_COL, F.lit("a later line of the same batch has this id"))
    )
    raw_columns = [c for c in raw.columns if c not in META_COLS]
    quarantine_cols = [
        REASON_COL,
        DETAIL_COL,
        SOURCE_COL,
        FILE_COL,
        LINE_COL,
        BATCH_COL,
    ]
    quarantined = (
        annotated.where(F.col(REASON_COL).isNotNull())
        .unionByName(duplicates.drop("_dup", "_newest"))
        .select(*quarantine_cols, *[F.col(f"`{c}`") for c in raw_columns])
    )
    current = ranked.where((F.col("_dup") == 1) & (F.col("_newest") == 1))
    cleaned = current.select(
        F.col(f"`{id_col}`").alias(id_col),
        label.cast("int").alias(LABEL_COL),
        *[F.col(f"`{c}`").alias(c) for c in keep_categorical],
        *[F.col(f"`{c}`").try_cast("double").alias(c) for c in keep_numeric],
        F.col(BATCH_COL),
        F.col(BATCH_ORDER_COL),
    )

    reasons = {row[REASON_COL]: int(row["rows"]) for row in stats if row[REASON_COL] is not None}
    if flags["dups"]:
        reasons[DUPLICATE_ID] = int(flags["dups"])
    valid_stats = next((row for row in stats if row[REASON_COL] is None), None)
    return CleanResult(
        cleaned=cleaned,
        quarantined=quarantined,
        numeric=keep_numeric,
        categorical=keep_categorical,
        counts={
            "rows_in": sum(int(row["rows"]) for row in stats),
            "rows_out": int(flags["kept"] or 0),
            "rows_quarantined": sum(reasons.values()),
            "rows_superseded": int(flags["superseded"] or 0),
        },
        by_reason=dict(sorted(reasons.items())),
        blanks={c: int(valid_stats[f"blank_{c}"] or 0) if valid_stats else 0 for c in keep_numeric},
    )


# ---------------------------------------------------------------------------------------------
# Features


def engineer_features(cleaned: DataFrame, spec: DatasetSpec) -> DataFrame:
    """Add the engineered features the spec asks for, where their input columns exist."""
    df = cleaned
    wanted = [
        name
        for name in spec.engineered
        if name in ENGINEERED_FEATURES and all(c in df.columns for c in ENGINEERED_FEATURES[name])
    ]
    if "tenure_bucket" in wanted:
        tenure = F.col("tenure")
        df = df.withColumn(
            "tenure_bucket",
            F.when(tenure.isNull(), F.lit("unknown"))
            .when(tenure < 6, F.lit("0-6m"))
            .when(tenure < 12, F.lit("6-12m"))
            .when(tenure < 24, F.lit("1-2y"))
            .when(tenure < 48, F.lit("2-4y"))
            .otherwise(F.lit("4y+")),
        )
    if "num_services" in wanted:
        has_internet = F.when(F.col("InternetService") != "No", 1).otherwise(0)
        services = [F.when(F.col(c) == "Yes", 1).otherwise(0) for c in SERVICE_COLUMNS]
        total = has_internet
        for svc in services:
            total = total + svc
        df = df.withColumn("num_services", total.cast("double"))
    if "charges_per_tenure_month" in wanted:
        df = df.withColumn(
            "charges_per_tenure_month",
            F.col("TotalCharges") / F.greatest(F.col("tenure"), F.lit(1.0)),
        )
    if "contract_payment" in wanted:
        df = df.withColumn(
            "contract_payment",
            F.concat_ws("|", F.col("Contract"), F.col("PaymentMethod")),
        )
    if "auto_pay" in wanted:
        df = df.withColumn(
            "auto_pay",
            F.when(F.lower(F.col("PaymentMethod")).contains("automatic"), 1.0).otherwise(0.0),
        )
    return df


def feature_roles(engineered: DataFrame, spec: DatasetSpec) -> tuple[list[str], list[str]]:
    """(numeric, categorical) model inputs, read from the engineered table's types."""
    skip = {spec.id_column, LABEL_COL, SPLIT_COL, FOLD_COL, BATCH_COL, BATCH_ORDER_COL}
    numeric, categorical = [], []
    for fld in engineered.schema.fields:
        if fld.name in skip:
            continue
        if isinstance(fld.dataType, T.StringType):
            categorical.append(fld.name)
        elif isinstance(fld.dataType, T.NumericType):
            numeric.append(fld.name)
    return numeric, categorical


def _unit_hash(id_col: str, salt: str) -> Column:
    """A uniform number in [0, 1) from a customer id: stable for the id's whole life."""
    return F.pmod(F.xxhash64(F.lit(salt), F.col(f"`{id_col}`")), F.lit(1_000_003)) / F.lit(
        1_000_003.0
    )


def assign_split(df: DataFrame, spec: DatasetSpec) -> DataFrame:
    """Train/test split and CV fold from hashes of the id, applied per class.

    The same threshold applied within each label class keeps the split stratified in
    expectation, and since it depends only on the id, new customers never move old ones.
    """
    split_u = _unit_hash(spec.id_column, f"split:{spec.seed}")
    fold_u = _unit_hash(spec.id_column, f"fold:{spec.seed}")
    is_test = split_u < F.lit(spec.test_fraction)
    return df.withColumn(SPLIT_COL, F.when(is_test, "test").otherwise("train")).withColumn(
        FOLD_COL,
        F.when(is_test, F.lit(-1)).otherwise(F.floor(fold_u * spec.folds).cast("int")),
    )


def cap_training_rows(df: DataFrame, spec: DatasetSpec, max_rows: int) -> DataFrame:
    """Keep at most about `max_rows` training rows (a stable hash sample); test rows all stay.

    Past a few hundred thousand rows more training data barely moves these models, while
    cross-validated fits grow linearly; evaluation and scoring still use every row.
    """
    if max_rows <= 0:
        return df
    train_rows = df.where(F.col(SPLIT_COL) == "train").count()
    if train_rows <= max_rows:
        return df
    keep = _unit_hash(spec.id_column, f"sample:{spec.seed}") < F.lit(max_rows / train_rows)
    return df.where((F.col(SPLIT_COL) != "train") | keep)


def fit_feature_pipeline(
    train: DataFrame, numeric: list[str], categorical: list[str]
) -> PipelineModel:
    """Imputation, one-hot encoding and assembly, fitted on training rows only."""
    stages = []
    imputed = [f"{c}__imputed" for c in numeric]
    if numeric:
        stages.append(Imputer(inputCols=numeric, outputCols=imputed, strategy="median"))
    onehot = [f"{c}__onehot" for c in categorical]
    if categorical:
        indexed = [f"{c}__index" for c in categorical]
        stages.append(
            StringIndexer(
                inputCols=categorical,
                outputCols=indexed,
                handleInvalid="keep",
                stringOrderType="frequencyDesc",
            )
        )
        stages.append(
            OneHotEncoder(
                inputCols=indexed,
                outputCols=onehot,
                handleInvalid="keep",
                dropLast=True,
            )
        )
    stages.append(
        VectorAssembler(inputCols=imputed + onehot, outputCol=FEATURES_COL, handleInvalid="keep")
    )
    return Pipeline(stages=stages).fit(train)


@dataclass
class FeatureResult:
    features: DataFrame
    pipeline: PipelineModel
    numeric: list[str]
    categorical: list[str]


def build_features(cleaned: DataFrame, spec: DatasetSpec) -> FeatureResult:
    """Engineered columns, split/fold assignment and the model-ready `features` vector."""
    engineered = assign_split(engineer_features(cleaned, spec), spec).drop(
        BATCH_COL, BATCH_ORDER_COL
    )
    numeric, categorical = feature_roles(engineered, spec)
    engineered = engineered.persist()
    pipeline = fit_feature_pipeline(
        engineered.where(F.col(SPLIT_COL) == "train"), numeric, categorical
    )
    assembled = pipeline.transform(engineered)
    keep = [c for c in engineered.columns] + [FEATURES_COL]
    return FeatureResult(assembled.select(*keep), pipeline, numeric, categorical)


def content_fingerprint(df: DataFrame, exclude: tuple[str, ...] = ()) -> str:
    """Order-free hash of a table's rows: equal content gives an equal data version.

    Bookkeeping columns (batch names, vectors) are excluded so that the same customers arriving
    again in a new batch do not count as new data.
    """
    columns = sorted(c for c in df.columns if c not in exclude)
    row_hash = F.xxhash64(*[F.col(f"`{c}`") for c in columns])
    row = df.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.pmod(row_hash, F.lit(1_000_000_007))).alias("h1"),  # bounded: no ANSI overflow
        F.bit_xor(row_hash).alias("h2"),
    ).first()
    text = f"{','.join(columns)}|{row['n']}|{row['h1']}|{row['h2']}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]
