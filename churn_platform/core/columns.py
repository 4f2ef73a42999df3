"""Column names and quarantine reasons shared by every data layer, report and model step.

One home for the vocabulary, so that sources, cleaning, features, training and scoring agree.
"""

# Bookkeeping columns carried from raw into quarantine; never features.
SOURCE_COL = "_source"
FILE_COL = "_file"
LINE_COL = "_line"
ERROR_COL = "_error"
BATCH_COL = "_batch"
BATCH_ORDER_COL = "_batch_order"
META_COLS = (SOURCE_COL, FILE_COL, LINE_COL, ERROR_COL, BATCH_COL, BATCH_ORDER_COL)

LABEL_COL = "label"
SPLIT_COL = "split"
FOLD_COL = "fold"
FEATURES_COL = "features"
# Every model's output: P(churn) of each customer.
PROBABILITY_COL = "churn_probability"
REASON_COL = "reason"
DETAIL_COL = "detail"

# Quarantine reasons, one vocabulary across every layer and report.
MALFORMED_LINE = "malformed_line"
WRONG_FIELD_COUNT = "wrong_field_count"
INVALID_ENCODING = "invalid_encoding"
MISSING_ID = "missing_id"
MISSING_TARGET = "missing_target"
UNKNOWN_TARGET = "unknown_target"
UNPARSEABLE_NUMBER = "unparseable_number"
NON_FINITE_NUMBER = "non_finite_number"
OUT_OF_RANGE = "out_of_range"
DUPLICATE_ID = "duplicate_id"
