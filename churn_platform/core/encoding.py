"""A model's fitted feature pipeline as plain column expressions, for scoring many rows.

Running the fitted Imputer, StringIndexer, OneHotEncoder and VectorAssembler stages costs a
JVM UDF per column and a sparse vector per column and row. The vocabularies are small, so the
same vector is built here from `CASE` expressions over the labels and the imputation values the
stages learnt, and assembled once from an array of doubles. The vector is the stages' own,
slot for slot (compared in churn_platform_tests/test_scoring.py), so the classifier stages that
follow give the same probabilities. A linear model needs no vector at all: its terms are read
straight from the columns (`Encoding.terms`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.ml import PipelineModel
from pyspark.ml.feature import ImputerModel, OneHotEncoderModel, StringIndexerModel, VectorAssembler
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from churn_platform.core.columns import FEATURES_COL

# The assembled slots as an array of doubles: what reasons read instead of the vector.
SLOTS_COL = "__slots"
_INDEX_PREFIX = "__index:"


@dataclass(frozen=True)
class Imputed:
    """A numeric column, its missing values replaced by the value learnt in training."""

    column: str
    surrogate: float
    missing_value: float


@dataclass(frozen=True)
class Category:
    """A categorical column: its labels (slot order) and how many one-hot slots it fills.

    A value outside `labels` (or null) gets index len(labels), as StringIndexer's "keep".
    """

    column: str
    labels: tuple[str, ...]
    slots: int

    @property
    def index_col(self) -> str:
        return f"{_INDEX_PREFIX}{self.column}"


Input = Imputed | Category | str  # a plain numeric column is assembled as it is


def quote(name: str) -> str:
    """A column name as a SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def text(value: str) -> str:
    """A string as a SQL literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def number(value: float) -> str:
    """A double as a SQL literal that parses back to the same double (a bare 0.5 is DECIMAL)."""
    if math.isnan(value) or math.isinf(value):
        return f"CAST('{value!r}' AS DOUBLE)"
    return f"{float(value)!r}D"


def _numeric_value(item: Imputed | str, types: dict[str, str]) -> str:
    """A numeric assembler input's slot value (SQL over df's own columns)."""
    if isinstance(item, str):
        # VectorAssembler's "keep" puts NaN where a value is null.
        return f"coalesce(CAST({quote(item)} AS DOUBLE), {number(math.nan)})"
    value = f"CAST({quote(item.column)} AS DOUBLE)"
    missing = (
        f"isnan({value})"
        if math.isnan(item.missing_value)
        else f"{value} = {number(item.missing_value)}"
    )
    imputed = f"CASE WHEN {value} IS NULL OR {missing} THEN {number(item.surrogate)}"
    # The Imputer casts back to the column's own type before the assembler reads it.
    return f"CAST(CAST({imputed} ELSE {value} END AS {types[item.column]}) AS DOUBLE)"


def feature_stage_count(model: PipelineModel) -> int:
    """How many leading stages make the `features` vector (through its VectorAssembler)."""
    for index, stage in enumerate(model.stages):
        if isinstance(stage, VectorAssembler) and stage.getOutputCol() == FEATURES_COL:
            return index + 1
    raise ValueError(f"the model has no VectorAssembler producing '{FEATURES_COL}'")


def _columns(stage, single: str, multi: str) -> list[str]:
    return stage.getOrDefault(multi) if stage.isSet(multi) else [stage.getOrDefault(single)]


@dataclass(frozen=True)
class Encoding:
    """The inputs of the model's VectorAssembler, in slot order, and the stages they replace."""

    inputs: tuple[Input, ...]
    stage_count: int

    @property
    def categories(self) -> dict[str, tuple[str, ...]]:
        """Each categorical column with the values the model saw in training."""
        return {i.column: i.labels for i in self.inputs if isinstance(i, Category)}

    @property
    def columns(self) -> list[str]:
        """The dataset columns the vector encodes, in slot order, each once."""
        return list(dict.fromkeys(self.slot_columns))

    @property
    def slot_columns(self) -> tuple[str, ...]:
        """The dataset column behind each slot of the vector (one-hot slots share their column)."""
        owners: list[str] = []
        for item in self.inputs:
            if isinstance(item, Category):
                owners += [item.column] * item.slots
            else:
                owners.append(item.column if isinstance(item, Imputed) else item)
        return tuple(owners)

    def indexed(self, df: DataFrame) -> DataFrame:
        """`df` with each category's index as a column, computed once however often it is read."""
        indexes = []
        for item in self.inputs:
            if isinstance(item, Category):
                value = f"CAST({quote(item.column)} AS STRING)"
                unknown = len(item.labels)
                cases = " ".join(
                    f"WHEN {value} = {text(label)} THEN {k}" for k, label in enumerate(item.labels)
                )
                indexes.append(
                    f"CASE WHEN {value} IS NULL THEN {unknown} {cases} ELSE {unknown} END"
                    f" AS {quote(item.index_col)}"
                )
        return df.selectExpr("*", *indexes)

    def slots(self, types: dict[str, str]) -> list[str]:
        """One double per vector slot (SQL over `indexed(df)`); `types` are df's column types."""
        values: list[str] = []
        for item in self.inputs:
            if isinstance(item, Category):
                index = quote(item.index_col)
                values += [f"CAST({index} = {k} AS DOUBLE)" for k in range(item.slots)]
            else:
                values.append(_numeric_value(item, types))
        return values

    def terms(
        self, coefficients: Sequence[float], types: dict[str, str], vectored: bool = False
    ) -> list[tuple[str, str]]:
        """A linear model's terms over the vector, one per assembler input in slot order, as
        (dataset column, SQL): a numeric slot's coefficient times its value; a category's
        coefficient of its one-hot slot (the others add 0) as one `CASE` lookup. `vectored`:
        the frame has `vectors`' columns, and the terms read its index columns and slots;
        otherwise they read the columns themselves (a linear model needs no vector per row)."""
        terms: list[tuple[str, str]] = []
        slot = 0
        for item in self.inputs:
            if isinstance(item, Category):
                # Index k's coefficient; an index past the slots (dropLast) adds nothing.
                weights = [
                    number(float(coefficients[slot + k])) if k < item.slots else "0.0D"
                    for k in range(len(item.labels) + 1)
                ]
                if vectored:
                    value, keys = quote(item.index_col), [str(k) for k in range(item.slots)]
                else:
                    value, keys = (
                        f"CAST({quote(item.column)} AS STRING)",
                        list(map(text, item.labels)),
                    )
                cases = " ".join(f"WHEN {key} THEN {weights[k]}" for k, key in enumerate(keys))
                # No match: an index past the slots adds nothing; a value never seen (or null)
                # has the unseen index's coefficient.
                unknown = "0.0D" if vectored else weights[-1]
                terms.append(
                    (item.column, f"CASE {value} {cases} ELSE {unknown} END" if cases else unknown)
                )
                slot += item.slots
            else:
                column = item.column if isinstance(item, Imputed) else item
                value = f"{quote(SLOTS_COL)}[{slot}]" if vectored else _numeric_value(item, types)
                terms.append((column, f"{number(float(coefficients[slot]))} * {value}"))
                slot += 1
        return terms

    def unseen(self) -> dict[str, str]:
        """Per category (SQL over df's own columns): a value is present but was never seen in
        training."""
        flags = {}
        for item in self.inputs:
            if isinstance(item, Category):
                value = quote(item.column)
                seen = ", ".join(text(label) for label in item.labels)
                known = f" AND NOT CAST({value} AS STRING) IN ({seen})" if seen else ""
                flags[item.column] = f"{value} IS NOT NULL{known}"
        return flags

    def slotted(self, df: DataFrame) -> DataFrame:
        """`df` with the index columns and the slots array (no vector)."""
        slots = f"array({', '.join(self.slots(dict(df.dtypes)))}) AS {quote(SLOTS_COL)}"
        return self.indexed(df).selectExpr("*", slots)

    def vectors(self, df: DataFrame) -> DataFrame:
        """`df` with the index columns, the slots array and the `features` vector."""
        return self.slotted(df).withColumn(FEATURES_COL, array_to_vector(F.col(SLOTS_COL)))


