"""Fitting a model kind: each candidate once per fold, out-of-fold predictions from the winner.

On the platform's data a fit is a chain of short Spark jobs whose latency, not the data, bounds
it. So the cost is counted in fits: one set of fold models both chooses among the candidates of
a grid (mean fold ROC-AUC) and gives the out-of-fold predictions that choose the threshold and
feed the ensembles; the winner is refitted once on all training rows. Fits run a few at a time
in threads on one cached training frame, and their predictions come back to the driver in one
Arrow collect each.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.classification import (
    DecisionTreeClassifier,
    GBTClassifier,
    LogisticRegression,
    RandomForestClassifier,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.util import inheritable_thread_target

from churn_platform.core import evaluation
from churn_platform.core.columns import (
    BATCH_ORDER_COL,
    FEATURES_COL,
    FOLD_COL,
    LABEL_COL,
    PROBABILITY_COL,
    SPLIT_COL,
)
from churn_platform.core.models.stages import (
    DropColumns,
    PositiveProbability,
    SignedLog,
    WeightedAverage,
)

DEFAULT_SEED = 42
TRAIN_SPLIT = "train"
# Fits at once: the jobs of a fit on small data are latency-bound, so three keep two cores busy.
PARALLEL_FITS = 3
# About one partition per million rows: small frames on one partition avoid per-task overhead.
ROWS_PER_PARTITION = 1_000_000
_BAGGING_KEYS = ("base", "numModels", "sampleFraction")
# A platform key, not a Spark one: boosting stops on each fold model's held-out fold and the final
# model gets the fold models' mean number of rounds.
EARLY_STOPPING = "earlyStopping"
VALIDATION_COL = "is_validation"
# A platform key, logistic regression only: the numeric slots of the vector also enter on a log
# scale (`stages.SignedLog`).
LOG_NUMERIC = "logNumeric"
_ESTIMATORS: dict[str, type] = {
    "logistic_regression": LogisticRegression,
    "decision_tree": DecisionTreeClassifier,
    "random_forest": RandomForestClassifier,
    "gbt": GBTClassifier,
}
T = TypeVar("T")


@dataclass(frozen=True)
class TrainingFrame:
    """Training and test rows (id, label, fold, features), cached once for every fit of a model."""

    train: DataFrame
    test: DataFrame
    folds: tuple[int, ...]
    id_col: str
    train_rows: int
    test_rows: int
    # (batch order, label, customers) over both splits, from the aggregate that counts the
    # splits; empty when the features carry no batch order. Out-of-time validation reads it.
    batch_labels: tuple[tuple[int, int, int], ...] = ()

    def fold_rows(self, fold: int | None, held_out: bool = False) -> DataFrame:
        """Rows to fit fold `fold`'s model on (all training rows for None), or its held-out rows."""
        if fold is None:
            return self.train
        return self.train.where((F.col(FOLD_COL) == fold) == F.lit(held_out))


