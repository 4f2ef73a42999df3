"""Custom Spark ML stages of the platform's models, built only from JVM column functions.

They persist by their params alone (`DefaultParamsWritable`), so a model saved with
`PipelineModel.save` or `mlflow.spark` loads again and scores 10M rows without a Python UDF.
The class path is part of every saved model: moving a class breaks loading older models.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasInputCols, HasOutputCol, HasOutputCols
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable, DefaultParamsWriter
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.core.ops.files import local_path
from churn_platform.core.spark_setup import local_classic

EPSILON = 1e-6


def _driver_disk_folder(path: str, spark: SparkSession) -> Path | None:
    """`path` as a folder of the driver's own disk, when local Spark writes there too (an
    absolute path: a relative one is the JVM's, whose working folder may differ)."""
    folder = local_path(path) if local_classic(spark) else None
    return folder if folder is not None and folder.is_absolute() else None


class _MetadataWriter(DefaultParamsWriter):
    """A stage's params, its whole persisted state, written without a Spark job where local
    Spark writes to the driver's disk: the layout Spark's text writer leaves (one JSON line in
    `metadata/part-00000`, a `_SUCCESS` marker), which Spark's and MLflow's loads read. Spark
    spends a job on each: 44 of the 188 jobs that saved the demo's nine models."""

    def saveImpl(self, path: str) -> None:
        folder = _driver_disk_folder(path, self.sparkSession)
        if folder is None:
            super().saveImpl(path)
            return
        metadata = folder / "metadata"
        metadata.mkdir(parents=True)  # an existing one is an error, as for Spark's writer
        text = DefaultParamsWriter._get_metadata_to_save(self.instance, self.sparkSession)
        (metadata / "part-00000").write_text(f"{text}\n", encoding="utf-8")
        (metadata / "_SUCCESS").touch()


class _ParamsWritable(DefaultParamsWritable):
    def write(self) -> DefaultParamsWriter:
        return _MetadataWriter(self)


def _clipped_logit(col: Column, epsilon: float) -> Column:
    p = F.least(F.greatest(col, F.lit(epsilon)), F.lit(1.0 - epsilon))
    return F.log(p / (F.lit(1.0) - p))


class _ColumnToColumn(
    Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, _ParamsWritable
):
    """A stage from one input column to one output column, persisted by its params alone."""

    @keyword_only
    def __init__(self, *, inputCol: str | None = None, outputCol: str | None = None) -> None:
        super().__init__()
        self._set(**self._input_kwargs)


class PositiveProbability(_ColumnToColumn):
    """P(class 1) from a probability vector as a double: what metrics and ensembles consume."""

    def _transform(self, dataset: DataFrame) -> DataFrame:
        element = vector_to_array(F.col(self.getInputCol()))[1]
        return dataset.withColumn(self.getOutputCol(), element)


class _LogOdds(Transformer, HasInputCols, HasOutputCols, DefaultParamsReadable, _ParamsWritable):
    """A stage on the log-odds of probability columns, one output column per input column.

    Keyword arguments only (pyspark's `keyword_only`): the params of the class by name.
    """

    epsilon = Param(
        Params._dummy(),
        "epsilon",
        "probabilities are clipped to [epsilon, 1 - epsilon] so the log-odds stay finite",
        typeConverter=TypeConverters.toFloat,
    )

    @keyword_only
    def __init__(self, **params: Any) -> None:
        super().__init__()
        self._setDefault(epsilon=EPSILON)
        self._set(**self._input_kwargs)

    def _log_odds(self) -> list[tuple[str, Column]]:
        """(output column, clipped log-odds of its input column) pairs."""
        eps = self.getOrDefault(self.epsilon)
        return [
            (out, _clipped_logit(F.col(inp), eps))
            for inp, out in zip(self.getInputCols(), self.getOutputCols(), strict=True)
        ]


class Logit(_LogOdds):
    """Log-odds of probability columns: the scale on which a meta-learner combines models.

    Params: inputCols, outputCols, epsilon.
    """

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return dataset.withColumns(dict(self._log_odds()))


class PlattScaler(_LogOdds):
    """sigmoid(slope * logit(p) + intercept) per column: puts models on one probability scale.

    Params: inputCols, outputCols, slopes, intercepts, epsilon.
    """

    slopes = Param(
        Params._dummy(), "slopes", "one slope per input column", TypeConverters.toListFloat
    )
    intercepts = Param(
        Params._dummy(), "intercepts", "one intercept per input column", TypeConverters.toListFloat
    )

    def _transform(self, dataset: DataFrame) -> DataFrame:
        affine = zip(
            self.getOrDefault(self.slopes), self.getOrDefault(self.intercepts), strict=True
        )
        return dataset.withColumns(
            {
                out: F.lit(1.0) / (F.lit(1.0) + F.exp(-(F.lit(a) * logit + F.lit(b))))
                for (out, logit), (a, b) in zip(self._log_odds(), affine, strict=True)
            }
        )


class WeightedAverage(
    Transformer, HasInputCols, HasOutputCol, DefaultParamsReadable, _ParamsWritable
):
    """Weighted mean of probability columns: the combiner of bagging and soft voting."""

    weights = Param(
        Params._dummy(), "weights", "one weight per input column", TypeConverters.toListFloat
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        weights: list[float] | None = None,
        outputCol: str | None = None,
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    def getWeights(self) -> list[float]:
        return self.getOrDefault(self.weights)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        terms = [
            F.lit(w) * F.col(c) for c, w in zip(self.getInputCols(), self.getWeights(), strict=True)
        ]
        return dataset.withColumn(self.getOutputCol(), functools.reduce(Column.__add__, terms))


class DropColumns(Transformer, DefaultParamsReadable, _ParamsWritable):
    """Removes a model's intermediate columns so scoring output is the input plus one column."""

    columns = Param(Params._dummy(), "columns", "columns to drop", TypeConverters.toListString)

    @keyword_only
    def __init__(self, *, columns: list[str] | None = None) -> None:
        super().__init__()
        self._setDefault(columns=[])
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return dataset.drop(*self.getOrDefault(self.columns))


class RenameColumn(_ColumnToColumn):
    """Renames a column: turns a reused base model's `churn_probability` into its ensemble input."""

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return dataset.withColumnRenamed(self.getInputCol(), self.getOutputCol())


class SignedLog(_ColumnToColumn):
    """The vector with sign(x) * log(1 + |x|) of some of its slots appended.

    A logistic regression is linear in its inputs; churn risk falls steeply over a customer's
    first months and then flattens, which a log scale of tenure or charges expresses.
    Params: inputCol, outputCol, slots (indices of the input slots to add on a log scale).
    """

    slots = Param(Params._dummy(), "slots", "input slots to append", TypeConverters.toListInt)

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str | None = None,
        outputCol: str | None = None,
        slots: list[int] | None = None,
    ) -> None:
        given = self._input_kwargs  # the parent's `keyword_only` __init__ resets it
        super().__init__()
        self._setDefault(slots=[])
        self._set(**given)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        slots = self.getOrDefault(self.slots)
        if not slots:
            return dataset.withColumn(self.getOutputCol(), F.col(self.getInputCol()))
        values = vector_to_array(F.col(self.getInputCol()))
        logs = [F.signum(values[i]) * F.log1p(F.abs(values[i])) for i in slots]
        return dataset.withColumn(
            self.getOutputCol(), array_to_vector(F.concat(values, F.array(*logs)))
        )
