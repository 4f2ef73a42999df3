"""Scoring benchmark: the platform's scoring against the logged pipeline's transform and pandas.

On N synthetic customers (`churn-platform generate`), cleaned by the platform into Parquet, a
champion of one kind is fitted on a hash sample of the training split (untimed). Then, in one
process and one after the other, each path scores the customers who can still churn and writes
Parquet:

    today     today's path: the logged PipelineModel's transform (its Imputer, StringIndexer,
              OneHotEncoder and VectorAssembler stages, then the classifier), probability,
              decision, tier and contact value selected, written; under Spark's default
              whole-stage-codegen method limit, as before the platform set it to 8,000
    pipeline  the same under the platform's Spark settings
    platform  core.scoring.score_customers: the feature stages as column expressions, the
              classifier stages, reasons and unseen values, written once with the statistics
              observed by the write (the jobs before the write are counted with it)
    pandas    pandas + scikit-learn doing the same (benchmarks/baseline_pandas.py's scoring),
              from reading the cleaned Parquet to writing the scores

It prints seconds, rows/s and Spark jobs (the status tracker's jobs of each path's job group),
the ratios, and the model load (PipelineModel.load, as the asset loads the champion).

    .venv/bin/python benchmarks/scoring.py --rows 100000
    .venv/bin/python benchmarks/scoring.py --rows 1000000 --model gbt --json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from baseline_common import Candidate
from baseline_pandas import _assign_split, _encode, _encoder, _engineer, _score
from baseline_sklearn import _fit_model
from pipeline import resolved_params
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.config import DatasetSpec, SourceSpec, load_spec
from churn_platform.core import cleaning, reasons, scoring, sources
from churn_platform.core.columns import (
    BATCH_COL,
    BATCH_ORDER_COL,
    FOLD_COL,
    LABEL_COL,
    SPLIT_COL,
)
from churn_platform.core.encoding import read_encoding
from churn_platform.core.features import (
    SERVICE_COLUMNS,
    build_features,
    engineer_features,
)
from churn_platform.core.models.fitting import DEFAULT_SEED, full_model, training_frame
from churn_platform.core.models.kinds import MODEL_KINDS, merged_params
from churn_platform.core.models.training import fit_model
from churn_platform.core.population import population_filter
from churn_platform.core.sampling import sampled
from churn_platform.core.spark_setup import session_conf, spark_conf
from churn_platform.settings import DEFAULT_SPEC, load_settings

# Issue 17's target for scoring including the Parquet write, at 1M rows.
TARGET_ROWS_PER_SECOND = 300_000
WARM_UP_ROWS = 20_000
HUGE_METHOD_LIMIT = "spark.sql.codegen.hugeMethodLimit"
SPARK_DEFAULT_LIMIT = "65535"
# A benchmark threshold: it moves decisions and tiers, not the work done.
THRESHOLD = 0.3


class Jobs:
    """Spark jobs per named step, from the status tracker's job groups."""

    def __init__(self, spark: SparkSession) -> None:
        self.context = spark.sparkContext
        self.counts: dict[str, int] = {}

    @contextmanager
    def group(self, name: str) -> Iterator[None]:
        self.context.setJobGroup(name, name)
        try:
            yield
        finally:
            self.context.setLocalProperty("spark.jobGroup.id", None)
            self.counts[name] = len(self.context.statusTracker().getJobIdsForGroup(name))


def timed(jobs: Jobs, name: str, work: Callable[[], Any]) -> tuple[float, Any]:
    with jobs.group(name):
        started = time.perf_counter()
        result = work()
        return time.perf_counter() - started, result


