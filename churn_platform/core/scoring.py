"""Batch scoring: who is scored, and each customer's probability, decision, tier, contact value,
reasons and category values the model never saw.

The scored customers are those who can still churn: by default those whose target is the
negative class or absent (a churned customer needs no retention offer); a dataset spec can name
another rule (`score_population`). Tiers are cut from the champion's own decision threshold,
so "high" means what the model decided, and from the cost settings, so "medium" means a
contact still pays for itself on average.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.ml.feature import StringIndexerModel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from churn_platform.config import DatasetSpec
from churn_platform.core import reasons
from churn_platform.core.columns import LABEL_COL
from churn_platform.core.features import engineer_features
from churn_platform.core.models.fitting import PROBABILITY_COL

UNSEEN_COL = "unseen_values"
TIERS = ("high", "medium", "low")


def population_filter(spec: DatasetSpec) -> Column:
    """True for the customers to score (the cleaned layer's columns)."""
    rule = spec.score_population
    if rule is None:
        return F.col(LABEL_COL).isNull() | (F.col(LABEL_COL) == 0)
    if rule.column == spec.target.column:
        labels = [1 if v == spec.target.positive else 0 for v in rule.values]
        return F.col(LABEL_COL).isin(*labels)
    return F.coalesce(F.col(f"`{rule.column}`").cast("string").isin(*rule.values), F.lit(False))


def population_rule(spec: DatasetSpec) -> str:
    """The rule in words, for metadata and logs."""
    rule = spec.score_population
    if rule is None:
        negative = spec.target.negative or f"not {spec.target.positive}"
        return f"{spec.target.column} is {negative!r} or absent (customers who can still churn)"
    return f"{rule.column} in {list(rule.values)}"


@dataclass(frozen=True)
class ScoringPolicy:
    """The business settings scoring needs (from `Settings`; defaults as there)."""

    tier_high_ratio: float = 1.0
    tier_medium_probability: float | None = None
    cost_missed_churner: float = 500.0
    cost_retention_offer: float = 50.0


@dataclass(frozen=True)
class TierCuts:
    """Probabilities from which a customer is `high` and `medium` risk (below: `low`)."""

    high: float
    medium: float


def tier_cuts(threshold: float, policy: ScoringPolicy) -> TierCuts:
    """`high` from the decision threshold (times the ratio); `medium` from the contact break-even.

    A customer at the break-even probability p = offer cost / missed-churner cost has an expected
    contact value of zero; `medium` never starts above `high`.
    """
    high = threshold * policy.tier_high_ratio
    if policy.tier_medium_probability is not None:
        medium = policy.tier_medium_probability
    elif policy.cost_missed_churner > 0:
        medium = policy.cost_retention_offer / policy.cost_missed_churner
    else:
        medium = high
    return TierCuts(high=high, medium=min(medium, high))


def risk_tier(probability: Column, cuts: TierCuts) -> Column:
    return (
        F.when(probability >= F.lit(cuts.high), F.lit("high"))
        .when(probability >= F.lit(cuts.medium), F.lit("medium"))
        .otherwise(F.lit("low"))
    )


def expected_value(probability: Column, policy: ScoringPolicy) -> Column:
    """Expected saving of contacting the customer: p x missed-churner cost - offer cost.

    The same economics as the profit threshold strategy: an offer made to a churner keeps them.
    """
    return probability * F.lit(float(policy.cost_missed_churner)) - F.lit(
        float(policy.cost_retention_offer)
    )


def trained_categories(model: PipelineModel) -> dict[str, tuple[str, ...]]:
    """Each categorical column the model encodes, with the values it saw in training."""
    categories: dict[str, tuple[str, ...]] = {}
    for stage in model.stages[: reasons.feature_stage_count(model)]:
        if not isinstance(stage, StringIndexerModel):
            continue
        if stage.isSet("inputCols"):
            for column, labels in zip(stage.getInputCols(), stage.labelsArray, strict=True):
                categories[column] = tuple(labels)
        else:
            categories[stage.getInputCol()] = tuple(stage.labels)
    return categories


def unseen_flags(categories: dict[str, tuple[str, ...]]) -> dict[str, Column]:
    """Per column: the value is present but was never seen in training."""
    return {
        column: F.col(f"`{column}`").isNotNull() & ~F.col(f"`{column}`").isin(*labels)
        for column, labels in categories.items()
    }


def unseen_values(categories: dict[str, tuple[str, ...]]) -> Column:
    """The row's unseen values as `column=value` strings (an empty list for most rows)."""
    marks = [
        F.when(flag, F.concat(F.lit(f"{column}="), F.col(f"`{column}`")))
        for column, flag in unseen_flags(categories).items()
    ]
    return F.array_compact(F.array(*marks)) if marks else F.array().cast("array<string>")


@dataclass
class Scores:
    """The scores (cached: `release()` when written) and how they were made."""

    frame: DataFrame
    attribution: reasons.Attribution
    cuts: TierCuts
    categories: dict[str, tuple[str, ...]]
    cached: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()

    def metadata(self) -> dict[str, Any]:
        return {
            "tier_high_from": self.cuts.high,
            "tier_medium_from": self.cuts.medium,
            **self.attribution.metadata(),
        }


def score_customers(
    cleaned: DataFrame,
    spec: DatasetSpec,
    model: PipelineModel,
    model_version: tuple[str, str, float],
    policy: ScoringPolicy,
    reference: DataFrame | None = None,
) -> Scores:
    """Scores of the cleaned customers given; the logged model holds the feature pipeline itself.

    `model_version` is (name, version, decision threshold). `reference` holds the cleaned
    customers the reasons are measured against (the training split); without it, those scored.
    """
    name, version, threshold = model_version
    cuts = tier_cuts(threshold, policy)
    categories = trained_categories(model)
    transformed = model.transform(engineer_features(cleaned, spec)).persist()
    try:
        vectors = (
            reasons.feature_model(model).transform(engineer_features(reference, spec))
            if reference is not None
            else transformed
        )
        attribution = reasons.fit_attribution(model, transformed, vectors)
        probability = F.col(PROBABILITY_COL)
        frame = (
            reasons.with_reasons(transformed, attribution)
            .select(
                F.col(f"`{spec.id_column}`"),
                probability.alias("churn_probability"),
                (probability >= F.lit(threshold)).cast("int").alias("churn_predicted"),
                risk_tier(probability, cuts).alias("risk_tier"),
                expected_value(probability, policy).alias("expected_value"),
                F.col(reasons.REASONS_COL),
                unseen_values(categories).alias(UNSEEN_COL),
                F.lit(name).alias("model_name"),
                F.lit(str(version)).alias("model_version"),
                F.lit(float(threshold)).alias("threshold"),
            )
            .persist()
        )
    except Exception:
        transformed.unpersist()
        raise
    return Scores(frame, attribution, cuts, categories, cached=[transformed, frame])


def summarize(scores: Scores) -> dict[str, Any]:
    """Rows, tiers, predicted churners and unseen values per column: one Spark job."""
    columns = list(scores.categories)
    unseen_columns = F.transform(F.col(UNSEEN_COL), lambda v: F.split(v, "=", 2)[0])
    tier = F.col("risk_tier")
    row = scores.frame.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum("churn_predicted").alias("predicted"),
        *[F.sum((tier == t).cast("long")).alias(f"tier:{t}") for t in TIERS],
        *[
            F.sum(F.array_contains(unseen_columns, F.lit(c)).cast("long")).alias(f"unseen:{c}")
            for c in columns
        ],
        F.sum((F.size(UNSEEN_COL) > 0).cast("long")).alias("unseen_rows"),
    ).first()
    rows = int(row["rows"] or 0)
    by_column = {c: int(row[f"unseen:{c}"]) for c in columns if row[f"unseen:{c}"]}
    return {
        "rows": rows,
        "predicted_churners": int(row["predicted"] or 0),
        "tiers": {t: int(row[f"tier:{t}"] or 0) for t in TIERS},
        "unseen_by_column": by_column,
        "unseen_rows": int(row["unseen_rows"] or 0),
        "unseen_worst_share": max(by_column.values(), default=0) / rows if rows else 0.0,
    }


def flat(scores: DataFrame) -> DataFrame:
    """Scores for files: `reason_1..3` as text cells, unseen values `;`-joined."""
    columns = []
    for column in scores.columns:
        if column == reasons.REASONS_COL:
            columns += [
                reasons.reason_text(F.col(column), i).alias(f"reason_{i + 1}")
                for i in range(reasons.TOP_REASONS)
            ]
        elif column == UNSEEN_COL:
            columns.append(F.array_join(F.col(column), ";").alias(column))
        else:
            columns.append(F.col(f"`{column}`"))
    return scores.select(*columns)
