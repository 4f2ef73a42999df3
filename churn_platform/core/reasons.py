"""Reason codes: the three features that move each customer's churn risk most, and which way.

A logistic-regression champion is explained exactly: a feature's contribution is its coefficient
times the customer's distance from the reference customer (the mean of the training rows, which
training measures on its cached rows and logs with the model; else of the reference rows
scoring is given), so a customer's contributions add up to their log-odds minus the
reference's (`baseline_log_odds`). Any other champion (trees, ensembles) is explained
by a surrogate: a ridge-regularised linear model of the champion's log-odds, fitted on the
scored customers, whose contributions add up the same way to the surrogate's log-odds; its
fidelity (R² against the champion's log-odds over every scored customer) is measured while the
scores are written (`fidelity_aggregates`). One-hot slots are summed back into the column they
encode, so a reason reads `Contract = Month-to-month`, never one slot of it. The batch scores
keep the attribution they were explained with (`save_attribution`): a file scored later by the
same model is explained the same way, without the reference's and the surrogate's Spark jobs
(`core.attribution`).

Everything is a Spark column expression without higher-order functions (a lambda makes Spark
interpret the whole expression under it row by row instead of compiling it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegressionModel
from pyspark.ml.functions import vector_to_array
from pyspark.ml.regression import LinearRegression
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from churn_platform.core.attribution import EXACT, SURROGATE, Attribution
from churn_platform.core.columns import FEATURES_COL, PROBABILITY_COL
from churn_platform.core.encoding import (
    SLOTS_COL,
    Encoding,
    number,
    quote,
    text,
)
from churn_platform.core.models.stages import DropColumns, PositiveProbability, SignedLog

LOG = logging.getLogger(__name__)
REASONS_COL = "reasons"
TOP_REASONS = 3
# The surrogate is fitted on at most this many scored customers (its R² is measured on all).
SURROGATE_MAX_ROWS = 200_000
# The reference customer is the mean of at most this many reference rows (a stable hash sample
# of ids): its error is far below any coefficient's, and its cost stays flat with the data.
REFERENCE_MAX_ROWS = 50_000
# Ridge strength: one-hot columns and the engineered combinations of them are collinear.
SURROGATE_REG_PARAM = 1e-3
# Tree leaves give probabilities of exactly 0 or 1; their log-odds are clipped to +-6.9.
LOGIT_CLIP = 1e-3
_FIDELITY = "fidelity:"
# The arrays reasons are read from (`inputs`): contributions, and values as text or number.
PARTS, TEXTS, NUMBERS = "__reason_parts", "__reason_texts", "__reason_numbers"
_LOGGED = "__reasons_logged"


@dataclass(frozen=True)
class Linear:
    """A logistic regression whose P(churn) is the model's output, over the `features` vector
    and the signed logs of its `logged` slots appended to it (none without a SignedLog stage)."""

    lr: LogisticRegressionModel
    logged: tuple[int, ...] = ()


def exact_logistic(model: PipelineModel, encoding: Encoding) -> Linear | None:
    """The logistic regression (after an optional SignedLog) that is all the model is, if so."""
    head = [s for s in model.stages[encoding.stage_count :] if not isinstance(s, DropColumns)]
    logged: tuple[int, ...] = ()
    features = FEATURES_COL
    if head and isinstance(head[0], SignedLog):
        signed_log = head.pop(0)
        if signed_log.getInputCol() != FEATURES_COL:
            return None
        logged = tuple(signed_log.getOrDefault(signed_log.slots))
        features = signed_log.getOutputCol()
    if len(head) != 2:
        return None
    lr, positive = head
    if not (isinstance(lr, LogisticRegressionModel) and isinstance(positive, PositiveProbability)):
        return None
    if lr.numClasses != 2 or lr.getFeaturesCol() != features:
        return None
    if lr.numFeatures != len(encoding.slot_columns) + len(logged):
        return None
    wired = positive.getInputCol() == lr.getProbabilityCol()
    return Linear(lr, logged) if wired and positive.getOutputCol() == PROBABILITY_COL else None


def signed_log(value: str) -> str:
    """sign(x) * log(1 + |x|) in SQL: `stages.SignedLog`'s functions, so the same double."""
    return f"(signum({value}) * log1p(abs({value})))"


