"""What drives a model: feature importances, and the weights an ensemble gives its bases."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.classification import (
    DecisionTreeClassificationModel,
    GBTClassificationModel,
    LogisticRegressionModel,
    RandomForestClassificationModel,
)
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame

from churn_platform.core.columns import FEATURES_COL, PROBABILITY_COL
from churn_platform.core.models.ensembles import CALIBRATED_SUFFIX, LOGIT_SUFFIX, META_FEATURES
from churn_platform.core.models.stages import SignedLog, WeightedAverage

_CLASSIFIER_MODELS = (
    LogisticRegressionModel,
    DecisionTreeClassificationModel,
    RandomForestClassificationModel,
    GBTClassificationModel,
)


def vector_feature_names(df: DataFrame, col: str = FEATURES_COL) -> list[str]:
    """Names of a vector column's slots, from the ML attribute metadata VectorAssembler writes."""
    metadata = df.schema[col].metadata.get("ml_attr", {})
    attrs = metadata.get("attrs")
    if attrs:
        slots = sorted(
            (attr["idx"], attr.get("name", f"{col}_{attr['idx']}"))
            for group in attrs.values()
            for attr in group
        )
        return [name for _, name in slots]
    if "num_attrs" in metadata:
        return [f"{col}_{i}" for i in range(metadata["num_attrs"])]
    raise ValueError(f"column {col!r} carries no ML attribute metadata; assemble it in Spark ML")


def feature_importance(
    model: PipelineModel, feature_names: Sequence[str]
) -> list[tuple[str, float]]:
    """What drives a model's predictions, largest magnitude first.

    Trees: featureImportances; logistic regression: signed coefficients on the (assembled)
    features, and on `log <name>` for the slots it also sees on a log scale; bagging: the mean
    over its members. Ensembles answer at the model level instead: stacking gives the meta-LR
    coefficient of each base model's log-odds, voting each base model's weight (feature_names
    are then not used).
    """
    stages = _flatten(model)
    meta = next(
        (
            s
            for s in stages
            if isinstance(s, LogisticRegressionModel) and s.getFeaturesCol() == META_FEATURES
        ),
        None,
    )
    if meta is not None:
        assembler = next(
            s
            for s in stages
            if isinstance(s, VectorAssembler) and s.getOutputCol() == META_FEATURES
        )
        names = [c.removesuffix(LOGIT_SUFFIX) for c in assembler.getInputCols()]
        return _ranked(zip(names, meta.coefficients.toArray(), strict=True))
    vote = next(
        (
            s
            for s in stages
            if isinstance(s, WeightedAverage)
            and s.getOutputCol() == PROBABILITY_COL
            and all(c.endswith(CALIBRATED_SUFFIX) for c in s.getInputCols())
        ),
        None,
    )
    if vote is not None:
        names = [c.removesuffix(CALIBRATED_SUFFIX) for c in vote.getInputCols()]
        return _ranked(zip(names, vote.getWeights(), strict=True))
    classifiers = [s for s in stages if isinstance(s, _CLASSIFIER_MODELS)]
    if not classifiers:
        raise ValueError("the model has no classifier stage to explain")
    vectors = [
        (
            s.coefficients if isinstance(s, LogisticRegressionModel) else s.featureImportances
        ).toArray()
        for s in classifiers
    ]
    mean = np.mean(vectors, axis=0)
    logged = next((s for s in stages if isinstance(s, SignedLog)), None)
    if logged is not None and len(feature_names) + len(logged.getOrDefault(logged.slots)) == len(
        mean
    ):
        slots = logged.getOrDefault(logged.slots)
        feature_names = [*feature_names, *(f"log {feature_names[i]}" for i in slots)]
    if len(feature_names) != len(mean):
        raise ValueError(
            f"{len(feature_names)} feature names for a {len(mean)}-slot feature vector"
        )
    return _ranked(zip(feature_names, mean, strict=True))


def _flatten(model: PipelineModel) -> list[Transformer]:
    return [
        inner
        for stage in model.stages
        for inner in (_flatten(stage) if isinstance(stage, PipelineModel) else [stage])
    ]


def _ranked(pairs: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    items = [(str(name), float(value)) for name, value in pairs]
    return sorted(items, key=lambda item: (-abs(item[1]), item[0]))
