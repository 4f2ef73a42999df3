"""Stacking and voting: a combiner learnt only from the base models' out-of-fold predictions.

The bases are fitted (or reused) on all training rows; the combiner sees each training row only
as predicted by base models that never saw it, and is itself cross-fitted over the same folds
for the ensemble's own out-of-fold predictions.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml import Pipeline, PipelineModel, Transformer
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from churn_platform.core import evaluation
from churn_platform.core.columns import FOLD_COL, LABEL_COL
from churn_platform.core.models.fitting import (
    PROBABILITY_COL,
    BaseFit,
    FitResult,
    Part,
    TrainingFrame,
    assemble,
    fit_classifier,
    run_parallel,
)
from churn_platform.core.models.kinds import BASE_KINDS, kind, merged_params
from churn_platform.core.models.stages import (
    EPSILON,
    Logit,
    PlattScaler,
    PositiveProbability,
    RenameColumn,
    WeightedAverage,
)

META_FEATURES = "stacking_features"
BASE_SUFFIX = "_probability"
LOGIT_SUFFIX = "_logit"
CALIBRATED_SUFFIX = "_calibrated"


@dataclass
class Head:
    """A fitted combiner: stages from `<base>_probability` columns to `churn_probability`."""

    stages: list[Transformer]
    temp_cols: list[str]
    weights: dict[str, float]
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)


def fit_ensemble(
    name: str,
    family: str,
    params: dict[str, Any],
    frame: TrainingFrame,
    seed: int,
    fitted_bases: Mapping[str, BaseFit],
) -> FitResult:
    """Bases reused or fitted; the combiner learns from their out-of-fold predictions only."""
    bases = list(params["bases"])
    if any(b not in BASE_KINDS for b in bases) or len(set(bases)) != len(bases) or len(bases) < 2:
        raise ValueError(f"{name}: bases must be >= 2 distinct kinds of {BASE_KINDS}, got {bases}")
    overrides = params.get("base_params") or {}
    fits: dict[str, BaseFit] = {}
    for base in bases:
        if base in fitted_bases:
            fits[base] = fitted_bases[base]
        else:
            merged = merged_params(base, overrides.get(base))
            fits[base] = fit_classifier(base, kind(base).family, merged, frame, seed).as_base()
    base_oof = _joined_oof(name, fits, frame)
    fit_head = _head_fitter(family, params, bases, base_oof, seed)
    spark = frame.train.sparkSession
    oof_rows = spark.createDataFrame(base_oof).coalesce(1).cache()
    try:
        heads = run_parallel(spark, lambda fold: fit_head(fold, oof_rows), [None, *frame.folds])
        oof = _cross_fitted(oof_rows, frame, heads[1:])
    finally:
        oof_rows.unpersist()
    head = heads[0]
    weights = head.weights  # every base, zero weights included: the record of what was chosen
    used = [b for b in bases if family != "voting" or weights[b] > 0.0]
    if family == "voting":
        head = voting_head(used, head.calibration, head.weights)
    parts = [_base_part(b, fits[b]) for b in used]
    model = assemble(parts, head.stages, [*head.temp_cols, *(b + BASE_SUFFIX for b in used)])
    fitted_params = {
        **params,
        "base_params": {b: fits[b].params for b in bases},
        "weights": weights,
        "reused_bases": sorted(b for b in bases if b in fitted_bases),
    }
    return FitResult(name, model, oof, fitted_params, base_oof=base_oof)


def versus_best_base(fit: FitResult) -> tuple[str, float, float] | None:
    """For an ensemble: its best base on CV ROC-AUC (mean over the folds, from the bases'
    out-of-fold predictions it was fitted on), that base's figure and the ensemble's gain over
    it; None for a model without bases. Stacking must beat this to earn its place."""
    if fit.base_oof is None:
        return None
    oof = fit.base_oof
    scores = {
        base: _mean_fold_auc(oof[LABEL_COL], oof[base + BASE_SUFFIX], oof[FOLD_COL])
        for base in fit.params["bases"]
    }
    best = max(scores, key=lambda b: (np.nan_to_num(scores[b], nan=-np.inf), b))
    own = _mean_fold_auc(fit.oof[LABEL_COL], fit.oof[PROBABILITY_COL], fit.oof[FOLD_COL])
    return best, scores[best], own - scores[best]


def _mean_fold_auc(labels: pd.Series, scores: pd.Series, folds: pd.Series) -> float:
    """Mean fold ROC-AUC, the platform's CV figure (`evaluation.judge`)."""
    return float(np.mean(list(evaluation.roc_auc_by_group(labels, scores, folds).values())))


