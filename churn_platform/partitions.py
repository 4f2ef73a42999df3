"""The partitions and asset names that assets and sensors share, so neither imports the other.

The raw layer is split into ingestion batches; the inbox sensor adds a batch per accepted file
and asks for the data layers by key. Both sides name them here, below the assets and automation.
"""

import dagster as dg

ingest_batches = dg.DynamicPartitionsDefinition(name="ingest_batches")
# The batch of the dataset spec's own sources, as opposed to a file that came through the inbox.
BASE_BATCH = "base"

RAW_CUSTOMERS = dg.AssetKey("raw_customers")
CUSTOMER_FEATURES = dg.AssetKey("customer_features")
# A scan's last batch rebuilds the data layers in its own run: one process and one JVM start
# instead of a second run that declarative automation would launch a tick later.
DATA_LAYER_KEYS = (
    RAW_CUSTOMERS,
    dg.AssetKey("cleaned_customers"),
    dg.AssetKey("quarantined_customers"),
    CUSTOMER_FEATURES,
    dg.AssetKey("feature_pipeline"),
)
