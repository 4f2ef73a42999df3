"""Model monitoring's measurements: bounded samples, population stability, quality on known
outcomes.

Monitoring judges distributions, not customers, so it reads at most a bounded sample of each
population (a stable hash of the customer id picks it): its cost stays flat as the customer base
grows, and a PSI or an AUC on a few hundred thousand rows moves far less than the changes it
looks for. The score-drift reference is the champion's own out-of-fold scores, kept with every
model run: what the model scored on training customers it had not seen, without scoring them
again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from churn_platform.core import evaluation
from churn_platform.core.columns import BATCH_COL, BATCH_ORDER_COL, LABEL_COL
from churn_platform.core.encoding import quote

PSI_BINS = 10
PSI_FLOOR = 1e-4  # keeps empty bins from making PSI infinite
DECILE_ERROR = 0.001  # approxQuantile's relative error for the reference deciles
NULL_BIN = "<null>"
_SIDE = "__side"


@dataclass(frozen=True)
class Batch:
    """The newest batch of the cleaned customers and how many of them each measure can use."""

    order: int
    name: str
    rows: int
    labelled: int
    in_population: int

    @property
    def rows_filter(self) -> Column:
        return F.col(BATCH_ORDER_COL) == F.lit(self.order)


def newest_batch(cleaned: DataFrame, population: Column) -> Batch:
    """The newest batch with its rows, labelled rows and rows in the scoring population: one
    Spark job over three columns (the batches are few; the newest is picked on the driver)."""
    rows = (
        cleaned.groupBy(BATCH_ORDER_COL)
        .agg(
            F.first(BATCH_COL).alias("name"),
            F.count(F.lit(1)).alias("rows"),
            F.count(LABEL_COL).alias("labelled"),
            F.count_if(population).alias("in_population"),
        )
        .collect()
    )
    if not rows:
        raise ValueError("the cleaned customers hold no rows to monitor")
    row = max(rows, key=lambda r: r[BATCH_ORDER_COL])
    return Batch(
        int(row[BATCH_ORDER_COL]),
        str(row["name"]),
        int(row["rows"]),
        int(row["labelled"]),
        int(row["in_population"]),
    )


def psi(expected: Mapping[Any, int], actual: Mapping[Any, int]) -> float:
    """Population stability index of two binned counts (bins missing on a side count 0)."""
    total_e, total_a = sum(expected.values()) or 1, sum(actual.values()) or 1
    value = 0.0
    for key in set(expected) | set(actual):
        e = max(expected.get(key, 0) / total_e, PSI_FLOOR)
        a = max(actual.get(key, 0) / total_a, PSI_FLOOR)
        value += (a - e) * math.log(a / e)
    return value


def decile_cuts(reference: DataFrame, columns: Sequence[str]) -> dict[str, list[float]]:
    """The reference's decile boundaries of each numeric column: one Spark job for all."""
    numeric = [c for c in columns if isinstance(reference.schema[c].dataType, T.NumericType)]
    if not numeric:
        return {}
    probabilities = [i / PSI_BINS for i in range(1, PSI_BINS)]
    deciles = reference.approxQuantile(numeric, probabilities, DECILE_ERROR)
    return {c: sorted(set(q)) for c, q in zip(numeric, deciles, strict=True)}


def bucket(column: str, cuts: Sequence[float] | None) -> Column:
    """A row's bin, as text: the number of cuts below a numeric value (-1 for null), or the
    category itself."""
    value = F.col(quote(column))
    if cuts is None:
        return F.coalesce(value.cast("string"), F.lit(NULL_BIN))
    index = sum([(value > F.lit(float(cut))).cast("int") for cut in cuts], F.lit(0))
    return F.when(value.isNull(), F.lit(-1)).otherwise(index).cast("string")


def population_stability(
    reference: DataFrame, current: DataFrame, columns: Sequence[str]
) -> dict[str, float]:
    """PSI of each column: decile bins of the reference for numbers, categories for text.

    Two Spark jobs whatever the number of columns: the reference's deciles of every numeric
    column at once, then one aggregate counting every (side, column, bin) of both frames.
    """
    cuts = decile_cuts(reference, columns)

    def binned(df: DataFrame, side: str) -> DataFrame:
        pairs = [F.struct(F.lit(c).alias("c"), bucket(c, cuts.get(c)).alias("b")) for c in columns]
        return df.select(F.lit(side).alias(_SIDE), F.explode(F.array(*pairs)).alias("p"))

    both = binned(reference, "reference").unionByName(binned(current, "current"))
    counted: dict[str, dict[str, dict[str, int]]] = {
        side: {c: {} for c in columns} for side in ("reference", "current")
    }
    for row in both.groupBy(_SIDE, "p.c", "p.b").count().collect():
        counted[row[_SIDE]][row["c"]][row["b"]] = row["count"]
    return {c: psi(counted["reference"][c], counted["current"][c]) for c in columns}


@dataclass(frozen=True)
class ScoreDrift:
    """The scores' PSI against the reference scores, and the current scores' moments."""

    psi: float
    rows: int
    mean: float
    std: float
    nan: int

    @property
    def sane(self) -> bool:
        """Scores a model in working order gives: no NaN, not all near 0 or 1, not constant."""
        return not self.nan and 0.01 <= self.mean <= 0.99 and self.std > 1e-3


def score_drift(reference: np.ndarray, current: DataFrame, column: str) -> ScoreDrift:
    """PSI of `current`'s score column against reference scores held on the driver (deciles of
    the reference), with the current scores' mean, spread and NaN count: one Spark job."""
    probabilities = [i / PSI_BINS for i in range(1, PSI_BINS)]
    finite = reference[np.isfinite(reference)]
    cuts = sorted(set(np.quantile(finite, probabilities).tolist())) if finite.size else []
    # searchsorted counts the cuts below each value, as `bucket` does in Spark.
    expected = pd.Series(np.searchsorted(cuts, reference, side="left")).value_counts().to_dict()
    binned = bucket(column, cuts)
    value = F.col(quote(column))
    row = current.agg(
        *[F.count_if(binned == F.lit(str(b))).alias(str(b)) for b in range(-1, len(cuts) + 1)],
        F.count(F.lit(1)).alias("rows"),
        F.avg(value).alias("mean"),
        F.stddev(value).alias("std"),
        F.count_if(F.isnan(value)).alias("nan"),
    ).first()
    actual = {b: row[str(b)] for b in range(-1, len(cuts) + 1) if row[str(b)]}
    return ScoreDrift(
        psi({int(k): int(v) for k, v in expected.items()}, actual),
        int(row["rows"]),
        float(row["mean"] or 0.0),
        float(row["std"] or 0.0),
        int(row["nan"] or 0),
    )


def quality(labelled: pd.DataFrame, probability: str, threshold: float) -> dict[str, float]:
    """The champion's metrics on labelled customers; empty unless both classes are present."""
    if labelled[LABEL_COL].nunique() != 2:
        return {}
    return evaluation.evaluate(labelled[LABEL_COL], labelled[probability], threshold)