def _joined_oof(name: str, fits: Mapping[str, BaseFit], frame: TrainingFrame) -> pd.DataFrame:
    """id, fold, label and one `<base>_probability` column per base, for every training row."""
    id_col = frame.id_col
    frames = [
        fit.oof[[id_col, FOLD_COL, LABEL_COL, PROBABILITY_COL]].rename(
            columns={PROBABILITY_COL: base + BASE_SUFFIX}
        )
        for base, fit in fits.items()
    ]
    joined = functools.reduce(
        lambda left, right: left.merge(right.drop(columns=[FOLD_COL, LABEL_COL]), on=id_col),
        frames,
    )
    if len(joined) != frame.train_rows:
        raise ValueError(
            f"{name}: the bases' out-of-fold predictions cover {len(joined)} of "
            f"{frame.train_rows} training rows; were they fitted on other features?"
        )
    return joined.sort_values(id_col, ignore_index=True)


def _base_part(base: str, fit: BaseFit) -> Part:
    """A fitted base model as an ensemble part whose output is `<base>_probability`."""
    rename = RenameColumn(inputCol=PROBABILITY_COL, outputCol=base + BASE_SUFFIX)
    return Part([*fit.model.stages, rename], [], base + BASE_SUFFIX)


def _cross_fitted(rows: DataFrame, frame: TrainingFrame, heads: Sequence[Head]) -> pd.DataFrame:
    """The ensemble's own OOF: fold f's rows through the combiner fitted without fold f."""
    keep = [frame.id_col, LABEL_COL, FOLD_COL, PROBABILITY_COL]
    scored = [
        PipelineModel(stages=head.stages).transform(rows.where(F.col(FOLD_COL) == fold))
        for fold, head in zip(frame.folds, heads, strict=True)
    ]
    union = functools.reduce(DataFrame.unionByName, [s.select(*keep) for s in scored])
    return union.toPandas().sort_values(frame.id_col, ignore_index=True)


def _head_fitter(
    family: str, params: Mapping[str, Any], bases: list[str], base_oof: pd.DataFrame, seed: int
) -> Callable[[int | None, DataFrame], Head]:
    """A function fitting the combiner on all OOF rows (None) or on all but one fold."""
    if family == "stacking":
        reg = float(params["regParam"])

        def fit_stacking(excluded: int | None, rows: DataFrame) -> Head:
            if excluded is not None:
                rows = rows.where(F.col(FOLD_COL) != excluded)
            return _stacking_head(rows, bases, reg)

        return fit_stacking
    sample = _sample(base_oof, int(params["maxSampleRows"]), seed)
    step = float(params["weightStep"])
    cols = [b + BASE_SUFFIX for b in bases]

    def fit_voting(excluded: int | None, rows: DataFrame) -> Head:
        part = sample if excluded is None else sample[sample[FOLD_COL] != excluded]
        probabilities = part[cols].to_numpy(dtype=float)
        return _voting_fit(probabilities, part[LABEL_COL].to_numpy(dtype=float), bases, step)

    return fit_voting