def read_encoding(model: PipelineModel) -> Encoding:
    """The encoding a model's feature stages learnt: one Spark job (the imputation values).

    Only the stages `core.features.fit_feature_pipeline` fits are understood; any other stage,
    or a StringIndexer that does not keep unseen values, is refused with its name.
    """
    count = feature_stage_count(model)
    imputed: dict[str, Imputed] = {}
    labels: dict[str, tuple[str, tuple[str, ...]]] = {}
    onehot: dict[str, Category] = {}
    assembled: list[str] = []
    for stage in model.stages[:count]:
        if isinstance(stage, ImputerModel):
            inputs = _columns(stage, "inputCol", "inputCols")
            outputs = _columns(stage, "outputCol", "outputCols")
            surrogates = stage.surrogateDF.first().asDict()
            for column, output in zip(inputs, outputs, strict=True):
                value = surrogates[column]
                imputed[output] = Imputed(
                    column, math.nan if value is None else float(value), stage.getMissingValue()
                )
        elif isinstance(stage, StringIndexerModel):
            if stage.getHandleInvalid() != "keep":
                raise ValueError(f"StringIndexer handleInvalid={stage.getHandleInvalid()!r}")
            inputs = _columns(stage, "inputCol", "inputCols")
            outputs = _columns(stage, "outputCol", "outputCols")
            for column, output, vocabulary in zip(inputs, outputs, stage.labelsArray, strict=True):
                labels[output] = (column, tuple(vocabulary))
        elif isinstance(stage, OneHotEncoderModel):
            inputs = _columns(stage, "inputCol", "inputCols")
            outputs = _columns(stage, "outputCol", "outputCols")
            keep, drop = stage.getHandleInvalid() == "keep", stage.getDropLast()
            for index_col, output, size in zip(inputs, outputs, stage.categorySizes, strict=True):
                # OneHotEncoderModel's own rule for its vector size: one slot per category seen
                # in fitting (with StringIndexer's "keep", the unseen index is one of them),
                # one more for invalid values unless dropLast, one fewer with dropLast alone.
                slots = size + 1 if keep and not drop else size - 1 if drop and not keep else size
                column, vocabulary = labels[index_col]
                onehot[output] = Category(column, vocabulary, slots)
        elif isinstance(stage, VectorAssembler):
            assembled = stage.getInputCols()
        else:
            raise ValueError(f"feature stage {type(stage).__name__} has no column-expression form")
    return Encoding(
        tuple(imputed.get(c) or onehot.get(c) or c for c in assembled), stage_count=count
    )


def classifier(model: PipelineModel, encoding: Encoding) -> PipelineModel:
    """The stages after the feature pipeline: the `features` vector to `churn_probability`."""
    return PipelineModel(stages=model.stages[encoding.stage_count :])
