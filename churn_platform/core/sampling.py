"""Bounded, stable samples of customers: the same customers every time, whatever the
partitioning, so that statistics measured on a sample repeat from run to run."""

from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from churn_platform.core.encoding import quote

_BUCKETS = 1_000_003
_SALT = "sample"


def sampled(df: DataFrame, rows: int, bound: int, id_column: str) -> DataFrame:
    """About `bound` of `df`'s `rows` rows (all of them when fewer), chosen by a hash of the id."""
    if rows <= bound:
        return df
    unit = F.pmod(F.xxhash64(F.lit(_SALT), F.col(quote(id_column))), F.lit(_BUCKETS))
    return df.where(unit < F.lit(math.ceil(_BUCKETS * bound / rows)))
