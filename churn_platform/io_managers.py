"""DataFrames, fitted Spark ML pipelines and JSON summaries <-> versioned warehouse folders;
audit reports <-> Markdown and JSON files.

Each materialization writes a new `v-<time>-<run>` folder; only after Spark's `_SUCCESS` marker
(or the ML `metadata/` folder) exists is the `CURRENT` pointer replaced atomically. A run killed
mid-write therefore leaves the previous good version readable, and its half-written folder is
neither counted among the kept versions nor kept once it is stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_pyspark import PySparkResource
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.utils import is_remote

from churn_platform.core.audit import render
from churn_platform.core.model_loading import load_local_pipeline
from churn_platform.core.spark_setup import local_classic
from churn_platform.core.versions import POINTER, current_version

SUMMARY = "summary.json"
# Small driver-side tables inside a summary (a model's out-of-fold predictions) are stored
# beside it as Parquet and come back as pandas DataFrames.
TABLE_SUFFIX = ".table.parquet"

KEEP_VERSIONS = 3
# Written into a version as it is published; Spark and MLlib readers skip `_` files.
PUBLISHED = "_PUBLISHED"
# An unpublished version untouched this long belongs to a killed run, not a running one.
ABANDONED_AFTER_SECONDS = 3600.0
# Fitted pipelines read in this process, by Spark application and version folder. A published
# version never changes, and every model step of a run reads the same feature pipeline: Spark's
# load took 15 jobs and 0.9-1.3 s each time on the Telco data in a warm JVM, the in-place load
# 10 jobs and 0.5 s, a step that finds it here none.
_PIPELINES: dict[tuple[str, Path], PipelineModel] = {}


def read_summary(version: Path) -> dict:
    """A stored summary with its tables read back in."""
    summary = json.loads((version / SUMMARY).read_text())
    return {
        k: pd.read_parquet(version / v) if isinstance(v, str) and v.endswith(TABLE_SUFFIX) else v
        for k, v in summary.items()
    }


def load_summary(folder: Path) -> dict | None:
    """The current JSON summary an asset stored (a model asset's run, metrics and fit), if any."""
    version = current_version(folder)
    if version is None or not (version / SUMMARY).is_file():
        return None
    return read_summary(version)


def publish_version(folder: Path, version: Path) -> None:
    """Mark the version published, switch the pointer with an atomic rename, then prune.

    Only published versions count towards `KEEP_VERSIONS`: a folder a killed run half wrote
    must never push out a complete one. Unpublished folders go once they are abandoned.
    """
    (version / PUBLISHED).touch()
    tmp = folder / f".{POINTER}.{os.getpid()}.tmp"
    tmp.write_text(version.name + "\n")
    os.replace(tmp, folder / POINTER)
    others = sorted(p for p in folder.glob("v-*") if p.is_dir() and p != version)
    published = [p for p in others if (p / PUBLISHED).exists()]
    doomed = published[: max(0, len(published) - (KEEP_VERSIONS - 1))]
    doomed += [p for p in others if p not in published and _abandoned(p)]
    for old in doomed:
        shutil.rmtree(old, ignore_errors=True)


def _abandoned(version: Path) -> bool:
    """Nothing in the folder changed for a while: its writer is gone (Spark writes steadily)."""
    newest = max((p.stat().st_mtime for p in version.rglob("*")), default=0.0)
    newest = max(newest, version.stat().st_mtime)
    return time.time() - newest > ABANDONED_AFTER_SECONDS


def new_version_dir(folder: Path, run_id: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return folder / f"v-{stamp}-{int(time.time() * 1000) % 1000:03d}-{run_id[:8]}"


def asset_folder(base_path: Path, key: dg.AssetKey, partition: str | None) -> Path:
    """Where an asset's (partition's) versions live under the warehouse."""
    folder = base_path.joinpath(*key.path)
    return folder / partition if partition else folder


def stage_version(base_path: Path, context: dg.AssetExecutionContext, output: str) -> Path:
    """An unpublished version folder for an asset that writes its own Parquet (see StagedParquet).

    Until the IO manager publishes it, it is invisible to readers and pruned once abandoned.
    """
    key = context.asset_key_for_output(output)
    partitioned = context.assets_def.partitions_def is not None
    partition = context.partition_key if partitioned else None
    folder = asset_folder(base_path, key, partition)
    folder.mkdir(parents=True, exist_ok=True)
    return new_version_dir(folder, context.run_id)


@contextlib.contextmanager
def staged_versions(
    base_path: Path, context: dg.AssetExecutionContext, *outputs: str
) -> Iterator[list[Path]]:
    """One staged version per output, removed again if the writing fails."""
    paths = [stage_version(base_path, context, output) for output in outputs]
    try:
        yield paths
    except BaseException:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
        raise


@dataclass(frozen=True)
class StagedParquet:
    """Parquet an asset wrote itself into a staged version (`stage_version`), to compute the
    layer's statistics in the same pass as the write (Spark's `observe`); published as is."""

    path: Path
    rows: int


class VersionedParquetIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames as Parquet and PipelineModels with MLlib persistence, versioned."""

    base_path: str
    pyspark: PySparkResource

    def _folder(self, key: dg.AssetKey, partition: str | None) -> Path:
        return asset_folder(Path(self.base_path), key, partition)

    def _spark(self) -> SparkSession:
        return self.pyspark.spark_session

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return
        partition = context.asset_partition_key if context.has_asset_partitions else None
        folder = self._folder(context.asset_key, partition)
        folder.mkdir(parents=True, exist_ok=True)
        version = new_version_dir(folder, context.run_id)
        if isinstance(obj, StagedParquet):
            version = obj.path
            if version.parent != folder or not (version / "_SUCCESS").exists():
                raise RuntimeError(f"{version} is not a complete staged version of {folder}")
            metadata = {"row_count": dg.MetadataValue.int(obj.rows)}
        elif isinstance(obj, DataFrame):
            obj.write.mode("error").parquet(str(version))
            if not (version / "_SUCCESS").exists():
                raise RuntimeError(f"Spark wrote {version} without a _SUCCESS marker")
            written = obj.sparkSession.read.parquet(str(version))
            metadata: dict[str, dg.RawMetadataValue] = {
                "row_count": dg.MetadataValue.int(written.count()),
                "columns": dg.MetadataValue.int(len(written.columns)),
            }
        elif isinstance(obj, PipelineModel):
            obj.write().save(str(version))
            if not (version / "metadata").is_dir():
                raise RuntimeError(f"Spark ML wrote {version} without its metadata folder")
            metadata = {"stages": dg.MetadataValue.int(len(obj.stages))}
        elif isinstance(obj, dict):
            version.mkdir()
            tables = {k: v for k, v in obj.items() if isinstance(v, pd.DataFrame)}
            for name, table in tables.items():
                table.to_parquet(version / f"{name}{TABLE_SUFFIX}", index=False)
            summary = {**obj, **{k: f"{k}{TABLE_SUFFIX}" for k in tables}}
            (version / SUMMARY).write_text(
                json.dumps(summary, indent=2, sort_keys=True, default=str)
            )
            metadata = {}
        else:
            raise TypeError(f"cannot store a {type(obj).__name__}; expected a Spark DataFrame")
        publish_version(folder, version)
        context.add_output_metadata(
            {**metadata, "path": dg.MetadataValue.path(str(version)), "version": version.name}
        )

    def load_input(self, context: dg.InputContext) -> DataFrame | PipelineModel:
        key = context.asset_key
        if context.has_asset_partitions:
            folders = [self._folder(key, p) for p in sorted(context.asset_partition_keys)]
        else:
            folders = [self._folder(key, None)]
        versions = [v for v in (current_version(f) for f in folders) if v is not None]
        if not versions:
            raise FileNotFoundError(
                f"no materialized version of {key.to_user_string()} under {folders[0].parent}; "
                "materialize it first"
            )
        if len(versions) < len(folders):
            context.log.warning(
                f"{len(folders) - len(versions)} partition(s) of {key.to_user_string()} have "
                "no stored version yet and are left out"
            )
        if (versions[0] / SUMMARY).is_file():
            return read_summary(versions[0])
        spark = self._spark()
        if (versions[0] / "metadata").is_dir():
            return fitted_pipeline(versions[0], spark)
        frames = [spark.read.parquet(str(v)) for v in versions]
        result = frames[0]
        for frame in frames[1:]:
            result = result.unionByName(frame, allowMissingColumns=True)
        return result


def fitted_pipeline(folder: Path, spark: SparkSession) -> PipelineModel:
    """The PipelineModel of a published version `folder`, read once per process and Spark
    application; in place (stage metadata without Spark jobs) when Spark is local."""
    if is_remote():
        return PipelineModel.load(str(folder))
    key = (spark.sparkContext.applicationId, folder.resolve())
    if key not in _PIPELINES:
        in_place = local_classic(spark)
        _PIPELINES[key] = (
            load_local_pipeline(folder) if in_place else PipelineModel.load(str(folder))
        )
    return _PIPELINES[key]


class AuditReportIOManager(dg.ConfigurableIOManager):
    """Audit reports as a Markdown and a JSON file each, in the folder `churn-platform audit`
    also writes to (`Settings.audit_reports`); the Markdown is shown on the asset's page."""

    folder: str

    def handle_output(self, context: dg.OutputContext, obj: Mapping) -> None:
        markdown, data = render.write_report(Path(self.folder), obj)
        context.add_output_metadata(
            {
                "report": dg.MetadataValue.md(markdown.read_text(encoding="utf-8")),
                "markdown_path": dg.MetadataValue.path(str(markdown)),
                "json_path": dg.MetadataValue.path(str(data)),
            }
        )

    def load_input(self, context: dg.InputContext) -> dict:
        """The report the asset's latest materialization wrote (its `json_path`)."""
        event = context.instance.get_latest_materialization_event(context.asset_key)
        written = event.asset_materialization if event is not None else None
        if written is None or "json_path" not in written.metadata:
            raise FileNotFoundError(f"no written report of {context.asset_key.to_user_string()}")
        return json.loads(Path(str(written.metadata["json_path"].value)).read_text())
