"""The cleaned layer: typed, de-duplicated customers and every unusable row with a reason.

One window over the id (valid rows first, newest batch first, last line first) decides which
record is current, which is a duplicate and which is superseded; when no id occurs twice (one
cheap job over the id column says so) the window is skipped. The layer's counts by reason,
blank counts, checks and content fingerprint are observed while the cleaned rows are written
(`CleanResult.write`), so the data is read once for the cleaned rows and once for quarantine.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandera.pyspark as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from churn_platform.config import DatasetSpec
from churn_platform.core import quality
from churn_platform.core.columns import (
    BATCH_COL,
    BATCH_ORDER_COL,
    DETAIL_COL,
    DUPLICATE_ID,
    ERROR_COL,
    FILE_COL,
    INVALID_ENCODING,
    LABEL_COL,
    LINE_COL,
    MALFORMED_LINE,
    META_COLS,
    MISSING_ID,
    MISSING_TARGET,
    NON_FINITE_NUMBER,
    OUT_OF_RANGE,
    REASON_COL,
    SOURCE_COL,
    UNKNOWN_TARGET,
    UNPARSEABLE_NUMBER,
    WRONG_FIELD_COUNT,
)
from churn_platform.core.input_files import InputDataError
from churn_platform.core.schemas import cleaned_schema, infer_roles
from churn_platform.core.sources import require_columns

REASONS = (
    MALFORMED_LINE,
    WRONG_FIELD_COUNT,
    INVALID_ENCODING,
    MISSING_ID,
    MISSING_TARGET,
    UNKNOWN_TARGET,
    UNPARSEABLE_NUMBER,
    NON_FINITE_NUMBER,
    OUT_OF_RANGE,
    DUPLICATE_ID,
)
QUARANTINE_COLS = (REASON_COL, DETAIL_COL, SOURCE_COL, FILE_COL, LINE_COL, BATCH_COL)
# Where the cleaned frame's own columns (id, label, typed values) sit in the cached frame.
_TYPED = "__typed__"
# The kept rows' content hash as a column: the fingerprint's three aggregates share it.
_ROW_HASH = "_row_hash"


@dataclass
class CleanResult(quality.LayerResult):
    """Both outputs (lazy frames), the roles, and the layer's numbers.

    `write` stores both outputs and takes the numbers from the same pass; `marked` is the frame
    the aggregates run over (every raw row, kept or quarantined).
    """

    cleaned: DataFrame
    quarantined: DataFrame
    marked: DataFrame
    windowed: bool
    replan: Callable[[bool], CleanResult] = field(repr=False)
    counting: list[Column] = field(repr=False)
    _count_row: dict[str, Any] | None = field(default=None, repr=False)

    def write(self, cleaned_path: Path, quarantine_path: Path) -> CleanResult:
        """Write both outputs as Parquet; the statistics are observed during the first write.

        Planned without the window, the written ids are counted anyway (the unique-ids check);
        if one repeats, the cleaned rows are written again through the window, whose result
        is returned. Quarantine is a second pass over the raw rows only when the first found
        rows to quarantine; otherwise its (empty) table is written without reading anything.
        The content fingerprint is recorded beside the cleaned rows for the feature layer.
        """
        observed, observation = quality.observed(self.marked, self.aggregates)
        observed.where(F.col("_kept")).select(*self.cleaned.columns).write.mode("error").parquet(
            str(cleaned_path)
        )
        written = self.cleaned.sparkSession.read.parquet(str(cleaned_path))
        stats = self._finish(dict(observation.get), written)
        if not self.windowed and stats["quality:ids"] < (stats["rows_out"] or 0):
            shutil.rmtree(cleaned_path)
            return self.replan(True).write(cleaned_path, quarantine_path)
        # Every row is kept, superseded or quarantined (duplicates carry a reason).
        quarantined = stats["rows_in"] - (stats["rows_out"] or 0) - (stats["rows_superseded"] or 0)
        rows = self.quarantined if quarantined else self.quarantined.limit(0)
        rows.write.mode("error").parquet(str(quarantine_path))
        self._stats = stats
        quality.record_fingerprint(cleaned_path, self.content, self.fingerprint)
        return self

    def settled(self) -> CleanResult:
        """The plan `window=None` chooses: this one while no id occurs twice among its rows
        (one job over the ids), else the plan through the id window. A caller can run it beside
        other work on this plan and switch only if the ids repeat."""
        if self.windowed or not _ids_repeat(self.marked, self.id_column):
            return self
        return self.replan(True)

    def _source(self) -> DataFrame:
        return self.marked

    def _table(self) -> DataFrame:
        return self.cleaned

    def _checked(self, table: DataFrame) -> DataFrame:
        return table.select(*[F.col(f"`{c}`") for c in self.content])

    def _counts(self) -> dict[str, Any]:
        """Rows in, out, superseded and quarantined by reason: the written layer's statistics,
        or for rows that are only read (`score`) one aggregate of these counts alone, without
        the id and schema checks that belong to a written layer (four Spark jobs fewer)."""
        if self._stats is not None:
            return self._stats
        if self._count_row is None:
            self._count_row = self.marked.agg(*self.counting).first().asDict()
        return self._count_row

    @property
    def by_reason(self) -> dict[str, int]:
        row = self._counts()
        return {r: int(row[f"reason:{r}"]) for r in REASONS if row[f"reason:{r}"]}

    @property
    def counts(self) -> dict[str, int]:
        row = self._counts()
        return {
            "rows_in": int(row["rows_in"] or 0),
            "rows_out": int(row["rows_out"] or 0),
            "rows_quarantined": sum(self.by_reason.values()),
            "rows_superseded": int(row["rows_superseded"] or 0),
        }

    @property
    def blanks(self) -> dict[str, int]:
        return {c: int(self.stats[f"blank:{c}"] or 0) for c in self.numeric}

    @property
    def fingerprint(self) -> str:
        return quality.fingerprint(self.content, self.stats)


def _first_column(flags: list[Column]) -> Column:
    return F.coalesce(*flags) if flags else F.lit(None).cast("string")


def _number_problems(
    numeric: list[str], ranges: Mapping[str, tuple[float | None, float | None]]
) -> tuple[Column, Column, Column]:
    """The first numeric column that does not parse, is not finite, or is out of its range."""
    unparseable, non_finite, outside = [], [], []
    for c in numeric:
        text, number = F.col(f"`{c}`"), F.col(f"`{_TYPED}{c}`")
        unparseable.append(F.when(text.isNotNull() & number.isNull(), F.lit(c)))
        non_finite.append(F.when(F.isnan(number) | (F.abs(number) == float("inf")), F.lit(c)))
        low, high = ranges.get(c, (None, None))
        if low is not None:
            outside.append(F.when(number < F.lit(float(low)), F.lit(c)))
        if high is not None:
            outside.append(F.when(number > F.lit(float(high)), F.lit(c)))
    return _first_column(unparseable), _first_column(non_finite), _first_column(outside)


def clean_customers(
    raw: DataFrame,
    spec: DatasetSpec,
    require_target: bool = True,
    schema: Callable[[list[str], list[str]], pa.DataFrameSchema] | None = None,
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    *,
    window: bool | None = None,
) -> CleanResult:
    """Typed, trimmed, de-duplicated customers plus every unusable row with a reason.

    A blank numeric value is a missing value (imputed downstream, counted here); text that does
    not parse as a finite number, or a number outside the column's declared range, quarantines
    the row. Within a batch a repeated id is a duplicate (the last line wins); across batches
    the newest batch's record supersedes older ones. Scoring input may lack the target
    (`require_target=False`); its label is then null. `schema(numeric, categorical)` gives the
    pandera schema whose rules join the aggregate.

    Only a repeated id needs the window over the ids. `window=None` asks one job whether any id
    repeats, so the returned frames are final; `window=False` skips that job: the asset's
    `write` switches to the window if the written ids repeat, and `score` asks `settled()`
    while it plans the scores.
    """
    has_target = spec.target.column in raw.columns
    if require_target or has_target:
        require_columns(raw, spec, f"raw batch(es) of {spec.name}")
    else:
        missing = [c for c in spec.scoring_columns if c not in raw.columns]
        if missing:
            raise InputDataError(f"input lacks column(s) {missing} named in the dataset spec")
    numeric, categorical = infer_roles(raw, spec)
    id_col, target = spec.id_column, spec.target
    keep_categorical = [c for c in categorical if c not in spec.drop]
    keep_numeric = [c for c in numeric if c not in spec.drop]
    raw_columns = [c for c in raw.columns if c not in META_COLS]
    trimmed = raw.select(
        *[
            F.col(c) if c in META_COLS else F.nullif(F.trim(F.col(f"`{c}`")), F.lit("")).alias(c)
            for c in raw.columns
        ]
    )
    typed = trimmed.select(
        "*", *[F.col(f"`{c}`").try_cast("double").alias(f"{_TYPED}{c}") for c in numeric]
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
    unparseable, non_finite, outside = _number_problems(numeric, ranges or {})
    reason = F.when(F.col(ERROR_COL).isNotNull(), F.split(F.col(ERROR_COL), ":")[0]).when(
        F.col(f"`{id_col}`").isNull(), F.lit(MISSING_ID)
    )
    if has_target:
        reason = reason.when(label_value.isNull(), F.lit(MISSING_TARGET)).when(
            label.isNull(), F.lit(UNKNOWN_TARGET)
        )
    reason = (
        reason.when(unparseable.isNotNull(), F.lit(UNPARSEABLE_NUMBER))
        .when(non_finite.isNotNull(), F.lit(NON_FINITE_NUMBER))
        .when(outside.isNotNull(), F.lit(OUT_OF_RANGE))
    )
    detail = (
        F.when(F.col(ERROR_COL).contains(":"), F.split(F.col(ERROR_COL), ":")[1])
        .when(reason == UNPARSEABLE_NUMBER, unparseable)
        .when(reason == NON_FINITE_NUMBER, non_finite)
        .when(reason == OUT_OF_RANGE, outside)
        .when(reason == UNKNOWN_TARGET, F.lit(target.column))
    )
    annotated = typed.withColumn(REASON_COL, reason).withColumn(DETAIL_COL, detail)

    def plan(windowed: bool) -> CleanResult:
        return _plan(
            annotated,
            label,
            id_col,
            keep_categorical,
            keep_numeric,
            raw_columns,
            schema,
            windowed,
            plan,
        )

    return plan(False).settled() if window is None else plan(window)


def _plan(
    annotated: DataFrame,
    label: Column,
    id_col: str,
    keep_categorical: list[str],
    keep_numeric: list[str],
    raw_columns: list[str],
    schema: Callable[[list[str], list[str]], pa.DataFrameSchema] | None,
    windowed: bool,
    replan: Callable[[bool], CleanResult],
) -> CleanResult:
    """The marked rows, both outputs and the layer's aggregates, with or without the window."""
    valid = F.col(REASON_COL).isNull()
    if windowed:
        order = Window.partitionBy(F.col(f"`{id_col}`")).orderBy(
            valid.desc(), F.col(BATCH_ORDER_COL).desc(), F.col(LINE_COL).desc()
        )
        ranked = annotated.withColumn("_rank", F.row_number().over(order)).withColumn(
            "_newer_batch", F.lag(BATCH_COL).over(order)
        )
    else:  # every id occurs once: each row is first of its id, no shuffle needed
        ranked = annotated.withColumn("_rank", F.lit(1)).withColumn(
            "_newer_batch", F.lit(None).cast("string")
        )
    later = valid & (F.col("_rank") > 1)
    duplicate = later & (F.col("_newer_batch") == F.col(BATCH_COL))
    marked = (
        ranked.withColumn("_kept", valid & (F.col("_rank") == 1))
        .withColumn("_superseded", later & ~duplicate)
        .withColumn("_valid", valid)
        .withColumn(
            DETAIL_COL,
            F.when(duplicate, F.lit("a later line of the same batch has this id")).otherwise(
                F.col(DETAIL_COL)
            ),
        )
        .withColumn(REASON_COL, F.when(duplicate, F.lit(DUPLICATE_ID)).otherwise(F.col(REASON_COL)))
        .withColumn(f"{_TYPED}{LABEL_COL}", label.cast("int"))
        .drop("_rank", "_newer_batch")
    )
    cleaned_columns = [
        F.col(f"`{id_col}`").alias(id_col),
        F.col(f"`{_TYPED}{LABEL_COL}`").alias(LABEL_COL),
        *[F.col(f"`{c}`").alias(c) for c in keep_categorical],
        *[F.col(f"`{_TYPED}{c}`").alias(c) for c in keep_numeric],
    ]
    batch_columns = [F.col(BATCH_COL), F.col(BATCH_ORDER_COL)]
    content = [id_col, LABEL_COL, *keep_categorical, *keep_numeric]
    layer_schema = schema(keep_numeric, keep_categorical) if schema else None
    # Over the marked rows, in the names of the cleaned columns (kept rows only where it says).
    view = marked.select(
        *cleaned_columns,
        *batch_columns,
        "_kept",
        "_superseded",
        "_valid",
        F.col(REASON_COL).alias("_reason"),
    )
    kept = F.col("_kept")
    view = view.withColumn(_ROW_HASH, F.when(kept, quality.row_hash(content)))
    counting = [
        F.count(F.lit(1)).alias("rows_in"),
        F.sum(kept.cast("long")).alias("rows_out"),
        F.sum(F.col("_superseded").cast("long")).alias("rows_superseded"),
        *[F.sum((F.col("_reason") == r).cast("long")).alias(f"reason:{r}") for r in REASONS],
    ]
    aggregates = [
        *counting,
        *[
            F.sum((F.col("_valid") & F.col(f"`{c}`").isNull()).cast("long")).alias(f"blank:{c}")
            for c in keep_numeric
        ],
        *quality.quality_aggregates(content, LABEL_COL, where=kept),
        *quality.fingerprint_aggregates(F.col(_ROW_HASH)),
        *(quality.schema_aggregates(layer_schema, where=kept) if layer_schema else []),
    ]
    return CleanResult(
        cleaned=view.where(kept).select(*content, BATCH_COL, BATCH_ORDER_COL),
        quarantined=marked.where(F.col(REASON_COL).isNotNull()).select(
            *QUARANTINE_COLS, *[F.col(f"`{c}`") for c in raw_columns]
        ),
        numeric=keep_numeric,
        categorical=keep_categorical,
        id_column=id_col,
        content=content,
        marked=view,
        aggregates=aggregates,
        counting=counting,
        schema=layer_schema,
        windowed=windowed,
        replan=replan,
    )


def clean_layer(raw: DataFrame, spec: DatasetSpec) -> CleanResult:
    """The cleaned layer as the platform builds it from the raw layer: the spec's value ranges,
    the layer schema's rules observed by the write, and the id window planned only if the written
    ids repeat (`window=False`). The asset and the data-layer benchmark both call this."""
    return clean_customers(
        raw,
        spec,
        schema=lambda numeric, categorical: cleaned_schema(spec, numeric, categorical),
        ranges=spec.ranges,
        window=False,
    )


def _ids_repeat(annotated: DataFrame, id_col: str) -> bool:
    """Whether any id occurs on more than one row: one job over the id column alone."""
    ids = annotated.select(F.col(f"`{id_col}`").alias("_id")).where(F.col("_id").isNotNull())
    return bool(ids.groupBy("_id").count().where(F.col("count") > 1).limit(1).collect())
