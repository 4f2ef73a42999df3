"""Churn models as pure PySpark MLlib functions: base learners, bagging, boosting, stacking, voting.

Every model is a `PipelineModel` from a `features` vector to a double `churn_probability`.
Custom stages are pure-Python transformers built only from JVM column functions, so models persist
with `PipelineModel.save`/`load` and `mlflow.spark`, and score 10M rows without Python UDFs.
Evaluation, threshold choice, curves and importances are functions of prediction DataFrames, so
the Dagster assets over this module stay thin.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from pyspark import keyword_only
from pyspark.ml import Pipeline, PipelineModel, Transformer
from pyspark.ml.classification import (
    DecisionTreeClassificationModel,
    DecisionTreeClassifier,
    GBTClassificationModel,
    GBTClassifier,
    LogisticRegression,
    LogisticRegressionModel,
    RandomForestClassificationModel,
    RandomForestClassifier,
)
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasInputCols, HasOutputCol, HasOutputCols
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.utils import is_remote
from pyspark.util import inheritable_thread_target

PROBABILITY_COL = "churn_probability"
DEFAULT_SEED = 42
LABEL_COL = "label"
FEATURES_COL = "features"
SPLIT_COL = "split"
FOLD_COL = "fold"
# Fold models fitted at once (threads sharing the SparkSession); results do not depend on it.
CV_PARALLELISM = 3
TRAIN_SPLIT = "train"
EPSILON = 1e-6

BASE_KINDS = (
    "logistic_regression",
    "decision_tree",
    "random_forest",
    "gbt",
    "gbt_tuned",
    "bagged_lr",
    "bagged_trees",
)
ENSEMBLE_KINDS = ("stacking", "voting")
MODEL_KINDS = BASE_KINDS + ENSEMBLE_KINDS

# Spark parameter names pass straight to the estimators; a list value is a grid searched by
# cross-validation over the `fold` column. Chosen on the Telco training split only, never on its
# test split: Spark CV over the folds picked regParam 0.03 from 0.001-0.03, and CV of scikit-learn's
# gradient boosting favoured shallow trees, step 0.05 and 0.8 subsampling over Spark's defaults.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"regParam": [0.003, 0.01, 0.03], "elasticNetParam": 0.0},
    "decision_tree": {"maxDepth": 6, "minInstancesPerNode": 20},
    "random_forest": {
        "numTrees": 200,
        "maxDepth": 8,
        "minInstancesPerNode": 10,
        "featureSubsetStrategy": "sqrt",
    },
    "gbt": {"maxIter": 100, "maxDepth": 3, "stepSize": 0.05, "subsamplingRate": 0.8},
    "gbt_tuned": {
        "maxIter": 100,
        "maxDepth": [2, 4],
        "stepSize": 0.05,
        "subsamplingRate": 0.8,
    },
    "bagged_lr": {"base": "logistic_regression", "numModels": 10, "regParam": 0.03},
    "bagged_trees": {
        "base": "decision_tree",
        "numModels": 30,
        "maxDepth": 8,
        "minInstancesPerNode": 10,
    },
    "stacking": {
        "bases": ["logistic_regression", "random_forest", "gbt"],
        "base_params": {"logistic_regression": {"regParam": 0.03}},
        "regParam": 0.001,
    },
    "voting": {
        "bases": ["logistic_regression", "random_forest", "gbt"],
        "base_params": {"logistic_regression": {"regParam": 0.03}},
        "weightStep": 0.05,
        "maxSampleRows": 200_000,
    },
}

_ESTIMATORS: dict[str, type] = {
    "logistic_regression": LogisticRegression,
    "decision_tree": DecisionTreeClassifier,
    "random_forest": RandomForestClassifier,
    "gbt": GBTClassifier,
}
_FAMILY = {"gbt_tuned": "gbt", "bagged_lr": "bagging", "bagged_trees": "bagging"}
_BAGGING_KEYS = ("base", "numModels", "sampleFraction")
_CLASSIFIER_MODELS = (
    LogisticRegressionModel,
    DecisionTreeClassificationModel,
    RandomForestClassificationModel,
    GBTClassificationModel,
)
_META_FEATURES = "stacking_features"
_BASE_SUFFIX = "_probability"
_LOGIT_SUFFIX = "_logit"
_CALIBRATED_SUFFIX = "_calibrated"


def _clipped_logit(col: Column, epsilon: float) -> Column:
    p = F.least(F.greatest(col, F.lit(epsilon)), F.lit(1.0 - epsilon))
    return F.log(p / (F.lit(1.0) - p))


class _ColumnToColumn(
    Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable
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


class Logit(Transformer, HasInputCols, HasOutputCols, DefaultParamsReadable, DefaultParamsWritable):
    """Log-odds of probability columns: the scale on which a meta-learner combines models."""

    epsilon = Param(
        Params._dummy(),
        "epsilon",
        "probabilities are clipped to [epsilon, 1 - epsilon] so the log-odds stay finite",
        typeConverter=TypeConverters.toFloat,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        epsilon: float = EPSILON,
    ) -> None:
        super().__init__()
        self._setDefault(epsilon=EPSILON)
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        eps = self.getOrDefault(self.epsilon)
        return dataset.withColumns(
            {
                out: _clipped_logit(F.col(inp), eps)
                for inp, out in zip(self.getInputCols(), self.getOutputCols(), strict=True)
            }
        )


class PlattScaler(
    Transformer, HasInputCols, HasOutputCols, DefaultParamsReadable, DefaultParamsWritable
):
    """sigmoid(slope * logit(p) + intercept) per column: puts models on one probability scale."""

    slopes = Param(
        Params._dummy(), "slopes", "one slope per input column", TypeConverters.toListFloat
    )
    intercepts = Param(
        Params._dummy(), "intercepts", "one intercept per input column", TypeConverters.toListFloat
    )
    epsilon = Param(
        Params._dummy(),
        "epsilon",
        "probabilities are clipped to [epsilon, 1 - epsilon] before the log-odds",
        typeConverter=TypeConverters.toFloat,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        slopes: list[float] | None = None,
        intercepts: list[float] | None = None,
        epsilon: float = EPSILON,
    ) -> None:
        super().__init__()
        self._setDefault(epsilon=EPSILON)
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        eps = self.getOrDefault(self.epsilon)
        columns = zip(
            self.getInputCols(),
            self.getOutputCols(),
            self.getOrDefault(self.slopes),
            self.getOrDefault(self.intercepts),
            strict=True,
        )
        return dataset.withColumns(
            {
                out: F.lit(1.0)
                / (F.lit(1.0) + F.exp(-(F.lit(a) * _clipped_logit(F.col(inp), eps) + F.lit(b))))
                for inp, out, a, b in columns
            }
        )


class WeightedAverage(
    Transformer, HasInputCols, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable
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


class DropColumns(Transformer, DefaultParamsReadable, DefaultParamsWritable):
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


@dataclass(frozen=True)
class BaseFit:
    """A base model already fitted on the same training rows, folds and seed, for an ensemble.

    `model` maps the `features` vector to `churn_probability` (as `FitResult.model`); `oof` holds
    id, fold, label and `churn_probability` for every training row, predicted out of fold.
    """

    model: PipelineModel
    oof: DataFrame
    params: dict[str, Any]


@dataclass(frozen=True)
class FitResult:
    """A fitted model with the out-of-fold predictions that choose its threshold and CV score.

    `oof` holds id, fold, label and `churn_probability` for every training row exactly once,
    each predicted by a model that never saw that row's fold. For stacking and voting the meta
    level is cross-fitted on `base_oof` (one `<base>_probability` column per base model), whose
    base predictions are out-of-fold too; `base_oof` is None for single models.
    """

    kind: str
    model: PipelineModel
    oof: DataFrame
    params: dict[str, Any]
    base_oof: DataFrame | None = None


@dataclass
class _Part:
    """Fitted stages that add `output_col`, the scratch columns they leave, the params used."""

    stages: list[Transformer]
    temp_cols: list[str]
    params: dict[str, Any]
    output_col: str


_Fitted = tuple[PipelineModel, DataFrame | None, dict[str, Any], DataFrame | None]


def full_model(feature_pipeline: PipelineModel, model: PipelineModel) -> PipelineModel:
    """One model from engineered columns to `churn_probability`, as it is logged and served."""
    return PipelineModel(stages=[*feature_pipeline.stages, *model.stages])


def train_model(
    kind: str, df: DataFrame, params: Mapping[str, Any] | None = None, seed: int = DEFAULT_SEED
) -> PipelineModel:
    """Fit one model kind on the training split of a features DataFrame.

    Test rows are filtered out here, so callers can pass the whole features table. Parameters
    override `DEFAULT_PARAMS[kind]`; list values are grid-searched by CV over the `fold` column.
    """
    return _fit(kind, df, params, seed, id_col=None, with_oof=False)[0]


def fit_model(
    kind: str,
    df: DataFrame,
    params: Mapping[str, Any] | None = None,
    seed: int = DEFAULT_SEED,
    *,
    id_col: str,
    fitted_bases: Mapping[str, BaseFit] | None = None,
) -> FitResult:
    """Fit a model and its out-of-fold predictions in one pass, sharing the tuning fits.

    Grid winners are chosen once by CV on the whole training split and then reused for the
    per-fold refits, so the OOF scores carry the usual mild optimism of tuning on the same folds.
    `params` are the values actually used; ensembles add `weights` per base model (meta-LR
    coefficients on log-odds for stacking, convex weights for voting). An ensemble takes the
    bases found in `fitted_bases` as they are (their fits and OOF predictions are exactly what it
    would compute itself) and fits only the others.
    """
    model, oof, fitted_params, base_oof = _fit(
        kind, df, params, seed, id_col=id_col, with_oof=True, fitted_bases=fitted_bases
    )
    assert oof is not None
    return FitResult(kind, model, oof, fitted_params, base_oof)


def out_of_fold_predictions(
    kind: str,
    df: DataFrame,
    params: Mapping[str, Any] | None = None,
    seed: int = DEFAULT_SEED,
    *,
    id_col: str,
) -> DataFrame:
    """id, fold, label, churn_probability for training rows only, each predicted out of its fold.

    Use `fit_model` when the final model is needed as well; it reuses the same fits.
    """
    return fit_model(kind, df, params, seed, id_col=id_col).oof


def _merge_params(kind: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    if kind not in DEFAULT_PARAMS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    return {**DEFAULT_PARAMS[kind], **(params or {})}


def _train_rows(df: DataFrame) -> DataFrame:
    return df.filter(F.col(SPLIT_COL) == TRAIN_SPLIT)


def _folds(train: DataFrame) -> list[int]:
    folds = sorted(row[0] for row in train.select(FOLD_COL).distinct().collect())
    if len(folds) < 2 or folds != list(range(len(folds))):
        raise ValueError(f"training rows need '{FOLD_COL}' values 0..k-1 with k >= 2, got {folds}")
    return folds


@contextmanager
def _cached(df: DataFrame) -> Iterator[DataFrame]:
    df.cache()
    try:
        yield df
    finally:
        df.unpersist()


def _fit(
    kind: str,
    df: DataFrame,
    params: Mapping[str, Any] | None,
    seed: int,
    *,
    id_col: str | None,
    with_oof: bool,
    fitted_bases: Mapping[str, BaseFit] | None = None,
) -> _Fitted:
    merged = _merge_params(kind, params)
    with _cached(_train_rows(df)) as train:
        folds = _folds(train)
        if kind in ENSEMBLE_KINDS:
            return _fit_ensemble(
                kind, merged, seed, train, folds, id_col, with_oof, fitted_bases or {}
            )
        part = _fit_base(kind, merged, seed, train, PROBABILITY_COL)
        model = _assemble([part])
        oof = None
        if with_oof:
            oof = _cross_fit(
                train,
                folds,
                lambda rows: _assemble([_fit_base(kind, part.params, seed, rows, PROBABILITY_COL)]),
                [PROBABILITY_COL],
                id_col,
            )
        return model, oof, part.params, None


def _keep(id_col: str | None) -> list[str]:
    return [*([id_col] if id_col else []), FOLD_COL, LABEL_COL]


def _cross_fit(
    train: DataFrame,
    folds: Sequence[int],
    fit: Callable[[DataFrame], PipelineModel],
    output_cols: Sequence[str],
    id_col: str | None,
) -> DataFrame:
    """For each fold f: fit on the other folds, predict fold f; the union covers each row once.

    Folds are fitted CV_PARALLELISM at a time, as CrossValidator's `parallelism` does: on small
    data a fit is a chain of short Spark jobs whose latency, not the cores, bounds it.
    """

    def fit_fold(fold: int) -> DataFrame:
        model = fit(train.filter(F.col(FOLD_COL) != fold))
        held_out = train.filter(F.col(FOLD_COL) == fold)
        return model.transform(held_out).select(*_keep(id_col), *output_cols)

    with ThreadPoolExecutor(max_workers=CV_PARALLELISM) as pool:
        frames = list(pool.map(_thread_target(fit_fold, train.sparkSession), folds))
    return functools.reduce(DataFrame.unionByName, frames)


def _thread_target(fn: Callable[..., Any], session: SparkSession) -> Callable[..., Any]:
    """`fn` for a worker thread, carrying the caller's Spark job properties (and, over Spark
    Connect, its session)."""
    if is_remote():
        return inheritable_thread_target(session)(fn)
    return inheritable_thread_target(fn)


def _assemble(
    parts: Sequence[_Part], head: Sequence[Transformer] = (), head_temps: Sequence[str] = ()
) -> PipelineModel:
    stages = [stage for part in parts for stage in part.stages] + list(head)
    temps = [col for part in parts for col in part.temp_cols] + list(head_temps)
    return PipelineModel(stages=[*stages, DropColumns(columns=temps)])


def _classifier(family: str, params: Mapping[str, Any], seed: int, prefix: str) -> Any:
    estimator = _ESTIMATORS[family]()
    columns = {
        "featuresCol": FEATURES_COL,
        "labelCol": LABEL_COL,
        "rawPredictionCol": f"{prefix}_raw",
        "probabilityCol": f"{prefix}_prob",
        "predictionCol": f"{prefix}_pred",
    }
    for name, value in columns.items():
        estimator.set(estimator.getParam(name), value)
    if estimator.hasParam("seed"):
        estimator.set(estimator.getParam("seed"), seed)
    for name, value in params.items():
        if not estimator.hasParam(name):
            raise ValueError(f"{family}: unknown Spark parameter {name!r}")
        if not isinstance(value, list):
            estimator.set(estimator.getParam(name), value)
    return estimator


def _fit_single(
    family: str,
    params: Mapping[str, Any],
    seed: int,
    train: DataFrame,
    prefix: str,
    output_col: str,
) -> _Part:
    """Fit one Spark classifier; list-valued params are chosen by CV over the `fold` column."""
    estimator = _classifier(family, params, seed, prefix)
    grid = {name: values for name, values in params.items() if isinstance(values, list)}
    chosen = {name: value for name, value in params.items() if name not in grid}
    if grid:
        builder = ParamGridBuilder()
        for name, values in grid.items():
            builder.addGrid(estimator.getParam(name), values)
        param_maps = builder.build()
        validator = CrossValidator(
            estimator=estimator,
            estimatorParamMaps=param_maps,
            evaluator=BinaryClassificationEvaluator(
                rawPredictionCol=f"{prefix}_raw", labelCol=LABEL_COL
            ),
            foldCol=FOLD_COL,
            numFolds=len(_folds(train)),
            parallelism=2,
        )
        tuned = validator.fit(train)
        best = param_maps[int(np.argmax(tuned.avgMetrics))]
        chosen.update({param.name: value for param, value in best.items()})
        fitted = tuned.bestModel
    else:
        fitted = estimator.fit(train)
    extract = PositiveProbability(inputCol=f"{prefix}_prob", outputCol=output_col)
    temps = [f"{prefix}_raw", f"{prefix}_prob", f"{prefix}_pred"]
    return _Part([fitted, extract], temps, chosen, output_col)


def _fit_bagging(
    params: Mapping[str, Any], seed: int, train: DataFrame, prefix: str, output_col: str
) -> _Part:
    """Average of base learners each fit on a seeded bootstrap sample of the training rows."""
    base = params["base"]
    if base not in _ESTIMATORS:
        raise ValueError(f"bagging base {base!r} is not one of {tuple(_ESTIMATORS)}")
    learner = {k: v for k, v in params.items() if k not in _BAGGING_KEYS}
    if any(isinstance(v, list) for v in learner.values()):
        raise ValueError("bagging takes fixed base-learner parameters, not grids")
    count = int(params["numModels"])
    fraction = float(params.get("sampleFraction", 1.0))
    stages: list[Transformer] = []
    temps: list[str] = []
    for b in range(count):
        sample = train.sample(withReplacement=True, fraction=fraction, seed=seed + b)
        bag = _fit_single(base, learner, seed + b, sample, f"{prefix}_bag{b}", f"{prefix}_bag{b}_p")
        stages += bag.stages
        temps += [*bag.temp_cols, bag.output_col]
    inputs = [f"{prefix}_bag{b}_p" for b in range(count)]
    stages.append(
        WeightedAverage(inputCols=inputs, weights=[1.0 / count] * count, outputCol=output_col)
    )
    return _Part(stages, temps, dict(params), output_col)


def _fit_base(
    kind: str, params: Mapping[str, Any], seed: int, train: DataFrame, output_col: str
) -> _Part:
    family = _FAMILY.get(kind, kind)
    if family == "bagging":
        return _fit_bagging(params, seed, train, kind, output_col)
    return _fit_single(family, params, seed, train, kind, output_col)


@dataclass
class _Head:
    """A fitted combiner: stages from `<base>_probability` columns to `churn_probability`."""

    stages: list[Transformer]
    temp_cols: list[str]
    weights: dict[str, float]
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class _Sample:
    """Out-of-fold base probabilities collected to the driver for the voting weight search."""

    probabilities: np.ndarray
    label: np.ndarray
    fold: np.ndarray

    def without_fold(self, fold: int) -> _Sample:
        keep = self.fold != fold
        return _Sample(self.probabilities[keep], self.label[keep], self.fold[keep])


def _fit_ensemble(
    kind: str,
    params: dict[str, Any],
    seed: int,
    train: DataFrame,
    folds: Sequence[int],
    id_col: str | None,
    with_oof: bool,
    fitted_bases: Mapping[str, BaseFit],
) -> _Fitted:
    """Bases refit on all training rows; the combiner learns only from their OOF predictions."""
    bases = list(params["bases"])
    unknown = [b for b in bases if b not in BASE_KINDS]
    if unknown or len(set(bases)) != len(bases) or len(bases) < 2:
        raise ValueError(f"{kind}: bases must be >= 2 distinct kinds of {BASE_KINDS}, got {bases}")
    reused = {b: fitted_bases[b] for b in bases if b in fitted_bases}
    if reused and id_col is None:
        raise ValueError(f"{kind}: reusing fitted bases needs the id column to align their OOF")
    overrides = params.get("base_params") or {}
    todo = [b for b in bases if b not in reused]
    parts = {
        b: _fit_base(b, _merge_params(b, overrides.get(b)), seed, train, b + _BASE_SUFFIX)
        for b in todo
    }
    parts.update({b: _reused_part(b, fit) for b, fit in reused.items()})
    resolved = {b: parts[b].params for b in bases}

    def fit_bases(rows: DataFrame) -> PipelineModel:
        return _assemble([_fit_base(b, resolved[b], seed, rows, b + _BASE_SUFFIX) for b in todo])

    frames = [
        fit.oof.select(*_keep(id_col), F.col(PROBABILITY_COL).alias(b + _BASE_SUFFIX))
        for b, fit in reused.items()
    ]
    if todo:
        frames.insert(
            0, _cross_fit(train, folds, fit_bases, [b + _BASE_SUFFIX for b in todo], id_col)
        )
    base_oof = functools.reduce(
        lambda left, right: left.join(right.drop(FOLD_COL, LABEL_COL), on=id_col), frames
    ).cache()
    try:
        if reused and base_oof.count() != train.count():
            raise ValueError(
                f"{kind}: the reused bases' out-of-fold predictions do not cover the training rows"
            )
        fit_head = _head_fitter(kind, params, bases, base_oof, seed)
        head = fit_head(None)
        weights = head.weights
        used = bases
        if kind == "voting":
            used = [b for b in bases if weights[b] > 0.0]
            head = _voting_stages(used, head.calibration, weights)
        temps = [*head.temp_cols, *(b + _BASE_SUFFIX for b in used)]
        model = _assemble([parts[b] for b in used], head.stages, temps)
        oof = _cross_fit_head(base_oof, folds, fit_head, id_col) if with_oof else None
        base_params = {b: resolved[b] for b in bases}
        fitted_params = {
            **params,
            "base_params": base_params,
            "weights": weights,
            "reused_bases": sorted(reused),
        }
        return model, oof, fitted_params, base_oof
    finally:
        base_oof.unpersist()


def _reused_part(kind: str, fit: BaseFit) -> _Part:
    """A fitted base model as an ensemble part whose output is `<kind>_probability`."""
    rename = RenameColumn(inputCol=PROBABILITY_COL, outputCol=kind + _BASE_SUFFIX)
    return _Part([*fit.model.stages, rename], [], dict(fit.params), kind + _BASE_SUFFIX)


def _head_fitter(
    kind: str, params: Mapping[str, Any], bases: list[str], base_oof: DataFrame, seed: int
) -> Callable[[int | None], _Head]:
    """A function fitting the combiner on all OOF rows (None) or on all but one fold."""
    if kind == "stacking":
        reg = float(params["regParam"])

        def fit_stacking(excluded: int | None) -> _Head:
            rows = base_oof if excluded is None else base_oof.filter(F.col(FOLD_COL) != excluded)
            return _fit_stacking_head(rows, bases, reg)

        return fit_stacking
    base_cols = [b + _BASE_SUFFIX for b in bases]
    sample = _driver_sample(base_oof, base_cols, int(params["maxSampleRows"]), seed)
    step = float(params["weightStep"])

    def fit_voting(excluded: int | None) -> _Head:
        rows = sample if excluded is None else sample.without_fold(excluded)
        return _fit_voting_head(rows, bases, step)

    return fit_voting


def _cross_fit_head(
    base_oof: DataFrame,
    folds: Sequence[int],
    fit_head: Callable[[int | None], _Head],
    id_col: str | None,
) -> DataFrame:
    """Meta-level OOF: the combiner for fold f is fit on the other folds' OOF rows only."""
    frames = []
    for fold in folds:
        head = PipelineModel(stages=fit_head(fold).stages)
        held_out = base_oof.filter(F.col(FOLD_COL) == fold)
        frames.append(head.transform(held_out).select(*_keep(id_col), PROBABILITY_COL))
    return functools.reduce(DataFrame.unionByName, frames)


