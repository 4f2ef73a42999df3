"""Who is scored: the customers who can still churn, or the rule a dataset spec names.

By default those whose target is the negative class or absent (a churned customer needs no
retention offer); a dataset spec can name another rule (`score_population`). Batch scoring
scores this population; monitoring compares like with like, the scored customers' drift
against training customers under the same rule.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from churn_platform.config import DatasetSpec
from churn_platform.core.columns import LABEL_COL


def population_filter(spec: DatasetSpec) -> Column:
    """True for the customers to score (the cleaned layer's columns)."""
    rule = spec.score_population
    if rule is None:
        return F.col(LABEL_COL).isNull() | (F.col(LABEL_COL) == 0)
    if rule.column == spec.target.column:
        return F.col(LABEL_COL).isin(*population_labels(spec))
    return F.coalesce(F.col(f"`{rule.column}`").cast("string").isin(*rule.values), F.lit(False))


def population_labels(spec: DatasetSpec) -> tuple[int, ...] | None:
    """The labels the scored customers have among labelled ones, when the rule is on the
    target (None for a rule on another column): what picks the same kind of customers from
    rows that carry only a label, such as out-of-fold scores."""
    rule = spec.score_population
    if rule is None:
        return (0,)
    if rule.column == spec.target.column:
        return tuple(1 if v == spec.target.positive else 0 for v in rule.values)
    return None


def population_rule(spec: DatasetSpec) -> str:
    """The rule in words, for metadata and logs."""
    rule = spec.score_population
    if rule is None:
        negative = spec.target.negative or f"not {spec.target.positive}"
        return f"{spec.target.column} is {negative!r} or absent (customers who can still churn)"
    return f"{rule.column} in {list(rule.values)}"