def with_logged(slots: Sequence[str], logged: Sequence[int]) -> list[str]:
    """The slots (SQL, one each) followed by the signed logs of the `logged` ones."""
    return [*slots, *(signed_log(slots[j]) for j in logged)]


def slot_values(size: int, array: str = SLOTS_COL) -> list[str]:
    """The slots of an array column (`Encoding.vectors` adds `SLOTS_COL`), as SQL, one each."""
    return [f"{quote(array)}[{j}]" for j in range(size)]


def mean_vector(vectors: DataFrame, column: str = FEATURES_COL) -> np.ndarray | None:
    """The mean `features` vector (one Spark job): the reference customer; None without rows.

    Spark's Summarizer adds each row's vector in one loop: measured here at half the cost of an
    average per slot.
    """
    row = vectors.select(Summarizer.metrics("mean", "count").summary(F.col(column))).first()
    summary = row[0] if row else None
    if summary is None or not summary["count"]:
        return None
    return summary["mean"].toArray()


def log_odds(probability: str) -> str:
    """Log-odds of a probability column (SQL), clipped so that 0 and 1 stay finite."""
    p = f"least(greatest({probability}, {number(LOGIT_CLIP)}), {number(1.0 - LOGIT_CLIP)})"
    return f"ln({p} / (1.0D - {p}))"


def reference_mean(
    model: PipelineModel, encoding: Encoding, vectors: DataFrame
) -> np.ndarray | None:
    """The reference customer of the model's attribution: the mean of `vectors` (their
    `features`), followed by the means of the signed logs an exact logistic regression also
    reads; None without rows. One Spark job: training measures it on its cached training rows
    and logs it with the model (`core.attribution.REFERENCE`), scoring only when none was."""
    linear = exact_logistic(model, encoding)
    if linear is None or not linear.logged:
        return mean_vector(vectors)
    extended = SignedLog(inputCol=FEATURES_COL, outputCol=_LOGGED, slots=list(linear.logged))
    return mean_vector(extended.transform(vectors), _LOGGED)


def reference_size(model: PipelineModel, encoding: Encoding) -> int:
    """The length of the model's reference vector (`reference_mean`)."""
    linear = exact_logistic(model, encoding)
    return len(encoding.slot_columns) + (len(linear.logged) if linear is not None else 0)


def fit_attribution(
    model: PipelineModel,
    encoding: Encoding,
    mean: np.ndarray | None,
    scored: Callable[[], DataFrame],
) -> Attribution:
    """The exact decomposition for a logistic regression, else a surrogate (R² measured later).

    `mean` is the reference customer (`reference_mean`; None: the scored customers' mean);
    `scored` gives the scored customers' vectors and `churn_probability`, lazily, and is called
    only for a surrogate, which is fitted on a bounded sample of it (a count and the fit).
    """
    sources = encoding.slot_columns
    linear = exact_logistic(model, encoding)
    if linear is not None:
        logged = linear.logged
        columns = (*sources, *(sources[j] for j in logged))
        if mean is None:
            mean = np.zeros(len(columns))
        coefficients = linear.lr.coefficients.toArray()
        return Attribution(
            EXACT, coefficients, float(linear.lr.intercept), mean, columns, logged=logged
        )
    scored_frame = scored()
    if mean is None:
        mean = mean_vector(scored_frame)
    if mean is None:
        mean = np.zeros(len(sources))
    rows = scored_frame.count()
    if rows == 0:
        return Attribution(SURROGATE, np.zeros(len(sources)), 0.0, mean, sources)
    sample = (
        scored_frame
        if rows <= SURROGATE_MAX_ROWS
        else scored_frame.sample(SURROGATE_MAX_ROWS / rows, seed=0)
    )
    surrogate = LinearRegression(
        featuresCol=FEATURES_COL,
        labelCol="log_odds",
        regParam=SURROGATE_REG_PARAM,
        elasticNetParam=0.0,
        solver="normal",
    ).fit(sample.selectExpr(FEATURES_COL, f"{log_odds(quote(PROBABILITY_COL))} AS log_odds"))
    coefficients = surrogate.coefficients.toArray()
    return Attribution(SURROGATE, coefficients, float(surrogate.intercept), mean, sources)


