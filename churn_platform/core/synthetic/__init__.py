"""Synthetic Telco-shaped customers: the calibrated tables, the Spark generator, the writer."""