def _fit_stacking_head(rows: DataFrame, bases: Sequence[str], reg: float) -> _Head:
    """Meta logistic regression on the log-odds of the bases' out-of-fold probabilities."""
    base_cols = [b + _BASE_SUFFIX for b in bases]
    logit_cols = [b + _LOGIT_SUFFIX for b in bases]
    meta_cols = ["stacking_raw", "stacking_prob", "stacking_pred"]
    pipeline = Pipeline(
        stages=[
            Logit(inputCols=base_cols, outputCols=logit_cols),
            VectorAssembler(inputCols=logit_cols, outputCol=_META_FEATURES),
            LogisticRegression(
                featuresCol=_META_FEATURES,
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
    return _Head(list(fitted.stages), [*logit_cols, _META_FEATURES, *meta_cols], weights)


def _driver_sample(base_oof: DataFrame, cols: Sequence[str], max_rows: int, seed: int) -> _Sample:
    """At most ~max_rows OOF rows on the driver: enough to fit a few calibration numbers."""
    total = base_oof.count()
    rows = base_oof if total <= max_rows else base_oof.sample(False, max_rows / total, seed)
    frame = rows.select(FOLD_COL, LABEL_COL, *cols).toPandas()
    return _Sample(
        frame[list(cols)].to_numpy(dtype=float),
        frame[LABEL_COL].to_numpy(dtype=float),
        frame[FOLD_COL].to_numpy(),
    )


def _np_logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPSILON, 1.0 - EPSILON)
    return np.log(p / (1.0 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _platt(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
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


def _simplex_grid(size: int, step: float) -> Iterator[np.ndarray]:
    """All weight vectors of `size` non-negative multiples of `step` summing to 1."""
    units = round(1.0 / step)
    for cuts in itertools.combinations(range(units + size - 1), size - 1):
        counts = np.diff([-1, *cuts, units + size - 1]) - 1
        yield counts / units


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPSILON, 1.0 - EPSILON)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _fit_voting_head(sample: _Sample, bases: Sequence[str], step: float) -> _Head:
    """Platt-calibrate each base, then pick simplex weights minimising OOF log loss."""
    platt = [_platt(sample.probabilities[:, j], sample.label) for j in range(len(bases))]
    calibrated = np.column_stack(
        [_sigmoid(a * _np_logit(sample.probabilities[:, j]) + b) for j, (a, b) in enumerate(platt)]
    )
    best, best_loss = None, np.inf
    for weights in _simplex_grid(len(bases), step):
        loss = _log_loss(calibrated @ weights, sample.label)
        if loss < best_loss:
            best, best_loss = weights, loss
    calibration = dict(zip(bases, platt, strict=True))
    return _voting_stages(bases, calibration, dict(zip(bases, map(float, best), strict=True)))


def _voting_stages(
    bases: Sequence[str],
    calibration: Mapping[str, tuple[float, float]],
    weights: Mapping[str, float],
) -> _Head:
    calibrated = [b + _CALIBRATED_SUFFIX for b in bases]
    stages: list[Transformer] = [
        PlattScaler(
            inputCols=[b + _BASE_SUFFIX for b in bases],
            outputCols=calibrated,
            slopes=[calibration[b][0] for b in bases],
            intercepts=[calibration[b][1] for b in bases],
        ),
        WeightedAverage(
            inputCols=calibrated, weights=[weights[b] for b in bases], outputCol=PROBABILITY_COL
        ),
    ]
    return _Head(
        stages, calibrated, {b: weights[b] for b in bases}, {b: calibration[b] for b in bases}
    )


@contextmanager
def _score_steps(pred_df: DataFrame, label_col: str) -> Iterator[tuple[DataFrame, int, int]]:
    """One row per distinct score with the positives/negatives scored strictly lower.

    Exact at any size: range partitioning orders the scores across partitions, a window
    accumulates within each partition, and per-partition offsets (a few numbers on the driver)
    join the pieces. A global window would pull every distinct score into a single task.
    Yields (steps, total positives, total negatives).
    """
    label = F.col(label_col).cast("long")
    ranged = (
        pred_df.groupBy(F.col(PROBABILITY_COL).cast("double").alias("score"))
        .agg(F.sum(label).alias("pos"), F.count(F.lit(1)).alias("n"))
        .select("score", "pos", (F.col("n") - F.col("pos")).alias("neg"))
        .repartitionByRange("score")
        .withColumn("part", F.spark_partition_id())
        .cache()
    )
    try:
        totals = (
            ranged.groupBy("part")
            .agg(F.sum("pos").alias("pos"), F.sum("neg").alias("neg"))
            .orderBy("part")
            .collect()
        )
        if not totals:
            raise ValueError("no predictions to evaluate")
        pos_offsets: list[Column] = []
        neg_offsets: list[Column] = []
        positives = negatives = 0
        for row in totals:
            pos_offsets += [F.lit(row["part"]), F.lit(positives).cast("long")]
            neg_offsets += [F.lit(row["part"]), F.lit(negatives).cast("long")]
            positives += row["pos"]
            negatives += row["neg"]
        before = (
            Window.partitionBy("part").orderBy("score").rowsBetween(Window.unboundedPreceding, -1)
        )
        steps = ranged.select(
            "score",
            "pos",
            "neg",
            (
                F.coalesce(F.sum("pos").over(before), F.lit(0))
                + F.create_map(*pos_offsets)[F.col("part")]
            ).alias("pos_below"),
            (
                F.coalesce(F.sum("neg").over(before), F.lit(0))
                + F.create_map(*neg_offsets)[F.col("part")]
            ).alias("neg_below"),
        )
        yield steps, positives, negatives
    finally:
        ranged.unpersist()


def evaluate(pred_df: DataFrame, threshold: float, label_col: str = LABEL_COL) -> dict[str, float]:
    """Metrics of `churn_probability` against the label; churn is predicted when p >= threshold.

    roc_auc is exact and rank-based (Mann-Whitney; tied scores count one half), not the binned
    approximation of BinaryClassificationEvaluator. pr_auc is average precision, the step-wise
    sum of precision x recall increment over distinct thresholds (no interpolation; the same
    definition as scikit-learn's average_precision_score). Both are NaN when one class is absent.
    """
    label = F.col(label_col).cast("long")
    probability = F.col(PROBABILITY_COL).cast("double")
    hit = probability >= F.lit(float(threshold))

    def count(condition: Column) -> Column:
        return F.sum(F.when(condition, 1).otherwise(0))

    row = pred_df.agg(
        count(hit & (label == 1)).alias("tp"),
        count(hit & (label == 0)).alias("fp"),
        count(~hit & (label == 0)).alias("tn"),
        count(~hit & (label == 1)).alias("fn"),
        F.avg(F.pow(probability - label, 2)).alias("brier"),
    ).first()
    tp, fp, tn, fn = (int(row[k] or 0) for k in ("tp", "fp", "tn", "fn"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    roc_auc, pr_auc = _ranking_metrics(pred_df, label_col)
    return {
        "accuracy": (tp + tn) / (tp + fp + tn + fn),
        "precision": precision,
        "recall": recall,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "brier": float(row["brier"]),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _mann_whitney_wins() -> Column:
    """Positive-negative pairs ranked right, summed over distinct scores; a tie counts one half.

    Over rows of (pos, neg, neg_below) per distinct score; divided by positives x negatives it
    is the exact ROC-AUC.
    """
    return F.sum(F.col("pos") * (F.col("neg_below") + F.col("neg") * 0.5))


def _ranking_metrics(pred_df: DataFrame, label_col: str) -> tuple[float, float]:
    with _score_steps(pred_df, label_col) as (steps, positives, negatives):
        if positives == 0 or negatives == 0:
            return float("nan"), float("nan")
        tp = F.lit(positives) - F.col("pos_below")
        fp = F.lit(negatives) - F.col("neg_below")
        sums = steps.agg(
            _mann_whitney_wins().alias("auc"),
            F.sum(F.when(F.col("pos") > 0, F.col("pos") * tp / (tp + fp))).alias("ap"),
        ).first()
    return sums["auc"] / (positives * negatives), sums["ap"] / positives


@dataclass(frozen=True)
class Evaluation:
    """A fit judged the one way every model is: threshold out of fold, metrics on test."""

    threshold: float
    threshold_value: float  # the strategy's objective at the threshold, out of fold
    metrics: dict[str, float]  # test metrics plus cv_roc_auc_mean over the OOF folds
    predictions: DataFrame  # test predictions (id, label, probability), persisted


def evaluate_fit(
    fit: FitResult,
    test: DataFrame,
    id_col: str,
    strategy: str = "f1",
    cost_missed_churner: float = 500.0,
    cost_retention_offer: float = 50.0,
) -> Evaluation:
    """Choose the threshold on `fit.oof`, score `test` with it, add the CV ROC-AUC mean.

    `fit.oof` is read twice: it is cached here unless the caller already did. The caller
    unpersists `predictions`.
    """
    cached_here = not fit.oof.is_cached
    if cached_here:
        fit.oof.persist()
    try:
        threshold, value = choose_threshold(
            fit.oof, strategy, cost_missed_churner, cost_retention_offer
        )
        fold_auc = list(roc_auc_by_group(fit.oof, FOLD_COL).values())
    finally:
        if cached_here:
            fit.oof.unpersist()
    predictions = fit.model.transform(test).select(id_col, LABEL_COL, PROBABILITY_COL).persist()
    metrics = evaluate(predictions, threshold)
    metrics["cv_roc_auc_mean"] = sum(fold_auc) / len(fold_auc)
    return Evaluation(threshold, value, metrics, predictions)


def roc_auc_by_group(
    pred_df: DataFrame, group_col: str, label_col: str = LABEL_COL
) -> dict[Any, float]:
    """Exact ROC-AUC (ties count one half) of each group, e.g. each CV fold, in one pass.

    One window per group orders its distinct scores; groups are few and bounded (folds of the
    capped training rows), so each fits one task. NaN for a group with one class only.
    """
    label = F.col(label_col).cast("long")
    before = (
        Window.partitionBy(group_col).orderBy("score").rowsBetween(Window.unboundedPreceding, -1)
    )
    rows = (
        pred_df.groupBy(group_col, F.col(PROBABILITY_COL).cast("double").alias("score"))
        .agg(F.sum(label).alias("pos"), F.count(F.lit(1)).alias("n"))
        .withColumn("neg", F.col("n") - F.col("pos"))
        .withColumn("neg_below", F.coalesce(F.sum("neg").over(before), F.lit(0)))
        .groupBy(group_col)
        .agg(
            _mann_whitney_wins().alias("wins"),
            F.sum("pos").alias("pos"),
            F.sum("neg").alias("neg"),
        )
        .collect()
    )
    return {
        r[group_col]: r["wins"] / (r["pos"] * r["neg"]) if r["pos"] and r["neg"] else float("nan")
        for r in rows
    }


def choose_threshold(
    oof_df: DataFrame,
    strategy: str = "f1",
    cost_missed_churner: float = 500.0,
    cost_retention_offer: float = 50.0,
    label_col: str = LABEL_COL,
) -> tuple[float, float]:
    """The churn threshold that is best on out-of-fold predictions, and its value there.

    Candidates are all distinct OOF scores (churn predicted when p >= threshold). "f1" maximises
    F1. "profit" maximises the saving of a retention campaign against doing nothing:
    cost_missed_churner x churners caught - cost_retention_offer x customers contacted; when no
    threshold saves money it returns a threshold above every score (contact nobody) and 0.0.
    The default costs are placeholders (an offer at a tenth of a churner's lost margin): set the
    business's own. Ties go to the highest threshold, i.e. the fewest customers contacted.
    """
    if strategy not in ("f1", "profit"):
        raise ValueError(f"unknown threshold strategy {strategy!r}; use 'f1' or 'profit'")
    if strategy == "profit" and (cost_missed_churner <= 0 or cost_retention_offer < 0):
        raise ValueError("the profit strategy needs cost_missed_churner > 0 and a cost >= 0")
    with _score_steps(oof_df, label_col) as (steps, positives, negatives):
        tp = F.lit(positives) - F.col("pos_below")
        fp = F.lit(negatives) - F.col("neg_below")
        if strategy == "f1":
            value = F.when(tp > 0, 2 * tp / (tp + F.lit(positives) + fp)).otherwise(F.lit(0.0))
        else:
            value = F.lit(float(cost_missed_churner)) * tp - F.lit(float(cost_retention_offer)) * (
                tp + fp
            )
        # One pass: the best (value, then highest score) and the highest score overall.
        ranked = F.struct(value.cast("double").alias("value"), F.col("score").alias("score"))
        best, top = steps.agg(F.max(ranked), F.max("score")).first()
    if strategy == "profit" and best["value"] <= 0:
        return float(np.nextafter(top, np.inf)), 0.0
    return float(best["score"]), float(best["value"])


def plot_curves(
    pred_df: DataFrame, out_dir: Path | str, label_col: str = LABEL_COL, bins: int = 1000
) -> dict[str, Path]:
    """ROC, precision-recall and reliability PNGs; Spark aggregates scores into bins first.

    Only `bins` rows reach the driver, so this works at any scale; the curves are drawn at bin
    edges (the exact AUCs come from `evaluate`). Uses matplotlib's Figure API, which needs no
    pyplot state or global backend switch.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probability = F.col(PROBABILITY_COL).cast("double")
    index = F.least(F.floor(probability * bins).cast("int"), F.lit(bins - 1))
    rows = (
        pred_df.groupBy(index.alias("bin"))
        .agg(
            F.sum(F.col(label_col).cast("long")).alias("pos"),
            F.count(F.lit(1)).alias("n"),
            F.sum(probability).alias("p_sum"),
        )
        .collect()
    )
    pos, count, p_sum = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for row in rows:
        pos[row["bin"]], count[row["bin"]], p_sum[row["bin"]] = row["pos"], row["n"], row["p_sum"]
    neg = count - pos
    if pos.sum() == 0 or neg.sum() == 0:
        raise ValueError("curves need both churners and non-churners in the predictions")
    tp = np.concatenate([[0.0], np.cumsum(pos[::-1])])
    fp = np.concatenate([[0.0], np.cumsum(neg[::-1])])
    tpr, fpr = tp / pos.sum(), fp / neg.sum()
    paths = {
        "roc": out / "roc_curve.png",
        "precision_recall": out / "precision_recall_curve.png",
        "calibration": out / "calibration_curve.png",
    }

    figure, axes = _figure()
    axes.plot(fpr, tpr, label=f"model (binned AUC {np.trapezoid(tpr, fpr):.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    _save(figure, axes, paths["roc"])

    predicted = tp + fp > 0
    figure, axes = _figure()
    axes.plot(tpr[predicted], tp[predicted] / (tp + fp)[predicted], label="model")
    axes.axhline(pos.sum() / count.sum(), linestyle="--", color="grey", label="churn rate")
    axes.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve", ylim=(0, 1.02))
    _save(figure, axes, paths["precision_recall"])

    coarse = min(10, bins)
    group = np.arange(bins) * coarse // bins
    c_count = np.bincount(group, count, coarse)
    c_pos = np.bincount(group, pos, coarse)
    c_psum = np.bincount(group, p_sum, coarse)
    filled = c_count > 0
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.plot(
        c_psum[filled] / c_count[filled], c_pos[filled] / c_count[filled], marker="o", label="model"
    )
    axes.set(
        xlabel="Mean predicted churn probability",
        ylabel="Observed churn rate",
        title=f"Reliability ({coarse} bins)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    _save(figure, axes, paths["calibration"])
    return paths


def _figure() -> tuple[Figure, Any]:
    figure = Figure(figsize=(5.5, 5), dpi=100)
    return figure, figure.add_subplot()


def _save(figure: Figure, axes: Any, path: Path) -> None:
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, format="png")


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
    features; bagging: the mean over its members. Ensembles answer at the model level instead:
    stacking gives the meta-LR coefficient of each base model's log-odds, voting each base
    model's weight (feature_names are then not used).
    """
    stages = _flatten(model)
    meta = next(
        (
            s
            for s in stages
            if isinstance(s, LogisticRegressionModel) and s.getFeaturesCol() == _META_FEATURES
        ),
        None,
    )
    if meta is not None:
        assembler = next(
            s
            for s in stages
            if isinstance(s, VectorAssembler) and s.getOutputCol() == _META_FEATURES
        )
        names = [c.removesuffix(_LOGIT_SUFFIX) for c in assembler.getInputCols()]
        return _ranked(zip(names, meta.coefficients.toArray(), strict=True))
    vote = next(
        (
            s
            for s in stages
            if isinstance(s, WeightedAverage)
            and s.getOutputCol() == PROBABILITY_COL
            and all(c.endswith(_CALIBRATED_SUFFIX) for c in s.getInputCols())
        ),
        None,
    )
    if vote is not None:
        names = [c.removesuffix(_CALIBRATED_SUFFIX) for c in vote.getInputCols()]
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