def contributions(attribution: Attribution, slots: Sequence[str]) -> dict[str, str]:
    """Each dataset column's contribution to the log-odds, relative to the reference customer,
    as SQL. `slots` are the vector's values, one SQL expression per slot (`slot_values`)."""
    by_column: dict[str, list[int]] = {}
    for slot, column in enumerate(attribution.slot_columns):
        by_column.setdefault(column, []).append(slot)
    coefficients, reference = attribution.coefficients, attribution.reference
    expressions = {}
    for column, indexes in by_column.items():
        offset = float(sum(coefficients[j] * reference[j] for j in indexes))
        terms = [f"{number(coefficients[j])} * {slots[j]}" for j in indexes if coefficients[j]]
        expressions[column] = f"({' + '.join(['0.0D', *terms])}) - {number(offset)}"
    return expressions


def linear_terms(
    coefficients: np.ndarray,
    logged: Sequence[int],
    encoding: Encoding,
    types: Mapping[str, str],
    vectored: bool = False,
) -> list[tuple[str, str]]:
    """A linear model's terms over the vector and the signed logs of its `logged` slots, as
    (dataset column, SQL over the engineered columns), in the order the model sums them:
    `Encoding.terms` (`vectored`: over `Encoding.vectors`' columns), then the logged slots'."""
    terms = encoding.terms(coefficients, dict(types), vectored)
    if logged:
        size = len(encoding.slot_columns)
        values = slot_values(size) if vectored else encoding.slots(dict(types))
        for k, source in enumerate(logged):
            weight = number(float(coefficients[size + k]))
            column = encoding.slot_columns[source]
            terms.append((column, f"{weight} * {signed_log(values[source])}"))
    return terms


def with_contributions(df: DataFrame, attribution: Attribution) -> DataFrame:
    """`contribution:<column>` for every dataset column of a frame with the `features` vector
    (what the tests and audits check)."""
    x = "__reasons_x"
    vectors = df.withColumn(x, vector_to_array(F.col(FEATURES_COL)))
    size = len(attribution.slot_columns) - len(attribution.logged)
    parts = contributions(attribution, with_logged(slot_values(size, x), attribution.logged))
    named = [f"{e} AS {quote(f'contribution:{c}')}" for c, e in parts.items()]
    return vectors.selectExpr("*", *named).drop(x)


def needs_fidelity(attribution: Attribution) -> bool:
    """A surrogate's R² is measured on every scored customer; an exact decomposition has none."""
    return attribution.method == SURROGATE


def fidelity_aggregates(attribution: Attribution, size: int) -> list[Column]:
    """Aggregates that give a surrogate's R² over the rows they see (none for an exact one).

    The rows carry `churn_probability` and the `PARTS` array of `size` contributions.
    """
    if not needs_fidelity(attribution):
        return []
    target = log_odds(quote(PROBABILITY_COL))
    fitted = " + ".join([number(attribution.baseline_log_odds), *slot_values(size, PARTS)])
    return [
        F.expr(f"sum(pow({target} - ({fitted}), 2))").alias(f"{_FIDELITY}residual"),
        F.count(F.lit(1)).alias(f"{_FIDELITY}n"),
        F.expr(f"var_pop({target})").alias(f"{_FIDELITY}variance"),
    ]


def with_fidelity(attribution: Attribution, observed: Mapping[str, Any]) -> Attribution:
    """The attribution with its R², from what `fidelity_aggregates` observed."""
    if not needs_fidelity(attribution):
        return attribution
    total = (observed[f"{_FIDELITY}variance"] or 0.0) * (observed[f"{_FIDELITY}n"] or 0)
    r2 = 1.0 - observed[f"{_FIDELITY}residual"] / total if total > 0 else float("nan")
    return dataclasses.replace(attribution, fidelity_r2=float(r2))


