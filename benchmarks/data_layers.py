"""Data-layer benchmark: each step of raw, cleaned and features, with the Spark JVM's CPU seconds.

On a shared two-core machine wall time swings with the load; the CPU seconds the Spark JVM
spends (local mode: driver and executors are one process) move far less, so this script prints
both, with the Spark jobs of each step and rows/s of the wall time. A naive PySpark read and
Parquet write of the same CSV (string schema, nothing else) runs first in the same session as
the floor to compare against. The steps are the platform's own core functions, in the order
the assets call them, each writing plain Parquet under a temporary folder:

    .venv/bin/python benchmarks/data_layers.py --rows 1000000
    .venv/bin/python benchmarks/data_layers.py --csv data.csv --warmup

The first step in a fresh JVM pays for most of the JIT's compilation (the same step cost up to
twice the CPU seconds first as later in session 10's runs); `--warmup` runs the naive write
once, unmeasured, before the table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from churn_platform.config import SourceSpec, load_spec
from churn_platform.core import cleaning, features, quality, sources
from churn_platform.core.columns import ERROR_COL
from churn_platform.core.input_files import read_csv_header
from churn_platform.core.schemas import features_schema, raw_schema
from churn_platform.core.spark_setup import spark_conf
from churn_platform.settings import load_settings


class Meter:
    """Wall seconds, JVM CPU seconds and Spark jobs per step, printed as a table."""

    def __init__(self, spark: SparkSession, rows: int) -> None:
        self.spark, self.rows = spark, rows
        self.totals: dict[str, tuple[float, float, int]] = {}
        print(f"{'step':<34}{'wall s':>8}{'JVM CPU s':>11}{'jobs':>6}{'rows/s':>11}")

    def _cpu(self) -> float:
        children = psutil.Process(os.getpid()).children(recursive=True)
        return sum(c.cpu_times().user + c.cpu_times().system for c in children)

    def _jobs(self) -> int:
        return len(self.spark.sparkContext.statusTracker().getJobIdsForGroup())

    @contextmanager
    def step(self, name: str, layer: str) -> Iterator[None]:
        wall, cpu, jobs = time.perf_counter(), self._cpu(), self._jobs()
        yield
        wall, cpu, jobs = time.perf_counter() - wall, self._cpu() - cpu, self._jobs() - jobs
        print(f"{name:<34}{wall:>8.1f}{cpu:>11.1f}{jobs:>6}{self.rows / wall:>11,.0f}", flush=True)
        done = self.totals.get(layer, (0.0, 0.0, 0))
        self.totals[layer] = (done[0] + wall, done[1] + cpu, done[2] + jobs)

    def summary(self) -> None:
        print(f"\n{'layer':<34}{'wall s':>8}{'JVM CPU s':>11}{'jobs':>6}{'rows/s':>11}")
        for layer, (wall, cpu, jobs) in self.totals.items():
            print(f"{layer:<34}{wall:>8.1f}{cpu:>11.1f}{jobs:>6}{self.rows / wall:>11,.0f}")
        layers = [v for k, v in self.totals.items() if k != "naive"]
        wall, cpu = sum(v[0] for v in layers), sum(v[1] for v in layers)
        naive_wall, naive_cpu, _ = self.totals["naive"]
        print(
            f"{'data layers (raw+cleaned+features)':<34}{wall:>8.1f}{cpu:>11.1f}"
            f"{sum(v[2] for v in layers):>6}{self.rows / wall:>11,.0f}"
        )
        ratio = f"{wall / naive_wall:.2f}x wall, {cpu / naive_cpu:.2f}x CPU"
        print(f"platform / naive read+write: {ratio}")


def run(spark: SparkSession, csv: Path, rows: int, work: Path, warmup: bool = False) -> None:
    settings = load_settings({"CHURN_HOME": str(work / "home")})
    spec = load_spec(settings.spec_path, settings.home)
    names = read_csv_header(csv, ",")
    schema = ", ".join(f"`{n}` string" for n in names)
    naive = spark.read.schema(schema).option("header", True).csv(str(csv))
    if warmup:  # the JIT's first compilations would otherwise land on the naive step
        naive.write.parquet(str(work / "warmup"))
    meter = Meter(spark, rows)
    with meter.step("naive: read CSV, write Parquet", "naive"):
        naive.write.parquet(str(work / "naive"))
    source = SourceSpec(name="customers", format="csv", path=str(csv))
    with meter.step("raw: line counts per partition", "raw"):
        read = sources.read_batch(spark, spec, (source,), "base", 0)
    with meter.step("raw: parse + write (observed)", "raw"):
        observed, observation = quality.observed(
            read.frame,
            [
                F.count(F.lit(1)).alias("rows"),
                F.count(ERROR_COL).alias("malformed"),
                *quality.schema_aggregates(raw_schema(spec)),
            ],
        )
        observed.write.parquet(str(work / "raw"))
        stats = observation.get
    read.release()
    raw = spark.read.parquet(str(work / "raw"))
    with meter.step("cleaned: plan", "cleaned"):
        planned = cleaning.clean_layer(raw, spec)
    with meter.step("cleaned: write both, ids (observed)", "cleaned"):
        clean = planned.write(work / "cleaned", work / "quarantine")
    cleaned = spark.read.parquet(str(work / "cleaned"))
    with meter.step("features: fit pipeline (train rows)", "features"):
        built = features.build_features(
            cleaned, spec, features_schema(spec), settings.train_max_rows
        )
    with meter.step("features: write, ids (observed)", "features"):
        built.write(work / "features")
    meter.summary()
    print(f"\nraw {stats['rows']:,} rows ({stats['malformed']} malformed); cleaned {clean.counts}")
    print(f"quarantined {clean.by_reason}; splits {built.split_counts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--rows", type=int, help="synthetic customers to generate first")
    data.add_argument("--csv", type=Path, help="a CSV in the Telco schema")
    parser.add_argument(
        "--warmup",
        action="store_true",
        help="write the naive Parquet once unmeasured first (a warm JVM for every step)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="churn-data-layers-") as folder:
        work = Path(folder)
        csv = args.csv
        if csv is None:
            csv = work / "customers.csv"
            command = [sys.executable, "-m", "churn_platform.cli", "generate"]
            command += ["--rows", str(args.rows), "--output", str(csv)]
            env = load_settings({"CHURN_HOME": str(work / "generate")}).child_env()
            subprocess.run(command, env=env, check=True, capture_output=True)
        rows = sum(1 for _ in csv.open("rb")) - 1
        builder = SparkSession.builder
        for key, value in spark_conf(load_settings({"CHURN_HOME": str(work / "home")})).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.range(1).count()  # start the JVM outside the measured steps
        print(f"Data layers on {rows:,} rows ({csv.name})\n")
        run(spark, csv, rows, work, args.warmup)
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