def _sample(base_oof: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most max_rows OOF rows: enough to fit a few calibration numbers and weights."""
    if len(base_oof) <= max_rows:
        return base_oof
    return base_oof.sample(n=max_rows, random_state=seed)


def _stacking_head(rows: DataFrame, bases: Sequence[str], reg: float) -> Head:
    """Meta logistic regression on the log-odds of the bases' out-of-fold probabilities."""
    base_cols = [b + BASE_SUFFIX for b in bases]
    logit_cols = [b + LOGIT_SUFFIX for b in bases]
    meta_cols = ["stacking_raw", "stacking_prob", "stacking_pred"]
    pipeline = Pipeline(
        stages=[
            Logit(inputCols=base_cols, outputCols=logit_cols),
            VectorAssembler(inputCols=logit_cols, outputCol=META_FEATURES),
            LogisticRegression(
                featuresCol=META_FEATURES,
                labelCol=LABEL_COL,
                rawPredictionCol=meta_cols[0],
                probabilityCol=meta_cols[1],
                predictionCol=meta_cols[2],
                regParam=reg,
            ),
            PositiveProbability(inputCol=meta_cols[1], outputCol=PROBABILITY_COL),
        ]
    )
    fitted = pipeline.fit(rows)
    coefficients = fitted.stages[2].coefficients.toArray()
    weights = {b: float(c) for b, c in zip(bases, coefficients, strict=True)}
    return Head(list(fitted.stages), [*logit_cols, META_FEATURES, *meta_cols], weights)


def _np_logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPSILON, 1.0 - EPSILON)
    return np.log(p / (1.0 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def platt(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling on log-odds by Newton's method, with Platt's smoothed targets.

    The smoothed targets (P+1)/(P+2) and 1/(N+2) keep the fit finite when a base model
    separates the sample perfectly.
    """
    positives = float(y.sum())
    negatives = float(len(y) - positives)
    target = np.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    design = np.column_stack([_np_logit(p), np.ones_like(p)])
    coef = np.array([1.0, 0.0])
    for _ in range(100):
        q = _sigmoid(design @ coef)
        gradient = design.T @ (q - target)
        hessian = design.T @ (design * (q * (1 - q))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        coef -= step
        if np.max(np.abs(step)) < 1e-12:
            break
    return float(coef[0]), float(coef[1])


def simplex_grid(size: int, step: float) -> Iterator[np.ndarray]:
    """All weight vectors of `size` non-negative multiples of `step` summing to 1."""
    units = round(1.0 / step)
    for cuts in itertools.combinations(range(units + size - 1), size - 1):
        counts = np.diff([-1, *cuts, units + size - 1]) - 1
        yield counts / units


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPSILON, 1.0 - EPSILON)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _voting_fit(
    probabilities: np.ndarray, y: np.ndarray, bases: Sequence[str], step: float
) -> Head:
    """Platt-calibrate each base, then pick simplex weights minimising OOF log loss."""
    scaling = [platt(probabilities[:, j], y) for j in range(len(bases))]
    calibrated = np.column_stack(
        [_sigmoid(a * _np_logit(probabilities[:, j]) + b) for j, (a, b) in enumerate(scaling)]
    )
    best, best_loss = None, np.inf
    for weights in simplex_grid(len(bases), step):
        loss = _log_loss(calibrated @ weights, y)
        if loss < best_loss:
            best, best_loss = weights, loss
    calibration = dict(zip(bases, scaling, strict=True))
    return voting_head(bases, calibration, dict(zip(bases, map(float, best), strict=True)))


def voting_head(
    bases: Sequence[str],
    calibration: Mapping[str, tuple[float, float]],
    weights: Mapping[str, float],
) -> Head:
    calibrated = [b + CALIBRATED_SUFFIX for b in bases]
    stages: list[Transformer] = [
        PlattScaler(
            inputCols=[b + BASE_SUFFIX for b in bases],
            outputCols=calibrated,
            slopes=[calibration[b][0] for b in bases],
            intercepts=[calibration[b][1] for b in bases],
        ),
        WeightedAverage(
            inputCols=calibrated, weights=[weights[b] for b in bases], outputCol=PROBABILITY_COL
        ),
    ]
    return Head(
        stages, calibrated, {b: weights[b] for b in bases}, {b: calibration[b] for b in bases}
    )
