"""Versioned Parquet storage: a failed write never replaces the previous good version."""

import os
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster_pyspark import PySparkResource
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import Imputer, StringIndexer, VectorAssembler
from pyspark.sql import DataFrame

from churn_platform.core.versions import POINTER, current_version
from churn_platform.io_managers import SUMMARY, VersionedParquetIOManager, publish_version


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


def test_a_fitted_pipeline_is_read_once_per_version_and_scores_as_fitted(spark, tmp_path):
    """Each model step of a run reads the feature pipeline: the first read loads it, the others
    get it without a Spark job; a new version is read anew."""
    table = spark.createDataFrame(
        [(1.0, "a"), (None, "b"), (3.0, "a"), (4.0, None)], "charge double, plan string"
    )
    stages = [
        Imputer(inputCols=["charge"], outputCols=["charge_i"]),
        StringIndexer(inputCol="plan", outputCol="plan_i", handleInvalid="keep"),
        VectorAssembler(inputCols=["charge_i", "plan_i"], outputCol="features"),
    ]
    manager = _manager(tmp_path)
    key = dg.AssetKey("feature_pipeline")
    fitted = Pipeline(stages=stages).fit(table)
    manager.handle_output(dg.build_output_context(asset_key=key, run_id="fit00001"), fitted)

    context = spark.sparkContext
    context.setJobGroup(f"load-{tmp_path.name}", "reading the fitted pipeline")
    try:
        first = manager.load_input(dg.build_input_context(asset_key=key))
        jobs = len(context.statusTracker().getJobIdsForGroup(f"load-{tmp_path.name}"))
        again = manager.load_input(dg.build_input_context(asset_key=key))
        assert len(context.statusTracker().getJobIdsForGroup(f"load-{tmp_path.name}")) == jobs
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    assert isinstance(first, PipelineModel) and again is first
    rows = first.transform(table).select("features").collect()
    assert rows == fitted.transform(table).select("features").collect()

    refit = Pipeline(stages=stages).fit(table.where("plan = 'a'"))
    manager.handle_output(dg.build_output_context(asset_key=key, run_id="fit00002"), refit)
    newer = manager.load_input(dg.build_input_context(asset_key=key))
    assert newer is not first
    assert newer.stages[1].labels == refit.stages[1].labels == ["a"]


def test_loading_before_any_write_names_the_asset(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="never_built"):
        _manager(tmp_path).load_input(dg.build_input_context(asset_key=dg.AssetKey("never_built")))


def _half_written(folder: Path, name: str, age_seconds: float) -> Path:
    """A version folder a killed run left behind, last touched `age_seconds` ago."""
    version = folder / name
    (version / "_temporary").mkdir(parents=True)
    (version / "_temporary" / "part-0.parquet").write_bytes(b"half")
    stamp = time.time() - age_seconds
    for path in (version / "_temporary" / "part-0.parquet", version / "_temporary", version):
        os.utime(path, (stamp, stamp))
    return version


def test_half_written_versions_never_count_and_abandoned_ones_go(tmp_path: Path) -> None:
    folder = tmp_path / "summary_asset"
    complete = []
    for n in range(3):
        version = folder / f"v-2026010{n}T000000-000-run{n}"
        version.mkdir(parents=True)
        (version / SUMMARY).write_text("{}")
        publish_version(folder, version)
        complete.append(version)
    abandoned = _half_written(folder, "v-20260103T000000-000-killed", age_seconds=2 * 3600)
    running = _half_written(folder, "v-20260104T000000-000-running", age_seconds=5)
    newest = folder / "v-20260105T000000-000-run5"
    newest.mkdir()
    (newest / SUMMARY).write_text("{}")

    publish_version(folder, newest)

    assert sorted(p.name for p in folder.glob("v-*")) == sorted(
        [complete[1].name, complete[2].name, running.name, newest.name]
    )
    assert not abandoned.exists() and current_version(folder) == newest