@contextmanager
def training_frame(
    features: DataFrame, id_col: str, feature_pipeline: PipelineModel | None = None
) -> Iterator[TrainingFrame]:
    """The model-ready rows, sized and cached; the caches are released on exit.

    When `features` stores engineered columns only, the feature pipeline assembles the vector
    here, once, instead of in every fit.
    """
    if FEATURES_COL not in features.columns:
        if feature_pipeline is None:
            raise ValueError(f"no '{FEATURES_COL}' column and no feature pipeline to build it")
        features = feature_pipeline.transform(features)
    batched = BATCH_ORDER_COL in features.columns
    kept = [BATCH_ORDER_COL] if batched else []
    # One read of the features: the counts fill a cache that both splits are cut from. Cut
    # from the source, each split read it again, and `coalesce` ran that read in the split's
    # few partitions (10M customers: 500k training rows in one task, 26 s; both splits 44 s).
    read = features.select(id_col, LABEL_COL, FOLD_COL, SPLIT_COL, *kept, FEATURES_COL).persist()
    splits: list[DataFrame] = []  # train, then test: cached, released on a failure
    try:
        counts = read.groupBy(SPLIT_COL, FOLD_COL, LABEL_COL, *kept).count().collect()
        train_rows = sum(r["count"] for r in counts if r[SPLIT_COL] == TRAIN_SPLIT)
        folds = tuple(sorted({r[FOLD_COL] for r in counts if r[SPLIT_COL] == TRAIN_SPLIT}))
        if len(folds) < 2 or folds != tuple(range(len(folds))):
            raise ValueError(
                f"training rows need '{FOLD_COL}' values 0..k-1 with k >= 2, got {folds}"
            )
        test_rows = sum(r["count"] for r in counts) - train_rows
        is_train = F.col(SPLIT_COL) == TRAIN_SPLIT
        for split, rows in ((is_train, train_rows), (~is_train, test_rows)):
            parts = max(1, round(rows / ROWS_PER_PARTITION))
            splits.append(read.where(split).drop(SPLIT_COL).coalesce(parts).persist())
            splits[-1].count()
    except BaseException:
        for frame in splits:
            frame.unpersist()
        raise
    finally:
        read.unpersist()
    train, test = splits
    try:
        yield TrainingFrame(
            train,
            test,
            folds,
            id_col,
            train_rows,
            test_rows,
            _batch_labels(counts) if batched else (),
        )
    finally:
        train.unpersist()
        test.unpersist()


def _batch_labels(counts: Sequence[Any]) -> tuple[tuple[int, int, int], ...]:
    """Customers per (batch order, label), summed over the split and fold groups."""
    summed: dict[tuple[int, int], int] = {}
    for r in counts:
        key = (int(r[BATCH_ORDER_COL]), int(r[LABEL_COL]))
        summed[key] = summed.get(key, 0) + r["count"]
    return tuple((order, label, n) for (order, label), n in sorted(summed.items()))


@dataclass(frozen=True)
class BaseFit:
    """A base model fitted on the same frame, folds and seed, as an ensemble reuses it."""

    model: PipelineModel
    oof: pd.DataFrame
    params: dict[str, Any]


@dataclass(frozen=True)
class FitResult:
    """A fitted model with the out-of-fold predictions that choose its threshold and CV score.

    `model` maps the `features` vector to `churn_probability`. `oof` holds id, label, fold and
    `churn_probability` for every training row once, each from a model that never saw its fold.
    `cv` is each grid candidate's mean fold ROC-AUC (empty without a grid). Ensembles also
    return `base_oof`, one `<base>_probability` column per base model.
    """

    kind: str
    model: PipelineModel
    oof: pd.DataFrame
    params: dict[str, Any]
    cv: dict[str, float] = field(default_factory=dict)
    base_oof: pd.DataFrame | None = None

    def as_base(self) -> BaseFit:
        return BaseFit(self.model, self.oof, self.params)


@dataclass
class Part:
    """Fitted stages that add `output_col`, and the scratch columns they leave behind."""

    stages: list[Transformer]
    temp_cols: list[str]
    output_col: str


def assemble(parts: Sequence[Part], head: Sequence[Transformer] = (), temps: Sequence[str] = ()):
    """One PipelineModel from fitted parts (and a combiner), its scratch columns dropped."""
    stages = [stage for part in parts for stage in part.stages] + list(head)
    scratch = [col for part in parts for col in part.temp_cols] + list(temps)
    return PipelineModel(stages=[*stages, DropColumns(columns=scratch)])