def inputs(
    attribution: Attribution,
    encoding: Encoding,
    types: Mapping[str, str],
    terms: Sequence[tuple[str, str]],
) -> list[str]:
    """The arrays `with_reasons` reads, as SQL select items over the engineered columns: each
    dataset column's contribution (`PARTS`) and its value as text or as a number (`TEXTS`,
    `NUMBERS`), in `encoding.columns` order. `types` are the columns' types; `terms` name the
    column that holds each of the attribution's `linear_terms`, with its dataset column."""
    offsets: dict[str, float] = {}
    for j, column in enumerate(attribution.slot_columns):
        offset = float(attribution.coefficients[j] * attribution.reference[j])
        offsets[column] = offsets.get(column, 0.0) + offset
    summed: dict[str, list[str]] = {}
    for column, term in terms:
        summed.setdefault(column, []).append(quote(term))
    columns = encoding.columns
    parts = [f"({' + '.join(summed[c])}) - {number(offsets[c])}" for c in columns]
    texts = [quote(c) if types[c] == "string" else "CAST(NULL AS STRING)" for c in columns]
    numbers = [f"CAST({quote(c)} AS DOUBLE)" if types[c] != "string" else "NULL" for c in columns]
    return [
        f"array({', '.join(parts)}) AS {quote(PARTS)}",
        f"array({', '.join(texts)}) AS {quote(TEXTS)}",
        f"CAST(array({', '.join(numbers)}) AS ARRAY<DOUBLE>) AS {quote(NUMBERS)}",
    ]


def _shown(number_: str, text_: str) -> str:
    """A reason's value as the retention team reads it (SQL): text as it is, whole numbers
    without `.0`, others to two decimals; `missing` for null."""
    whole = f"CAST(CAST({number_} AS BIGINT) AS STRING)"
    decimals = f"CAST(round({number_}, 2) AS STRING)"
    as_number = f"CASE WHEN {number_} = floor({number_}) THEN {whole} ELSE {decimals} END"
    return f"coalesce({text_}, {as_number}, 'missing')"


def with_reasons(df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """`df` with `reasons`: the top three (feature, value, contribution) by size of contribution.

    `df` carries the `inputs` arrays over `columns`. The sizes are sorted as an array of
    doubles (no struct sort, no lambda); each rank's position is where its size first occurs
    after the ranks before it, so ties go to the column listed first. The feature, value and
    contribution are then read at those positions: three values per customer become text.
    Two helper columns, dropped again.
    """
    size = len(columns)
    sizes = f"array({', '.join(f'coalesce(abs({v}), 0.0D)' for v in slot_values(size, PARTS))})"
    ranked, positions = "__reason_ranked", "__reason_positions"
    found: list[str] = []
    for rank in range(min(TOP_REASONS, size)):
        value = f"{ranked}[{rank}]"
        first = f"array_position({ranked}_sizes, {value}) - 1"
        if found:
            after = f"slice({ranked}_sizes, {found[-1]} + 2, {size})"
            first = (
                f"CASE WHEN {value} = {ranked}[{rank - 1}] "
                f"THEN {found[-1]} + array_position({after}, {value}) ELSE {first} END"
            )
        found.append(f"({first})")
    df = df.selectExpr("*", f"{sizes} AS {ranked}_sizes").selectExpr(
        "*", f"sort_array({ranked}_sizes, false) AS {ranked}"
    )
    df = df.selectExpr(
        "*", f"array({', '.join(f'CAST({p} AS INT)' for p in found)}) AS {positions}"
    )
    names = f"array({', '.join(text(c) for c in columns)})"
    reasons = []
    for rank in range(len(found)):
        at = f"{positions}[{rank}]"
        reasons.append(
            f"named_struct('feature', {names}[{at}], "
            f"'value', {_shown(f'{quote(NUMBERS)}[{at}]', f'{quote(TEXTS)}[{at}]')}, "
            f"'contribution', {quote(PARTS)}[{at}])"
        )
    return df.selectExpr("*", f"array({', '.join(reasons)}) AS {quote(REASONS_COL)}").drop(
        f"{ranked}_sizes", ranked, positions
    )


def reason_text(reasons: Column, index: int) -> Column:
    """Reason `index` (0-based) as one cell, `Contract=Month-to-month (+0.82)`, for CSV files."""
    reason = F.get(reasons, index)
    return F.when(
        reason.isNotNull(),
        F.format_string(
            "%s=%s (%+.2f)", reason["feature"], reason["value"], reason["contribution"]
        ),
    )
