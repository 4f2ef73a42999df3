"""The comparison runs of benchmarks/pipeline.py: plain PySpark, pandas + scikit-learn, naive.

Run by pipeline.py as `python pipeline_baselines.py {pyspark|pandas|naive} JOB.json`, each in a
fresh process, so its memory and its Spark start-up are its own. JOB.json carries everything
taken from the platform (resolved model parameters, Spark configuration, scoring policy):
computed once by the benchmark, so this module imports no Dagster or MLflow and the drivers'
RSS stays honest.
For the same reason heavy imports sit in the functions that use them, and `main` loads just the
chosen run's (`IMPORTS`) before its clock starts: the pandas run never loads Spark.

The runs live in baseline_spark.py (plain and naive PySpark), baseline_pandas.py (pandas) and
baseline_sklearn.py (its scikit-learn models); baseline_common.py holds the step clock and the
trained model each reports. Each run writes a result JSON: epoch start/end and (start, end) per
step, with the step names of the platform's asset graph, so the benchmark lines the three runs
up layer by layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from baseline_common import Candidate, Timeline
from baseline_pandas import run_pandas
from baseline_spark import run_naive, run_pyspark, spark_job_times

from churn_platform.config import DatasetSpec, load_spec
from churn_platform.settings import load_settings

# What each run imports, loaded before its clock starts; each run loads only its own stack, so
# its driver's RSS is that stack's.
IMPORTS = {
    "pyspark": (
        "pyspark.sql",
        "churn_platform.core.sources",
        "churn_platform.core.cleaning",
        "churn_platform.core.features",
        "churn_platform.core.models.training",
        "churn_platform.core.scoring",
    ),
    "naive": ("pyspark.sql", "churn_platform.core.sources", "churn_platform.core.features"),
    "pandas": (
        "pandas",
        "pyarrow.parquet",
        "sklearn.compose",
        "sklearn.ensemble",
        "sklearn.impute",
        "sklearn.linear_model",
        "sklearn.metrics",
        "sklearn.model_selection",
        "sklearn.pipeline",
        "sklearn.preprocessing",
        "sklearn.tree",
        "lightgbm",
    ),
}
RUNNERS: dict[str, Callable[[Mapping[str, Any], DatasetSpec, Timeline], Candidate]] = {
    "pyspark": run_pyspark,
    "pandas": run_pandas,
    "naive": run_naive,
}


def main(argv: list[str]) -> int:
    """Run one baseline on the job's data and write its timeline and champion as JSON."""
    runner, job = RUNNERS[argv[0]], json.loads(Path(argv[1]).read_text())
    for module in IMPORTS[argv[0]]:
        with contextlib.suppress(ImportError):  # LightGBM is optional
            importlib.import_module(module)
    settings = load_settings()
    spec = load_spec(settings.spec_path, settings.home)
    spec = dataclasses.replace(
        spec, sources=(dataclasses.replace(spec.sources[0], path=job["data"]),)
    )
    timeline = Timeline()
    started = time.time()
    champion = runner(job, spec, timeline)
    result = {
        "start": started,
        "end": time.time(),
        "steps": timeline.steps,
        "champion": champion.kind,
        "roc_auc": champion.roc_auc,
        "jobs": [] if argv[0] == "pandas" else spark_job_times(),
    }
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