def run_parallel(session: Any, fn: Callable[..., T], items: Sequence[Any]) -> list[T]:
    """`fn` over `items`, PARALLEL_FITS at a time, in threads carrying the Spark job properties."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_FITS, len(items))) as pool:
        return list(pool.map(inheritable_thread_target(session)(fn), items))


def collect_predictions(model: PipelineModel, rows: DataFrame, id_col: str) -> pd.DataFrame:
    """id, label, fold, churn_probability of `rows` on the driver (one Arrow collect)."""
    scored = model.transform(rows).select(id_col, LABEL_COL, FOLD_COL, PROBABILITY_COL)
    return scored.toPandas()


def classifier_part(
    family: str, params: Mapping[str, Any], seed: int, rows: DataFrame, prefix: str, output: str
) -> Part:
    """Fit one MLlib classifier (or a bag of them) on `rows`; its P(churn) lands in `output`."""
    if family == "bagging":
        return _bagging_part(params, seed, rows, prefix, output)
    params = dict(params)
    before: list[Transformer] = []
    features = FEATURES_COL
    if params.pop(LOG_NUMERIC, False):
        if family != "logistic_regression":
            raise ValueError(f"{family}: {LOG_NUMERIC} applies to logistic regression only")
        features = f"{prefix}_logged"
        before.append(
            SignedLog(inputCol=FEATURES_COL, outputCol=features, slots=numeric_slots(rows))
        )
        rows = before[0].transform(rows)
    estimator = _ESTIMATORS[family]()
    temps = [f"{prefix}_raw", f"{prefix}_prob", f"{prefix}_pred"]
    columns = dict(zip(("rawPredictionCol", "probabilityCol", "predictionCol"), temps, strict=True))
    for name, value in {"featuresCol": features, "labelCol": LABEL_COL, **columns}.items():
        estimator.set(estimator.getParam(name), value)
    if estimator.hasParam("seed"):
        estimator.set(estimator.getParam("seed"), seed)
    for name, value in params.items():
        if not estimator.hasParam(name):
            raise ValueError(f"{family}: unknown Spark parameter {name!r}")
        estimator.set(estimator.getParam(name), value)
    fitted = estimator.fit(rows)
    stages = [*before, fitted, PositiveProbability(inputCol=temps[1], outputCol=output)]
    return Part(stages, temps + ([features] if before else []), output)


def numeric_slots(rows: DataFrame) -> list[int]:
    """Slots of the `features` vector that hold numeric columns, not one-hot indicators.

    Read from the assembler's metadata (no Spark job); a vector without it: every slot (one
    job reads its size).
    """
    metadata = rows.schema[FEATURES_COL].metadata.get("ml_attr", {})
    if "attrs" in metadata:
        return sorted(int(a["idx"]) for a in metadata["attrs"].get("numeric", []))
    if "num_attrs" in metadata:
        return list(range(int(metadata["num_attrs"])))
    first = rows.select(FEATURES_COL).first()
    return list(range(first[0].size)) if first else []


def _bagging_part(
    params: Mapping[str, Any], seed: int, rows: DataFrame, prefix: str, output: str
) -> Part:
    """Average of base learners, each fitted on a seeded bootstrap sample of `rows`."""
    base = params["base"]
    if base not in _ESTIMATORS:
        raise ValueError(f"bagging base {base!r} is not one of {tuple(_ESTIMATORS)}")
    learner = {k: v for k, v in params.items() if k not in _BAGGING_KEYS}
    count, fraction = int(params["numModels"]), float(params.get("sampleFraction", 1.0))
    members = [
        classifier_part(
            base,
            learner,
            seed + b,
            rows.sample(withReplacement=True, fraction=fraction, seed=seed + b),
            f"{prefix}_bag{b}",
            f"{prefix}_bag{b}_p",
        )
        for b in range(count)
    ]
    average = WeightedAverage(
        inputCols=[m.output_col for m in members], weights=[1.0 / count] * count, outputCol=output
    )
    stages = [stage for m in members for stage in m.stages] + [average]
    temps = [col for m in members for col in (*m.temp_cols, m.output_col)]
    return Part(stages, temps, output)


def candidates(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the list-valued parameters (a grid), in the order given."""
    grid = {k: v for k, v in params.items() if isinstance(v, list)}
    fixed = {k: v for k, v in params.items() if k not in grid}
    return [
        {**fixed, **dict(zip(grid, values, strict=True))}
        for values in itertools.product(*grid.values())
    ]


