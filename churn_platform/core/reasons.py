"""Reason codes: the three features that move each customer's churn risk most, and which way.

A logistic-regression champion is explained exactly: a feature's contribution is its coefficient
times the customer's distance from the reference customer (the mean of the reference rows, the
training split where there is one), so a customer's contributions add up to their log-odds
minus the reference's (`baseline_log_odds`). Any other champion (trees, ensembles) is explained
by a surrogate: a ridge-regularised linear model of the champion's log-odds, fitted on the
scored customers, whose contributions add up the same way to the surrogate's log-odds; its
fidelity (R² against the champion's log-odds over every scored customer) is reported with it.
One-hot slots are summed back into the column they encode, so a reason reads
`Contract = Month-to-month`, never one slot of it. Everything runs as Spark column expressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegressionModel
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.regression import LinearRegression
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from churn_platform.core.columns import FEATURES_COL
from churn_platform.core.models.explain import vector_feature_names
from churn_platform.core.models.fitting import PROBABILITY_COL
from churn_platform.core.models.stages import DropColumns, PositiveProbability

REASONS_COL = "reasons"
TOP_REASONS = 3
EXACT, SURROGATE = "exact", "surrogate"
# The surrogate is fitted on at most this many scored customers (its R² is measured on all).
SURROGATE_MAX_ROWS = 200_000
# Ridge strength: one-hot columns and the engineered combinations of them are collinear.
SURROGATE_REG_PARAM = 1e-3
# Tree leaves give probabilities of exactly 0 or 1; their log-odds are clipped to +-6.9.
LOGIT_CLIP = 1e-3
# Suffixes core.features gives the columns it assembles (numeric imputed, categorical encoded).
_SLOT_SUFFIXES = ("__imputed", "__onehot")
_X = "__reasons_x"


@dataclass(frozen=True)
class Attribution:
    """A linear log-odds model over the feature vector and the reference customer's vector."""

    method: str
    coefficients: np.ndarray
    intercept: float
    reference: np.ndarray
    slot_columns: tuple[str, ...]
    fidelity_r2: float | None = None

    @property
    def baseline_log_odds(self) -> float:
        """The reference customer's log-odds: every customer's contributions start from here."""
        return float(self.intercept + self.coefficients @ self.reference)

    def metadata(self) -> dict[str, Any]:
        described = {"reasons_method": self.method, "baseline_log_odds": self.baseline_log_odds}
        if self.fidelity_r2 is not None:
            described["reasons_surrogate_r2"] = self.fidelity_r2
        return described


def feature_stage_count(model: PipelineModel) -> int:
    """How many leading stages make the `features` vector (through its VectorAssembler)."""
    for index, stage in enumerate(model.stages):
        if isinstance(stage, VectorAssembler) and stage.getOutputCol() == FEATURES_COL:
            return index + 1
    raise ValueError(f"the model has no VectorAssembler producing '{FEATURES_COL}'")


def feature_model(model: PipelineModel) -> PipelineModel:
    """The champion's own feature pipeline: engineered columns to the `features` vector."""
    return PipelineModel(stages=model.stages[: feature_stage_count(model)])


def exact_logistic(model: PipelineModel) -> LogisticRegressionModel | None:
    """The logistic regression whose P(churn) is the model's output, if that is all it is."""
    head = [s for s in model.stages[feature_stage_count(model) :] if not isinstance(s, DropColumns)]
    if len(head) != 2:
        return None
    lr, positive = head
    if not (isinstance(lr, LogisticRegressionModel) and isinstance(positive, PositiveProbability)):
        return None
    if lr.numClasses != 2 or lr.getFeaturesCol() != FEATURES_COL:
        return None
    wired = positive.getInputCol() == lr.getProbabilityCol()
    return lr if wired and positive.getOutputCol() == PROBABILITY_COL else None


def slot_columns(model: PipelineModel, vectors: DataFrame) -> tuple[str, ...]:
    """The dataset column behind each slot of the vector (one-hot slots share their column)."""
    assembler = model.stages[feature_stage_count(model) - 1]
    inputs = sorted(assembler.getInputCols(), key=len, reverse=True)
    sources = []
    for name in vector_feature_names(vectors):
        owner = next((c for c in inputs if name == c or name.startswith(f"{c}_")), None)
        if owner is None:
            raise ValueError(f"vector slot {name!r} matches no assembled column")
        for suffix in _SLOT_SUFFIXES:
            owner = owner.removesuffix(suffix)
        sources.append(owner)
    return tuple(sources)


def mean_vector(vectors: DataFrame) -> np.ndarray:
    """The mean feature vector (one Spark job): the reference customer."""
    row = vectors.select(Summarizer.mean(F.col(FEATURES_COL)).alias("mean")).first()
    return row["mean"].toArray() if row and row["mean"] is not None else np.array([])


def _log_odds(probability: Column) -> Column:
    p = F.least(F.greatest(probability, F.lit(LOGIT_CLIP)), F.lit(1.0 - LOGIT_CLIP))
    return F.log(p / (F.lit(1.0) - p))


def _linear(coefficients: np.ndarray, intercept: float) -> Column:
    terms = [F.lit(float(c)) * F.col(_X)[j] for j, c in enumerate(coefficients) if c != 0.0]
    return sum(terms, F.lit(float(intercept)))


