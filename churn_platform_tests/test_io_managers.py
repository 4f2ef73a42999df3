"""Versioned Parquet storage: a failed write never replaces the previous good version."""

from pathlib import Path

import dagster as dg
import pytest
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame

from churn_platform.io_managers import POINTER, VersionedParquetIOManager, current_version


def _manager(base: Path) -> VersionedParquetIOManager:
    pyspark = PySparkResource(spark_config={})
    pyspark.setup_for_execution(dg.build_init_resource_context())  # reuses the test session
    return VersionedParquetIOManager(base_path=str(base), pyspark=pyspark)


def test_versions_switch_atomically_and_old_ones_are_pruned(spark, tmp_path):
    manager = _manager(tmp_path)
    key = dg.AssetKey("things")
    for n in range(1, 6):
        context = dg.build_output_context(asset_key=key, run_id=f"run{n:04d}aaaa")
        manager.handle_output(context, spark.range(n))
    folder = tmp_path / "things"
    assert (folder / POINTER).is_file()
    assert len(list(folder.glob("v-*"))) == 3
    loaded = manager.load_input(dg.build_input_context(asset_key=key))
    assert isinstance(loaded, DataFrame) and loaded.count() == 5


def test_a_failed_write_leaves_the_previous_version_readable(spark, tmp_path):
    manager = _manager(tmp_path)
    key = dg.AssetKey("things")
    manager.handle_output(dg.build_output_context(asset_key=key, run_id="good0000"), spark.range(3))
    good = current_version(tmp_path / "things")
    failing = spark.range(10).selectExpr("raise_error('disk on fire') AS id")
    with pytest.raises(Exception, match="disk on fire"):
        manager.handle_output(dg.build_output_context(asset_key=key, run_id="bad00000"), failing)
    assert current_version(tmp_path / "things") == good
    assert manager.load_input(dg.build_input_context(asset_key=key)).count() == 3


def test_loading_before_any_write_names_the_asset(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="never_built"):
        _manager(tmp_path).load_input(dg.build_input_context(asset_key=dg.AssetKey("never_built")))