def generate(rows: int, seed: int, target: Path) -> None:
    command = [sys.executable, "-m", "churn_platform.cli", "generate", "--rows", str(rows)]
    done = subprocess.run(
        [*command, "--seed", str(seed), "--output", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"generating the data failed:\n{done.stderr[-3000:]}")


def clean(spark: SparkSession, spec: DatasetSpec, csv: Path, target: Path) -> DataFrame:
    """The platform's cleaned layer of the CSV, as Parquet (what the scoring asset reads)."""
    source = SourceSpec(name="customers", format="csv", path=str(csv))
    batch = sources.read_batch(spark, spec, (source,), "benchmark", 0)
    try:
        cleaned = cleaning.clean_customers(batch.frame, spec)
        cleaned.write(target / "cleaned", target / "quarantined")
    finally:
        batch.release()
    return spark.read.parquet(str(target / "cleaned"))


def champion(
    spec: DatasetSpec, kind: str, cleaned: DataFrame, train_rows: int
) -> tuple[PipelineModel, np.ndarray | None, DataFrame]:
    """The kind fitted (quick profile) on a hash sample of the customers, as a logged model is
    (feature stages + classifier), with the reasons' reference customer its training logs; and
    that sample, for the pandas champion."""
    rows = cleaned.count()
    sample = sampled(cleaned, rows, train_rows, spec.id_column)
    built = build_features(sample, spec)
    with training_frame(built.features, spec.id_column, built.pipeline) as frame:
        fit = fit_model(kind, frame, merged_params(kind, quick=True), DEFAULT_SEED)
        model = full_model(built.pipeline, fit.model)
        reference = reasons.reference_mean(model, read_encoding(model), frame.train)
    return model, reference, sample


def pandas_champion(kind: str, sample: pd.DataFrame, spec: DatasetSpec) -> tuple[Any, Candidate]:
    """scikit-learn's counterpart of the Spark champion on the same sample: (encoder, model)."""
    table = _assign_split(_engineer(sample, spec, SERVICE_COLUMNS), spec)
    train = table[table[SPLIT_COL] == "train"]
    encoder = _encoder(table, spec).fit(train)
    x = _encode(encoder, train)
    params = resolved_params([kind], quick=True)[kind]
    model, _ = _fit_model(
        kind,
        params,
        x,
        train[LABEL_COL].to_numpy(),
        train[FOLD_COL].to_numpy(),
        DEFAULT_SEED,
        {},
    )
    return encoder, Candidate(kind, model, THRESHOLD, math.nan, math.nan)


def pipeline_write(
    spec: DatasetSpec,
    model: PipelineModel,
    cleaned: DataFrame,
    policy: scoring.ScoringPolicy,
    output: Path,
) -> None:
    pipeline_path(spec, model, cleaned, policy).write.mode("error").parquet(str(output))


def pipeline_path(
    spec: DatasetSpec, model: PipelineModel, cleaned: DataFrame, policy: scoring.ScoringPolicy
) -> DataFrame:
    """Today's path: the logged model's transform, then the decision columns."""
    population = cleaned.where(population_filter(spec))
    probability = F.col("churn_probability")
    cuts = scoring.tier_cuts(THRESHOLD, policy)
    return model.transform(engineer_features(population, spec)).select(
        spec.id_column,
        probability,
        (probability >= F.lit(THRESHOLD)).cast("int").alias("churn_predicted"),
        scoring.risk_tier(probability, cuts).alias("risk_tier"),
        scoring.expected_value(probability, policy).alias("expected_value"),
    )


def platform_path(
    spec: DatasetSpec,
    model: PipelineModel,
    cleaned: DataFrame,
    policy: scoring.ScoringPolicy,
    reference: np.ndarray | None,
    output: Path,
) -> dict[str, Any]:
    """The scoring asset's work: score_customers from the reference customer training logged,
    one write, the observed statistics."""
    scores = scoring.score_customers(
        cleaned,
        spec,
        model,
        ("benchmark", "1", THRESHOLD),
        policy,
        reference,
        population=population_filter(spec),
    )
    scores.frame.write.mode("error").parquet(str(output))
    return scores.summary()


def pandas_path(
    spec: DatasetSpec,
    encoder: Any,
    model: Candidate,
    cleaned: Path,
    policy: scoring.ScoringPolicy,
    output: Path,
) -> None:
    """The same scoring in pandas + scikit-learn, from the cleaned Parquet to the scores."""
    frame = pd.read_parquet(cleaned).drop(columns=[BATCH_COL, BATCH_ORDER_COL])
    table = _assign_split(_engineer(frame, spec, SERVICE_COLUMNS), spec)
    job = {
        "scoring_policy": vars(policy),
        "service_columns": list(SERVICE_COLUMNS),
        "scores": str(output),
    }
    _score(job, spec, model, encoder, frame, table)


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}" if seconds > 0 else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic customers")
    parser.add_argument("--data", type=Path, help="a Telco-shaped CSV instead of generating one")
    parser.add_argument("--model", default="logistic_regression", choices=MODEL_KINDS)
    parser.add_argument("--train-rows", type=int, default=50_000, help="champion's fit sample")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark setting on top of the platform's (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.spark_conf)

    with tempfile.TemporaryDirectory(prefix="churn-scoring-bench-") as tmp:
        work = Path(tmp)
        settings = load_settings({"CHURN_HOME": str(work / "home")})
        spec = load_spec(DEFAULT_SPEC, settings.home)
        policy = scoring.ScoringPolicy(
            cost_missed_churner=settings.cost_missed_churner,
            cost_retention_offer=settings.cost_retention_offer,
        )
        csv = args.data or work / "customers.csv"
        if args.data is None:
            started = time.perf_counter()
            generate(args.rows, args.seed, csv)
            print(f"generated {args.rows:,} customers in {time.perf_counter() - started:.1f} s")
        builder = SparkSession.builder
        for key, value in {**spark_conf(settings), **extra}.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        jobs = Jobs(spark)

        seconds, cleaned = timed(jobs, "clean", lambda: clean(spark, spec, csv, work))
        rows = cleaned.where(population_filter(spec)).count()
        print(f"cleaned layer in {seconds:.1f} s; {rows:,} customers can still churn")
        seconds, (model, reference, sample) = timed(
            jobs, "fit", lambda: champion(spec, args.model, cleaned, args.train_rows)
        )
        model.write().save(str(work / "model"))
        sample_rows = sample.drop(BATCH_COL, BATCH_ORDER_COL).toPandas()
        encoder, sklearn_model = pandas_champion(args.model, sample_rows, spec)
        print(f"{args.model} fitted on {args.train_rows:,} rows at most in {seconds:.1f} s")

        load_seconds, model = timed(jobs, "load", lambda: PipelineModel.load(str(work / "model")))
        # Warm-up on a sample (untimed): the first query of a JVM pays for its JIT compilation.
        few = sampled(cleaned, rows, WARM_UP_ROWS, spec.id_column)
        with jobs.group("warm-up"):
            pipeline_path(spec, model, few, policy).write.format("noop").mode("overwrite").save()
            platform_path(spec, model, few, policy, reference, work / "warm-up")
        results: dict[str, float] = {}
        # Today's path as it ran before: the logged model's transform under Spark's default
        # codegen limit; then the same transform under the platform's Spark settings.
        with session_conf(spark, HUGE_METHOD_LIMIT, SPARK_DEFAULT_LIMIT):
            results["today"] = timed(
                jobs, "today", lambda: pipeline_write(spec, model, cleaned, policy, work / "today")
            )[0]
        results["pipeline"] = timed(
            jobs,
            "pipeline",
            lambda: pipeline_write(spec, model, cleaned, policy, work / "pipeline"),
        )[0]
        results["platform"], summary = timed(
            jobs,
            "platform",
            lambda: platform_path(spec, model, cleaned, policy, reference, work / "platform"),
        )
        results["pandas"] = timed(
            jobs,
            "pandas",
            lambda: pandas_path(
                spec, encoder, sklearn_model, work / "cleaned", policy, work / "pandas.parquet"
            ),
        )[0]
        written = {
            "today": spark.read.parquet(str(work / "today")).count(),
            "pipeline": spark.read.parquet(str(work / "pipeline")).count(),
            "platform": summary["rows"],
            "pandas": len(pd.read_parquet(work / "pandas.parquet", columns=[spec.id_column])),
        }
        spark.stop()

    print(f"\nscoring {rows:,} customers ({args.model}), including the Parquet write")
    if extra:
        print(f"Spark settings on top of the platform's: {extra}")
    header = ("path", "seconds", "rows/s", "jobs", "vs today", "vs pandas")
    print("{:<10} {:>8} {:>10} {:>5} {:>9} {:>10}".format(*header))
    for name, seconds in results.items():
        print(
            f"{name:<10} {seconds:>8.2f} {rate(rows, seconds):>10} {jobs.counts[name]:>5} "
            f"{results['today'] / seconds:>8.2f}x {results['pandas'] / seconds:>9.2f}x"
        )
    print(f"model load: {load_seconds:.2f} s, {jobs.counts['load']} jobs")
    met = rows / results["platform"] >= TARGET_ROWS_PER_SECOND
    print(
        f"target >= {TARGET_ROWS_PER_SECOND:,} rows/s: {'met' if met else 'missed'} "
        f"({rate(rows, results['platform'])} rows/s)"
    )
    if any(count != rows for count in written.values()):
        raise SystemExit(f"the paths wrote different row counts: {written}")
    if args.json:
        print(
            json.dumps(
                {
                    "rows": rows,
                    "model": args.model,
                    "spark_conf": extra,
                    "seconds": {k: round(v, 3) for k, v in results.items()},
                    "jobs": {k: jobs.counts[k] for k in (*results, "load")},
                    "load_seconds": round(load_seconds, 3),
                    "rows_per_second": {k: round(rows / v) for k, v in results.items()},
                    "target_met": met,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