def fit_classifier(
    kind: str, family: str, params: Mapping[str, Any], frame: TrainingFrame, seed: int
) -> FitResult:
    """Fold fits of every candidate in parallel; the best mean fold ROC-AUC wins and is refit.

    With `earlyStopping` (boosting only), each fold model is fitted on the training rows with
    its held-out fold as MLlib's validation set: boosting stops when a round improves the held-out
    log loss by less than `validationTol` of it, and the model keeps its best round. The rounds
    are then chosen on the held-out folds, like any grid value (the same mild optimism in the CV
    score), and the final model is refitted with the winner's mean number of rounds.
    """
    early = bool(params.get(EARLY_STOPPING, False))
    if early and family != "gbt":
        raise ValueError(f"{kind}: {EARLY_STOPPING} applies to boosting (gbt) only")
    grid = {k: v for k, v in params.items() if k != EARLY_STOPPING}
    options = candidates(grid)
    if family == "bagging" and len(options) > 1:
        raise ValueError(f"{kind}: bagging takes fixed base-learner parameters, not grids")
    single = len(options) == 1 and not early
    tasks = [(c, f) for c in range(len(options)) for f in frame.folds]
    if single:
        tasks.append((0, None))  # the final model, fitted beside the fold models

    def fit(task: tuple[int, int | None]) -> Part | tuple[pd.DataFrame, int]:
        option, fold = task
        if fold is None:
            return classifier_part(
                family, options[option], seed, frame.train, kind, PROBABILITY_COL
            )
        if early:
            rows = frame.train.withColumn(VALIDATION_COL, F.col(FOLD_COL) == fold)
            chosen = {**options[option], "validationIndicatorCol": VALIDATION_COL}
        else:
            rows, chosen = frame.fold_rows(fold), options[option]
        part = classifier_part(family, chosen, seed, rows, kind, PROBABILITY_COL)
        held_out = collect_predictions(assemble([part]), frame.fold_rows(fold, True), frame.id_col)
        return held_out, _rounds(part)

    results = run_parallel(frame.train.sparkSession, fit, tasks)
    folds = [(c, r) for (c, f), r in zip(tasks, results, strict=True) if f is not None]
    oofs = [pd.concat([r[0] for c, r in folds if c == option]) for option in range(len(options))]
    scores = [_mean_fold_auc(oof) for oof in oofs]
    best = int(np.nanargmax(scores)) if not all(np.isnan(scores)) else 0
    winner = dict(options[best])
    if early:
        rounds = [r[1] for c, r in folds if c == best]
        winner["maxIter"] = max(1, round(float(np.mean(rounds))))
    if single:
        final = results[-1]
    else:
        final = classifier_part(family, winner, seed, frame.train, kind, PROBABILITY_COL)
    cv = (
        {_label(o, grid): s for o, s in zip(options, scores, strict=True)}
        if len(options) > 1
        else {}
    )
    return FitResult(kind, assemble([final]), oofs[best].reset_index(drop=True), winner, cv)


def _rounds(part: Part) -> int:
    """Trees a fitted boosting model kept (0 for other models)."""
    model = part.stages[0]
    return len(model.trees) if hasattr(model, "treeWeights") else 0


def _mean_fold_auc(oof: pd.DataFrame) -> float:
    by_fold = evaluation.roc_auc_by_group(oof[LABEL_COL], oof[PROBABILITY_COL], oof[FOLD_COL])
    return float(np.mean(list(by_fold.values())))


def _label(option: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={option[k]}" for k in params if isinstance(params[k], list))


def full_model(feature_pipeline: PipelineModel, model: PipelineModel) -> PipelineModel:
    """One model from engineered columns to `churn_probability`, as it is logged and served."""
    return PipelineModel(stages=[*feature_pipeline.stages, *model.stages])


def predict(model: PipelineModel, frame: TrainingFrame) -> pd.DataFrame:
    """Test-split predictions on the driver, for the metrics every model is judged by."""
    return collect_predictions(model, frame.test, frame.id_col)
