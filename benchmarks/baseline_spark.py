"""The Spark baselines of benchmarks/pipeline.py: plain PySpark (the platform's own functions
without the asset graph) and the naive data-layer script; and the Spark jobs a run submitted."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from baseline_common import Candidate, Timeline

from churn_platform.config import DatasetSpec
from churn_platform.core.models.kinds import KINDS, model_key

# The pyspark run's layers, each a plain Parquet folder beside its scores.
LAYERS = ("raw", "cleaned", "quarantined", "features")


def _spark(job: Mapping[str, Any]) -> Any:
    """A SparkSession with the platform's configuration for this run (from JOB.json)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in job["spark_conf"].items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def run_pyspark(job: Mapping[str, Any], spec: DatasetSpec, timeline: Timeline) -> Candidate:
    """Read, clean, features, every model as `train_and_track` fits it, then score the champion.

    Each layer is written once, as plain Parquet, by the core's own writer (which observes the
    layer's statistics during the write), and the next step reads it back, as the assets and
    the IO manager do. Left out, as platform overhead: Dagster, versioned folders and their
    publishing, asset checks and metadata, MLflow logging (curves, importances, model
    artifacts) and loading, registry and promotion, monitoring and audit.
    """
    from churn_platform.core import evaluation, reasons
    from churn_platform.core.cleaning import clean_customers
    from churn_platform.core.encoding import read_encoding
    from churn_platform.core.features import build_features, cap_training_rows
    from churn_platform.core.models.fitting import BaseFit, full_model, predict, training_frame
    from churn_platform.core.models.training import fit_model
    from churn_platform.core.population import population_filter
    from churn_platform.core.scoring import ScoringPolicy, score_customers
    from churn_platform.core.sources import read_batch

    spark = _spark(job)
    layers = {name: str(Path(job["scores"]).parent / name) for name in LAYERS}
    with timeline.step("raw_customers"):
        read = read_batch(spark, spec, spec.sources, batch="base", batch_order=0)
        try:
            read.frame.write.parquet(layers["raw"])
        finally:
            read.release()
    with timeline.step("cleaned_customers"):
        clean = clean_customers(spark.read.parquet(layers["raw"]), spec, ranges=spec.ranges)
        clean.write(Path(layers["cleaned"]), Path(layers["quarantined"]))
    with timeline.step("customer_features"):
        built = build_features(
            spark.read.parquet(layers["cleaned"]), spec, fit_max_rows=job["train_max_rows"]
        )
        built.write(Path(layers["features"]))
    if job["data_only"]:
        return Candidate("-", None, 0.0, math.nan, math.nan)
    summaries: dict[str, dict[str, Any]] = {}
    models, references = {}, {}
    # As the ensemble assets do: bases trained earlier in the run are reused, not refitted.
    reusable: dict[str, BaseFit] = {}
    with contextlib.ExitStack() as cached:
        with timeline.step("training_sample"):
            features = spark.read.parquet(layers["features"])
            capped = cap_training_rows(features, spec, job["train_max_rows"])
            frame = cached.enter_context(training_frame(capped, spec.id_column, built.pipeline))
        for kind, params in job["params"].items():
            with timeline.step(model_key(kind)):
                bases = {b: reusable[b] for b in params.get("bases", ()) if b in reusable}
                fit = fit_model(kind, frame, params, job["seed"], fitted_bases=bases)
                # judge's default strategy is the platform's default run config's ("f1").
                threshold, _, metrics = evaluation.judge(fit.oof, predict(fit.model, frame))
                summaries[kind] = {
                    "kind": kind,
                    "threshold": threshold,
                    "metrics": metrics,
                    "mlflow_run_id": None,
                }
                models[kind] = full_model(built.pipeline, fit.model)
                # As the model assets log it: the reasons' reference from the cached rows.
                references[kind] = reasons.reference_mean(
                    models[kind], read_encoding(models[kind]), frame.train
                )
                if not KINDS[kind].is_ensemble:
                    reusable[kind] = fit.as_base()
    with timeline.step("champion_model"):
        best = evaluation.leaderboard_rows(summaries)[0]
        champion = Candidate(
            best["model"],
            models[best["model"]],
            best["threshold"],
            best["roc_auc"],
            best["cv_roc_auc_mean"],
        )
    with timeline.step("churn_scores"):
        # As assets/scoring.py churn_scores, less the count of customers left out: the
        # population, reasons from the reference customer the champion's training measured.
        cleaned = spark.read.parquet(layers["cleaned"])
        scores = score_customers(
            cleaned.where(population_filter(spec)),
            spec,
            champion.model,
            (spec.model_name, "1", champion.threshold),
            ScoringPolicy(**job["scoring_policy"]),
            references[best["model"]],
        )
        scores.frame.write.parquet(job["scores"])
    return champion


def run_naive(job: Mapping[str, Any], spec: DatasetSpec, timeline: Timeline) -> Candidate:
    """The data layers as a naive PySpark script: the floor the platform's layers are held to.

    Read the CSV with a typed schema, drop duplicate ids and rows without a label, engineer and
    encode (the same fitted pipeline the platform stores), write each layer as Parquet. No
    quarantine, line numbers, checks, fingerprints or versioned folders; no training.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from churn_platform.core.columns import LABEL_COL, SPLIT_COL
    from churn_platform.core.features import (
        assign_split,
        engineer_features,
        feature_roles,
        fit_feature_pipeline,
    )
    from churn_platform.core.input_files import read_csv_header

    spark = _spark(job)
    out = Path(job["scores"]).parent / "naive"
    header = read_csv_header(Path(job["data"]), spec.sources[0].delimiter)
    schema = T.StructType(
        [T.StructField(c, T.DoubleType() if c in spec.numeric else T.StringType()) for c in header]
    )
    with timeline.step("raw_customers"):
        spark.read.csv(job["data"], header=True, schema=schema).write.parquet(str(out / "raw"))
    with timeline.step("cleaned_customers"):
        target = spec.target
        label = F.when(F.col(target.column) == target.positive, 1).when(
            F.col(target.column) == target.negative, 0
        )
        spark.read.parquet(str(out / "raw")).withColumn(LABEL_COL, label).where(
            F.col(LABEL_COL).isNotNull() & F.col(spec.id_column).isNotNull()
        ).dropDuplicates([spec.id_column]).drop(target.column, *spec.drop).write.parquet(
            str(out / "cleaned")
        )
    with timeline.step("customer_features"):
        cleaned = spark.read.parquet(str(out / "cleaned"))
        table = assign_split(engineer_features(cleaned, spec), spec)
        numeric, categorical = feature_roles(table, spec)
        pipeline = fit_feature_pipeline(
            table.where(F.col(SPLIT_COL) == "train"), numeric, categorical
        )
        table.write.parquet(str(out / "features"))
        pipeline.write().save(str(out / "pipeline"))
    return Candidate("-", None, 0.0, math.nan, math.nan)


def spark_job_times() -> list[float]:
    """Submission time (epoch s) of every Spark job of this process's JVM, for job counts.

    Read from Spark's status store, which keeps `spark.ui.retainedJobs` jobs: the benchmark
    raises that limit (pipeline.JOB_HISTORY) so no layer's jobs are evicted.
    """
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is None:
        return []
    jobs = context._jsc.sc().statusStore().jobsList(None)
    times = []
    for i in range(jobs.size()):
        submitted = jobs.apply(i).submissionTime()
        if submitted.isDefined():
            times.append(submitted.get().getTime() / 1000)
    return times
