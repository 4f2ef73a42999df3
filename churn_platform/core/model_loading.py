"""Loading a logged Spark model from a local folder with as few Spark jobs as its stages need.

`PipelineModel.load` reads each stage's metadata with a Spark job (a Python stage's twice: once
to find its class, once in its reader) and loads the stages one after the other. For a stacking
champion of 17 stages that is 47 jobs, most of `score`'s model load on a cold JVM. The metadata
are small JSON files on the local disk: here they are read without Spark, a Python stage is
built from them as its `DefaultParamsReader` would, and only the JVM stages (which read their
fitted data with Spark) go through their own readers, concurrently. `tracking.load_model`
loads a checked model through `load_checked`.
"""

from __future__ import annotations

import importlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow.spark
from mlflow.models import Model
from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.pipeline import PipelineSharedReadWrite
from pyspark.ml.util import DefaultParamsReader
from pyspark.sql import SparkSession

from churn_platform.core.spark_setup import local_classic

# Stages loaded at once: the JVM's loads mostly wait on small jobs. A stacking champion's first
# load in a fresh JVM took 5.3-5.4 s with 4 against 6.8-7.9 s one by one, same JVM CPU seconds.
LOAD_THREADS = 4


def load_local_pipeline(folder: Path) -> PipelineModel:
    """The PipelineModel saved in `folder` (a local Spark ML folder), stages in their order."""
    metadata = _metadata(folder)
    uids = metadata["paramMap"]["stageUids"]
    paths = [
        Path(PipelineSharedReadWrite.getStagePath(uid, i, len(uids), str(folder / "stages")))
        for i, uid in enumerate(uids)
    ]
    with ThreadPoolExecutor(max_workers=LOAD_THREADS) as pool:
        stages = list(pool.map(_stage, paths))
    return PipelineModel(stages=stages)._resetUid(metadata["uid"])


def _metadata(folder: Path) -> dict[str, Any]:
    """The stage's metadata JSON: the first line Spark wrote, as `spark.read.text().first()`."""
    parts = sorted(p for p in (folder / "metadata").glob("part-*") if p.stat().st_size)
    if not parts:
        raise FileNotFoundError(f"{folder}: no metadata")
    with parts[0].open(encoding="utf-8") as handle:
        return json.loads(handle.readline())


def _stage(path: Path) -> Transformer:
    metadata = _metadata(path)
    name = metadata["class"].replace("org.apache.spark", "pyspark")
    module, _, attribute = name.rpartition(".")
    cls = getattr(importlib.import_module(module), attribute)
    if metadata["class"].startswith("org.apache.spark") or not isinstance(
        cls.read(), DefaultParamsReader
    ):
        return cls.load(path.resolve().as_uri())
    instance = cls()
    instance._resetUid(metadata["uid"])
    DefaultParamsReader.getAndSetParams(instance, metadata)
    return instance


def load_checked(model_dir: Path, downloaded: bool) -> PipelineModel:
    """The Spark model of a checked model folder, read in place when it is the local artifact
    store's own folder and Spark is local.

    `mlflow.spark.load_model` copies the folder to a temporary one (and, on a cluster whose file
    system is not the local one, to a DFS folder) before loading; loading the files just hashed
    saves that copy, and `load_local_pipeline` reads the stages' metadata without Spark jobs. A
    download is loaded through MLflow: its temporary folder is removed on return, and a loaded
    stage may still read its files (an ImputerModel's values are a DataFrame over them).
    """
    if downloaded or not local_classic(SparkSession.active()):
        return mlflow.spark.load_model(str(model_dir))
    flavor = Model.load(str(model_dir / "MLmodel")).flavors[mlflow.spark.FLAVOR_NAME]
    return load_local_pipeline(model_dir / flavor["model_data"])