def fit_attribution(model: PipelineModel, scored: DataFrame, reference: DataFrame) -> Attribution:
    """The exact decomposition for a logistic regression, else a surrogate with its R².

    `scored` carries `features` and `churn_probability` (the model's output); `reference` the
    `features` of the reference customers. Both are scanned; cache them first.
    """
    sources = slot_columns(model, scored)
    mean = mean_vector(reference)
    if mean.size != len(sources):
        mean = mean_vector(scored)
    lr = exact_logistic(model)
    if lr is not None:
        return Attribution(
            EXACT, lr.coefficients.toArray(), float(lr.intercept), mean, sources, None
        )
    rows = scored.count()
    if rows == 0:
        return Attribution(SURROGATE, np.zeros(len(sources)), 0.0, mean, sources, float("nan"))
    sample = (
        scored if rows <= SURROGATE_MAX_ROWS else scored.sample(SURROGATE_MAX_ROWS / rows, seed=0)
    )
    surrogate = LinearRegression(
        featuresCol=FEATURES_COL,
        labelCol="log_odds",
        regParam=SURROGATE_REG_PARAM,
        elasticNetParam=0.0,
        solver="normal",
    ).fit(sample.select(FEATURES_COL, _log_odds(F.col(PROBABILITY_COL)).alias("log_odds")))
    coefficients, intercept = surrogate.coefficients.toArray(), float(surrogate.intercept)
    target = _log_odds(F.col(PROBABILITY_COL))
    fitted = _with_vector_array(scored).select(
        target.alias("y"),
        _linear(coefficients, intercept).alias("f"),
    )
    stats = fitted.agg(
        F.sum((F.col("y") - F.col("f")) ** 2).alias("residual"),
        F.count(F.lit(1)).alias("n"),
        F.var_pop("y").alias("variance"),
    ).first()
    total = (stats["variance"] or 0.0) * stats["n"]
    r2 = 1.0 - stats["residual"] / total if total > 0 else float("nan")
    return Attribution(SURROGATE, coefficients, intercept, mean, sources, float(r2))


def _with_vector_array(df: DataFrame) -> DataFrame:
    return df.withColumn(_X, vector_to_array(F.col(FEATURES_COL)))


def contributions(attribution: Attribution) -> dict[str, Column]:
    """Each dataset column's contribution to the log-odds, relative to the reference customer.

    The expressions read the vector as an array column; use them through `with_contributions`
    or `with_reasons`.
    """
    by_column: dict[str, list[int]] = {}
    for slot, column in enumerate(attribution.slot_columns):
        by_column.setdefault(column, []).append(slot)
    coefficients, reference = attribution.coefficients, attribution.reference
    expressions = {}
    for column, slots in by_column.items():
        offset = float(sum(coefficients[j] * reference[j] for j in slots))
        terms = [F.lit(float(coefficients[j])) * F.col(_X)[j] for j in slots if coefficients[j]]
        expressions[column] = sum(terms, F.lit(0.0)) - F.lit(offset)
    return expressions


def with_contributions(df: DataFrame, attribution: Attribution) -> DataFrame:
    """`contribution:<column>` for every dataset column (what the tests and audits check)."""
    expressions = contributions(attribution)
    return (
        _with_vector_array(df)
        .select("*", *[e.alias(f"contribution:{c}") for c, e in expressions.items()])
        .drop(_X)
    )


def _shown(df: DataFrame, column: str) -> Column:
    """The customer's value as the retention team reads it: whole numbers without `.0`."""
    value = F.col(f"`{column}`")
    if dict(df.dtypes)[column] == "string":
        shown = value
    else:
        number = value.cast("double")
        shown = F.when(number == F.floor(number), number.cast("long").cast("string")).otherwise(
            F.round(number, 2).cast("string")
        )
    return F.coalesce(shown, F.lit("missing"))


def with_reasons(df: DataFrame, attribution: Attribution) -> DataFrame:
    """Add `reasons`: the top three (feature, value, contribution) by size of contribution.

    `df` holds the `features` vector and the dataset columns it was built from.
    """
    items = [
        F.struct(
            F.abs(expression).alias("weight"),
            F.lit(column).alias("feature"),
            _shown(df, column).alias("value"),
            expression.alias("contribution"),
        )
        for column, expression in contributions(attribution).items()
    ]
    ranked = F.slice(F.sort_array(F.array(*items), asc=False), 1, TOP_REASONS)
    reasons = F.transform(
        ranked,
        lambda r: F.struct(
            r["feature"].alias("feature"),
            r["value"].alias("value"),
            r["contribution"].alias("contribution"),
        ),
    )
    return _with_vector_array(df).withColumn(REASONS_COL, reasons).drop(_X)


def reason_text(reasons: Column, index: int) -> Column:
    """Reason `index` (0-based) as one cell, `Contract=Month-to-month (+0.82)`, for CSV files."""
    reason = F.get(reasons, index)
    return F.when(
        reason.isNotNull(),
        F.format_string(
            "%s=%s (%+.2f)", reason["feature"], reason["value"], reason["contribution"]
        ),
    )
