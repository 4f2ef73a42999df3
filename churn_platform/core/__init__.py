"""The platform's core: data, models and operations logic with no Dagster import."""
