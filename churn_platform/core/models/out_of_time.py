"""Out-of-time validation: fitted on the older batches, judged on the newest.

The random split mixes every batch into both training and test rows, so it cannot say whether
a model learnt from earlier customers still ranks the customers who arrived last. When the
features hold more than one batch, each model is fitted once more, with the parameters the
random split chose (no folds, no grid), on the customers whose latest record came in an older
batch, and judged on the labelled customers of the newest batch. An ensemble's bases are
refitted that way; its combiner is the one fitted on the random split's out-of-fold
predictions (a handful of weights), applied to the bases' out-of-time predictions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from churn_platform.core import evaluation
from churn_platform.core.columns import BATCH_ORDER_COL, FOLD_COL, LABEL_COL
from churn_platform.core.models.ensembles import BASE_SUFFIX
from churn_platform.core.models.fitting import (
    PROBABILITY_COL,
    FitResult,
    TrainingFrame,
    assemble,
    classifier_part,
    collect_predictions,
)
from churn_platform.core.models.kinds import kind
from churn_platform.core.models.stages import DropColumns, RenameColumn

# Below this many labelled customers on either side (or with one class only) the figure would
# be noise: no out-of-time validation then.
MIN_ROWS = 50


@dataclass(frozen=True)
class OutOfTimeFrame:
    """Labelled customers of the older batches (to fit) and of the newest batch (to judge)."""

    older: DataFrame
    newest: DataFrame
    newest_batch_order: int
    id_col: str
    older_rows: int
    newest_rows: int


@contextmanager
def out_of_time_frame(frame: TrainingFrame) -> Iterator[OutOfTimeFrame | None]:
    """The two sides, cut from the training frame's cached rows and cached while in use; None
    with one batch or too few customers (or one class) on a side.

    The training frame's own aggregate already counted the customers per batch and label, so
    deciding costs no Spark job, and the sides are not read or assembled again.
    """
    orders = sorted({order for order, _, _ in frame.batch_labels})
    if len(orders) < 2:
        yield None
        return
    newest = orders[-1]
    sides = {
        is_newest: [
            (label, n) for order, label, n in frame.batch_labels if (order == newest) == is_newest
        ]
        for is_newest in (False, True)
    }
    enough = all(
        sum(n for _, n in rows) >= MIN_ROWS and {label for label, _ in rows} == {0, 1}
        for rows in sides.values()
    )
    if not enough:
        yield None
        return
    rows = frame.train.unionByName(frame.test)
    older = rows.where(F.col(BATCH_ORDER_COL) < newest).coalesce(1).persist()
    latest = rows.where(F.col(BATCH_ORDER_COL) == newest).coalesce(1).persist()
    try:
        yield OutOfTimeFrame(
            older,
            latest,
            newest,
            frame.id_col,
            sum(n for _, n in sides[False]),
            sum(n for _, n in sides[True]),
        )
    finally:
        older.unpersist()
        latest.unpersist()


def predictions(
    name: str,
    fit: FitResult,
    frame: OutOfTimeFrame,
    seed: int,
    base_predictions: Mapping[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """id, label and churn_probability of the newest batch's customers from a model of kind
    `name` fitted on the older batches with `fit`'s chosen parameters.

    An ensemble uses the out-of-time predictions of bases fitted the same way (from
    `base_predictions` when a base asset made them with the same parameters, else fitted here)
    and its own combiner.
    """
    row = kind(name)
    if not row.is_ensemble:
        return _base_predictions(name, row.family, fit.params, frame, seed)
    reused = set(fit.params.get("reused_bases", ()))
    given = base_predictions or {}
    # Voting drops the bases it gave no weight; they need no out-of-time fit either.
    weights = fit.params.get("weights") or {}
    used = {
        base: params
        for base, params in fit.params["base_params"].items()
        if row.family != "voting" or weights.get(base, 0.0) > 0.0
    }
    bases = {
        base: given[base]
        if base in reused and base in given
        else _base_predictions(base, kind(base).family, params, frame, seed)
        for base, params in used.items()
    }
    return _combined(combiner(fit.model), bases, frame)


def _base_predictions(
    name: str, family: str, params: Mapping[str, Any], frame: OutOfTimeFrame, seed: int
) -> pd.DataFrame:
    part = classifier_part(family, params, seed, frame.older, name, PROBABILITY_COL)
    scored = collect_predictions(assemble([part]), frame.newest, frame.id_col)
    return scored.drop(columns=[FOLD_COL])


def combiner(model: PipelineModel) -> PipelineModel:
    """An ensemble's stages after its bases: from `<base>_probability` to churn_probability."""
    stages = model.stages
    renames = [
        i
        for i, stage in enumerate(stages)
        if isinstance(stage, RenameColumn) and stage.getOutputCol().endswith(BASE_SUFFIX)
    ]
    if not renames:
        raise ValueError("not an ensemble: no stage names a base model's probability")
    return PipelineModel(
        stages=[s for s in stages[renames[-1] + 1 :] if not isinstance(s, DropColumns)]
    )


def _combined(
    head: PipelineModel, bases: Mapping[str, pd.DataFrame], frame: OutOfTimeFrame
) -> pd.DataFrame:
    """The combiner over the bases' predictions, joined by customer, on the driver's rows."""
    id_col = frame.id_col
    columns = [
        scored[[id_col, LABEL_COL, PROBABILITY_COL]].rename(
            columns={PROBABILITY_COL: base + BASE_SUFFIX}
        )
        for base, scored in bases.items()
    ]
    joined = functools.reduce(
        lambda left, right: left.merge(right.drop(columns=[LABEL_COL]), on=id_col), columns
    )
    spark = frame.newest.sparkSession
    combined = head.transform(spark.createDataFrame(joined))
    return combined.select(id_col, LABEL_COL, PROBABILITY_COL).toPandas()


def metrics(scored: pd.DataFrame, threshold: float, frame: OutOfTimeFrame) -> dict[str, float]:
    """`oot_`-prefixed test metrics at the model's own threshold, with the two sides' sizes."""
    found = evaluation.evaluate(scored[LABEL_COL], scored[PROBABILITY_COL], threshold)
    keep = ("roc_auc", "pr_auc", "brier", "precision", "recall", "f1", "accuracy")
    return {
        **{f"oot_{name}": float(found[name]) for name in keep},
        "oot_train_rows": float(frame.older_rows),
        "oot_test_rows": float(len(scored)),
        "oot_batch_order": float(frame.newest_batch_order),
    }
