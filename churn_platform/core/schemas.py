"""pandera (pyspark) schemas for each data layer, built from the dataset spec and the column
roles (numeric or categorical) the spec declares or the raw values show."""

from __future__ import annotations

import pandera.pyspark as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from churn_platform.config import DatasetSpec
from churn_platform.core.columns import (
    BATCH_COL,
    BATCH_ORDER_COL,
    ERROR_COL,
    FILE_COL,
    FOLD_COL,
    LABEL_COL,
    LINE_COL,
    META_COLS,
    SPLIT_COL,
)


def raw_schema(spec: DatasetSpec) -> pa.DataFrameSchema:
    """Raw keeps every value as text, with the file and line it came from."""
    columns = {c: pa.Column(T.StringType(), nullable=True) for c in spec.declared_columns}
    columns.update(
        {
            FILE_COL: pa.Column(T.StringType(), nullable=False),
            LINE_COL: pa.Column(T.LongType(), pa.Check.greater_than(0), nullable=False),
            BATCH_COL: pa.Column(T.StringType(), nullable=False),
        }
    )
    return pa.DataFrameSchema(columns, name="raw_customers")


def cleaned_schema(
    spec: DatasetSpec, numeric: list[str], categorical: list[str]
) -> pa.DataFrameSchema:
    """Typed customers: a present id, a 0/1 label, doubles for numeric columns."""
    columns = {
        spec.id_column: pa.Column(T.StringType(), nullable=False),
        LABEL_COL: pa.Column(T.IntegerType(), pa.Check.isin([0, 1]), nullable=False),
    }
    columns.update({c: pa.Column(T.StringType(), nullable=True) for c in categorical})
    columns.update({c: pa.Column(T.DoubleType(), nullable=True) for c in numeric})
    return pa.DataFrameSchema(columns, name="cleaned_customers")


def features_schema(spec: DatasetSpec) -> pa.DataFrameSchema:
    """Model-ready rows: labelled, assigned to a split and (for training rows) a CV fold."""
    columns = {
        spec.id_column: pa.Column(T.StringType(), nullable=False),
        LABEL_COL: pa.Column(T.IntegerType(), pa.Check.isin([0, 1]), nullable=False),
        SPLIT_COL: pa.Column(T.StringType(), pa.Check.isin(["train", "test"]), nullable=False),
        FOLD_COL: pa.Column(T.IntegerType(), pa.Check.in_range(-1, spec.folds - 1), nullable=False),
        BATCH_ORDER_COL: pa.Column(T.LongType(), nullable=False),
    }
    return pa.DataFrameSchema(columns, name="customer_features")


def infer_roles(raw: DataFrame, spec: DatasetSpec) -> tuple[list[str], list[str]]:
    """Numeric and categorical columns: from the spec, or inferred from the values.

    A column is numeric when every non-blank value parses as a number.
    """
    if spec.roles_declared:
        return list(spec.numeric), list(spec.categorical)
    skip = {spec.id_column, spec.target.column, *spec.drop, *META_COLS}
    candidates = [c for c in raw.columns if c not in skip]
    valid = raw.where(F.col(ERROR_COL).isNull())
    aggs = []
    for c in candidates:
        value = F.trim(F.col(f"`{c}`"))
        present = value.isNotNull() & (value != "")
        aggs.append(F.sum(F.when(present, 1).otherwise(0)).alias(f"p_{c}"))
        aggs.append(
            F.sum(F.when(present & value.try_cast("double").isNull(), 1).otherwise(0)).alias(
                f"f_{c}"
            )
        )
    row = valid.agg(*aggs).first() if aggs else None
    numeric, categorical = [], []
    for c in candidates:
        present, failed = (row[f"p_{c}"] or 0, row[f"f_{c}"] or 0) if row else (0, 0)
        (numeric if present > 0 and failed == 0 else categorical).append(c)
    return numeric, categorical
