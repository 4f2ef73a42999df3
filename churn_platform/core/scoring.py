"""Batch scoring: each customer's probability, decision, tier, contact value, reasons and
category values the model never saw.

Who is scored is core.population's rule. Tiers are cut from the champion's own decision
threshold, so "high" means what the model decided, and from the cost settings, so "medium"
means a contact still pays for itself on average.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlflow.entities.model_registry import ModelVersion
from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import is_remote

from churn_platform.config import DatasetSpec
from churn_platform.core import reasons, tracking
from churn_platform.core.attribution import Attribution
from churn_platform.core.columns import (
    FOLD_COL,
    PROBABILITY_COL,
    SPLIT_COL,
)
from churn_platform.core.encoding import (
    Encoding,
    classifier,
    number,
    quote,
    read_encoding,
    text,
)
from churn_platform.core.features import assign_split, engineer_features
from churn_platform.core.sampling import sampled
from churn_platform.settings import Settings

LOG = logging.getLogger(__name__)
UNSEEN_COL = "unseen_values"
TIERS = ("high", "medium", "low")
# Each category's unseen flag, as one array column of the scoring projections.
UNSEEN_FLAGS = "__unseen"


@dataclass(frozen=True)
class ScoringPolicy:
    """The business settings scoring needs (from `Settings`; defaults as there)."""

    tier_high_ratio: float = 1.0
    tier_medium_probability: float | None = None
    cost_missed_churner: float = 500.0
    cost_retention_offer: float = 50.0


def scoring_policy(settings: Settings) -> ScoringPolicy:
    """The scoring policy the settings define."""
    return ScoringPolicy(
        tier_high_ratio=settings.tier_high_ratio,
        tier_medium_probability=settings.tier_medium_probability,
        cost_missed_churner=settings.cost_missed_churner,
        cost_retention_offer=settings.cost_retention_offer,
    )


def training_reference(cleaned: DataFrame, spec: DatasetSpec) -> DataFrame:
    """The cleaned customers of the training split: reasons are measured from their mean."""
    split = assign_split(cleaned, spec)
    return split.where(F.col(SPLIT_COL) == "train").drop(SPLIT_COL, FOLD_COL)


def reasons_reference(
    backend: tracking.MlflowBackend,
    version: ModelVersion,
    training: Callable[[], DataFrame | None],
) -> np.ndarray | DataFrame | None:
    """The reasons' reference customer as the version's training run logged it, else the
    cleaned training customers `training` gives (read only then) to measure it on; None
    measures it on the customers scored (`score_customers`' `reference`)."""
    stored = tracking.logged_reference(backend, version)
    return stored if stored is not None else training()


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


def unseen_values(categories: list[tuple[str, int]]) -> str:
    """The row's unseen values as `column=value` strings (SQL; an empty list for most rows).

    `categories` pairs each categorical column with its position in the reasons' value arrays;
    `UNSEEN_FLAGS` holds one flag per category, in the same order.
    """
    empty = "CAST(array() AS ARRAY<STRING>)"
    if not categories:
        return empty
    marks = [
        f"CASE WHEN {quote(UNSEEN_FLAGS)}[{i}] THEN array(concat({text(column + '=')}, "
        f"{quote(reasons.TEXTS)}[{position}])) ELSE {empty} END"
        for i, (column, position) in enumerate(categories)
    ]
    # Most customers have none: their list is the empty literal, nothing is concatenated.
    return (
        f"CASE WHEN array_contains({quote(UNSEEN_FLAGS)}, true) "
        f"THEN concat({', '.join(marks)}) ELSE {empty} END"
    )


@dataclass
class Scores:
    """The scores as a lazy frame, and how they were made.

    Write `frame` once: the statistics (`summary`) are observed by that write, not computed by
    a pass of their own.
    """

    frame: DataFrame
    attribution: Attribution
    cuts: TierCuts
    categories: dict[str, tuple[str, ...]]
    observation: Observation
    population: Observation | None = None

    def summary(self) -> dict[str, Any]:
        """Rows, tiers, predicted churners, unseen values per column, population counts and
        the surrogate's R², as observed by the frame's write (call it after the write)."""
        row = self.observation.get
        rows = int(row["rows"] or 0)
        by_column = {c: int(row[f"unseen:{c}"]) for c in self.categories if row[f"unseen:{c}"]}
        summary = {
            "rows": rows,
            "predicted_churners": int(row["predicted"] or 0),
            "tiers": {t: int(row[f"tier:{t}"] or 0) for t in TIERS},
            "unseen_by_column": by_column,
            "unseen_rows": int(row["unseen_rows"] or 0),
            "unseen_worst_share": max(by_column.values(), default=0) / rows if rows else 0.0,
            "excluded": 0,
        }
        if self.population is not None:
            counted = self.population.get
            summary["excluded"] = int(counted["rows_in"] or 0) - int(counted["in_population"] or 0)
        self.attribution = reasons.with_fidelity(self.attribution, row)
        return summary

    def metadata(self) -> dict[str, Any]:
        return {
            "tier_high_from": self.cuts.high,
            "tier_medium_from": self.cuts.medium,
            **self.attribution.metadata(),
        }


# Models loaded in this process, by (Spark application, name, version, file hash): the scoring
# and monitoring steps of one run load the champion once (a load is 23-47 Spark jobs here).
_LOADED: dict[tuple[str, str, str, str], PipelineModel] = {}


def load_champion(
    backend: tracking.MlflowBackend, spec: DatasetSpec, alias: str = tracking.CHAMPION
) -> tuple[PipelineModel, ModelVersion]:
    """The model an alias names: `tracking.load_model` (its files checked against their hash)
    at most once per process and model version."""
    version = backend.client().get_model_version_by_alias(spec.model_name, alias)
    key = _model_key(version)
    if key not in _LOADED:
        # The alias may have moved since: the version loaded is the one returned and kept.
        model, version = tracking.load_model(backend, spec, alias)
        key = _model_key(version)
        _LOADED[key] = model
    return _LOADED[key], version


def _model_key(version: ModelVersion) -> tuple[str, str, str, str]:
    session = SparkSession.active()
    owner = str(id(session)) if is_remote() else session.sparkContext.applicationId
    return (owner, *model_identity(version))


def model_identity(version: ModelVersion) -> tuple[str, str, str]:
    """(name, version, hash of the model's files): what a stored attribution explains."""
    return (version.name, str(version.version), version.tags.get(tracking.TAG_MODEL_SHA256, ""))


def probabilities(cleaned: DataFrame, spec: DatasetSpec, model: PipelineModel) -> DataFrame:
    """The cleaned customers with the model's `churn_probability` (the feature stages as column
    expressions, then the classifier): one Spark job before any action, to read the
    imputation values."""
    encoding = read_encoding(model)
    return _classified(model, encoding, engineer_features(cleaned, spec))[0]


def _classified(
    model: PipelineModel,
    encoding: Encoding,
    engineered: DataFrame,
    explained: Attribution | None = None,
) -> tuple[DataFrame, list[tuple[str, str]]]:
    """`engineered` with `churn_probability`, and the `explained` attribution's
    `reasons.linear_terms` as columns: (dataset column, term column) for each.

    A logistic-regression champion is its terms summed in the model's order, then the intercept
    and Spark's own 1 / (1 + e^-margin): the same double as its stages without a vector, three
    JVM UDFs and a probability vector per row (benchmarks/scoring.py); the reasons' terms are
    the same columns. Any other champion runs its classifier stages on the assembled vector,
    and the reasons' terms read the index columns and slots made for it.
    """
    linear = reasons.exact_logistic(model, encoding)
    types = dict(engineered.dtypes)
    frame = engineered if linear is not None else encoding.vectors(engineered)
    modelled = []
    if linear is not None:
        coefficients = linear.lr.coefficients.toArray()
        modelled = reasons.linear_terms(coefficients, linear.logged, encoding, types)
    explaining = []
    if explained is not None:
        explaining = reasons.linear_terms(
            explained.coefficients, explained.logged, encoding, types, vectored=linear is None
        )
    distinct = dict.fromkeys(sql for _, sql in (*modelled, *explaining))
    named = {sql: f"__term{i}" for i, sql in enumerate(distinct)}
    termed = (
        frame.selectExpr("*", *(f"{sql} AS {quote(n)}" for sql, n in named.items()))
        if named
        else frame
    )
    terms = [(column, named[sql]) for column, sql in explaining]
    if linear is None:
        return classifier(model, encoding).transform(termed), terms
    margin = " + ".join(["0.0D", *(quote(named[sql]) for _, sql in modelled)])
    intercept = number(float(linear.lr.intercept))
    probability = f"1.0D / (1.0D + exp(-(({margin}) + {intercept})))"
    return termed.selectExpr("*", f"{probability} AS {PROBABILITY_COL}"), terms


def _reference_mean(
    model: PipelineModel,
    encoding: Encoding,
    spec: DatasetSpec,
    reference: DataFrame | np.ndarray | None,
    customers: DataFrame,
) -> np.ndarray | None:
    """The given reference customer if it fits the model, else measured on a bounded hash
    sample of the reference rows (or of `customers`): a count and a mean."""
    size = reasons.reference_size(model, encoding)
    if isinstance(reference, np.ndarray):
        if reference.shape == (size,):
            return reference
        LOG.warning(
            "a stored reference of %d slots for a model of %d: measured again", reference.size, size
        )
        reference = None
    rows = reference if reference is not None else customers
    rows = sampled(rows, rows.count(), reasons.REFERENCE_MAX_ROWS, spec.id_column)
    return reasons.reference_mean(model, encoding, encoding.vectors(engineer_features(rows, spec)))


def score_customers(
    cleaned: DataFrame,
    spec: DatasetSpec,
    model: PipelineModel,
    model_version: tuple[str, str, float],
    policy: ScoringPolicy,
    reference: DataFrame | np.ndarray | None = None,
    population: Column | None = None,
    attribution: Attribution | None = None,
) -> Scores:
    """Scores of the cleaned customers `population` selects (all without it), as one lazy frame.

    The model's feature stages are replaced by column expressions (core.encoding) and its
    classifier stages applied to the vector they assemble; a logistic regression is the sum of
    its terms, which the reasons read too (`_classified`). Probability, decision, tier, contact
    value, reasons and unseen values come out of the same projection. `model_version` is
    (name, version, decision threshold). `reference` is the reference customer the reasons
    are measured from, as training logged it (`reasons_reference`), or the cleaned
    customers to measure it on (the training split); without it, those scored. Before the frame
    is written this runs a few small jobs: the imputation values, the reference's mean unless
    given, and for a non-linear champion the surrogate's fit on a bounded sample. A stored
    `attribution` of this model (`core.attribution.load_attribution`) replaces the last two:
    the reasons of a few customers read as the batch scores' do, and the surrogate's R² is
    measured on them.
    """
    name, version, threshold = model_version
    cuts = tier_cuts(threshold, policy)
    encoding = read_encoding(model)
    customers = cleaned.where(population) if population is not None else cleaned
    observed_population = None
    if population is not None:
        observed_population = Observation(f"population-{uuid.uuid4().hex[:12]}")
        cleaned = cleaned.observe(
            observed_population,
            F.count(F.lit(1)).alias("rows_in"),
            F.sum(population.cast("long")).alias("in_population"),
        ).where(population)
    if attribution is None:
        attribution = reasons.fit_attribution(
            model,
            encoding,
            _reference_mean(model, encoding, spec, reference, customers),
            lambda: _classified(model, encoding, engineer_features(customers, spec))[0],
        )
    engineered = engineer_features(cleaned, spec)
    classified, terms = _classified(model, encoding, engineered, attribution)
    columns = encoding.columns
    flags = encoding.unseen()
    # A narrow frame before the reasons: the id, the probability and a few arrays (Spark's
    # generated code stays small enough to compile, and to split per operator).
    scored = classified.selectExpr(
        quote(spec.id_column),
        quote(PROBABILITY_COL),
        *reasons.inputs(attribution, encoding, dict(engineered.dtypes), terms),
        f"array({', '.join(flags.values()) or 'false'}) AS {quote(UNSEEN_FLAGS)}",
    )
    probability = F.col(PROBABILITY_COL)
    tier = risk_tier(probability, cuts)
    observation = Observation(f"scores-{uuid.uuid4().hex[:12]}")
    # Observed on the narrow frame, before the reasons: every scored row passes it once.
    observed = scored.observe(
        observation,
        F.count(F.lit(1)).alias("rows"),
        F.count_if(probability >= F.lit(threshold)).alias("predicted"),
        *[F.count_if(tier == F.lit(t)).alias(f"tier:{t}") for t in TIERS],
        *[F.count_if(F.col(UNSEEN_FLAGS)[i]).alias(f"unseen:{c}") for i, c in enumerate(flags)],
        F.count_if(F.array_contains(UNSEEN_FLAGS, True)).alias("unseen_rows"),
        *reasons.fidelity_aggregates(attribution, len(columns)),
    )
    frame = reasons.with_reasons(observed, columns).select(
        F.col(quote(spec.id_column)),
        probability.alias("churn_probability"),
        (probability >= F.lit(threshold)).cast("int").alias("churn_predicted"),
        tier.alias("risk_tier"),
        expected_value(probability, policy).alias("expected_value"),
        F.col(reasons.REASONS_COL),
        F.expr(unseen_values([(c, columns.index(c)) for c in flags])).alias(UNSEEN_COL),
        F.lit(name).alias("model_name"),
        F.lit(str(version)).alias("model_version"),
        F.lit(float(threshold)).alias("threshold"),
    )
    return Scores(frame, attribution, cuts, encoding.categories, observation, observed_population)
