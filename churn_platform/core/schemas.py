"""pandera (pyspark) schemas for each data layer, built from the dataset spec."""

from __future__ import annotations

import pandera.pyspark as pa
from pyspark.sql import types as T

from churn_platform.config import DatasetSpec
from churn_platform.core.columns import (
    BATCH_COL,
    BATCH_ORDER_COL,
    FILE_COL,
    FOLD_COL,
    LABEL_COL,
    LINE_COL,
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
