"""Pipeline benchmark: wall time, rows/s and peak memory of the full asset graph, per layer.

`--rows N` writes N synthetic customers in the Telco CSV schema (`churn-platform generate`), or
`--telco` takes the real Telco file. The whole pipeline (every asset but the backups) is then
materialized on it by `materialize_selection`, as `churn-platform run` does, in a fresh state
root. Layer times come from that run's event log (a step's STEP_START to its STEP_SUCCESS), so
nothing runs twice. `--compare` also runs, on the same file:

    pyspark  the platform's own functions (churn_platform.core, churn_platform.core.models) in
             a plain script, each layer written once as plain Parquet: no Dagster, MLflow,
             checks or versioned warehouse; the floor of this stack
    pandas   pandas + scikit-learn (LightGBM for boosting when installed), same steps and params
    naive    the data layers only, as a naive PySpark script: read with a schema, drop duplicate
             ids, encode, write Parquet; no quarantine, checks, fingerprints or versions

Each Spark run also reports its Spark jobs per layer (submission times from Spark's status
store, counted inside the layer's step spans): on small data every job costs 50-130 ms.

Each run gets a fresh Python process, one after the other: each pays its own Spark start-up, no
two JVMs run at once, and memory is attributed cleanly. This process polls, every 0.2 s, the RSS
of the run's Python process ("driver") and the summed RSS of its descendants ("JVM": in local
mode the Spark JVM, which runs the executors too), each address space once: a child the JVM is
starting shares the JVM's memory until it execs, and is not counted again. Imports happen
before the timed window.

`--profile quick` (default) sets CHURN_TRAINING_PROFILE=quick: small models and no grid search,
so the benchmark measures the pipeline rather than 200-tree forests; `--profile full` trains what
production trains. CHURN_TRAIN_MAX_ROWS, SPARK_DRIVER_MEMORY and CHURN_SHUFFLE_PARTITIONS pass
through to every run.

    .venv/bin/python benchmarks/pipeline.py --rows 20000 --compare
    .venv/bin/python benchmarks/pipeline.py --telco --compare --json
    .venv/bin/python benchmarks/pipeline.py --rows 1000000 --models logistic_regression,gbt
    .venv/bin/python benchmarks/pipeline.py --rows 1000000 --compare --data-only
"""

# No `from __future__ import annotations`: Dagster reads the asset's context annotation.
import argparse
import dataclasses
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from baseline_spark import spark_job_times
from pipeline_measures import MemorySampler, Run, compare_table, platform_table, summary

from churn_platform.core.features import SERVICE_COLUMNS
from churn_platform.core.models.fitting import DEFAULT_SEED
from churn_platform.core.models.kinds import MODEL_KINDS, merged_params
from churn_platform.core.scoring import ScoringPolicy
from churn_platform.core.spark_setup import spark_conf, spark_session
from churn_platform.datasets import TELCO_FILE, ensure_telco_csv
from churn_platform.runner import failure_message, materialize_selection, run_summary
from churn_platform.settings import DEFAULT_SPEC, load_settings

HERE = Path(__file__).resolve().parent
# The data layers' asset selection (--data-only), as `churn-platform run --select` takes it.
DATA_LAYERS = "group:ingestion or group:cleaning or group:features"
# The setting (read by settings.load_settings) that selects the training profile of each run.
PROFILE_ENV = "CHURN_TRAINING_PROFILE"
# The runs that start a SparkSession of their own from the job's configuration.
SPARK_BASELINES = ("pyspark", "naive")
# Spark's status store keeps 1,000 jobs by default; training alone runs more, which would evict
# the data layers' jobs before they are counted.
JOB_HISTORY = "--conf spark.ui.retainedJobs=1000000 pyspark-shell"
# A benchmark must never log into a real tracking server or Dagster instance: each run's
# settings then default to its own fresh state root.
ISOLATED_ENV = (
    "MLFLOW_TRACKING_URI",
    "CHURN_MLFLOW_ARTIFACT_ROOT",
    "DAGSTER_HOME",
    "CHURN_DAGSTER_STORAGE",
    "CHURN_DAGSTER_COMPUTE_LOGS",
)


class BenchmarkError(RuntimeError):
    """A run that failed; the message says which and where its log is."""


# ---------------------------------------------------------------------------------------------
# The platform run (in its own process)


def platform_run(job: Mapping[str, Any]) -> None:
    """Materialize the pipeline once; write each step's span, read from the event log."""
    os.environ["CHURN_MODELS"] = ",".join(job["models"])
    settings = load_settings()
    # As materialize_selection does first: Dagster's and MLflow's environment must be in
    # place before the asset modules import MLflow. They are imported before the clock starts.
    settings.export_library_env()
    importlib.import_module("churn_platform.definitions")
    started = time.time()
    # Each baseline starts its Spark session before its first step; so does this run, so that
    # the JVM's start is the run's overhead in every column, not the platform's raw layer (the
    # graph's Spark resource then gets this same session).
    spark_session(settings)
    result = materialize_selection(settings, DATA_LAYERS if job["data_only"] else None)
    ended = time.time()
    if not result.success:
        raise RuntimeError(f"platform run {result.run_id} failed: {failure_message(result)}")
    entries = dg.DagsterInstance.get().all_logs(
        result.run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    )
    starts: dict[str, float] = {}
    steps: dict[str, tuple[float, float]] = {}
    for entry in entries:
        if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
            starts.setdefault(entry.step_key, entry.timestamp)
        else:
            steps[entry.step_key] = (starts[entry.step_key], entry.timestamp)
    champion = (
        {"model_kind": "-", "metrics": {"roc_auc": math.nan}}
        if job["data_only"]
        else run_summary(result)["champion"]
    )
    retried = sorted(
        {e.step_key for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"}
    )

    Path(job["result"]).write_text(
        json.dumps(
            {
                "start": started,
                "end": ended,
                "steps": steps,
                "champion": champion["model_kind"],
                "roc_auc": champion["metrics"]["roc_auc"],
                "retried": retried,
                "jobs": spark_job_times(),
            }
        )
    )


# ---------------------------------------------------------------------------------------------
# Launching and measuring runs


def launch(name: str, command: list[str], env: Mapping[str, str], work: Path) -> Run:
    """Run one benchmark process to completion while sampling its memory."""
    log = work / f"{name}.log"
    with log.open("w") as out:
        child = subprocess.Popen(command, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
        with MemorySampler(child.pid) as sampler:
            code = child.wait()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BenchmarkError(f"the {name} run failed (exit code {code}); end of {log}:\n{tail}")
    result = json.loads((work / f"{name}.json").read_text())
    return Run(
        name=name,
        start=result["start"],
        end=result["end"],
        steps={step: tuple(span) for step, span in result["steps"].items()},
        champion=result["champion"],
        roc_auc=result["roc_auc"],
        retried=result.get("retried", []),
        samples=sampler.samples,
        jobs=result.get("jobs", []),
    )


def child_env(home: Path) -> dict[str, str]:
    return {**os.environ, "CHURN_HOME": str(home), "PYSPARK_SUBMIT_ARGS": JOB_HISTORY}


def resolved_params(kinds: Sequence[str], quick: bool) -> dict[str, dict[str, Any]]:
    """Each model's Spark parameters as its asset resolves them under the default run config.

    That config's fields default to the kinds table's own values, so `merged_params` with the
    profile gives the same result. Ensemble bases get their merged parameters too, as
    `fit_ensemble` merges them, so the baselines need no platform defaults.
    """
    params = {}
    for kind in kinds:
        merged = merged_params(kind, quick=quick)
        if "bases" in merged:
            overrides = merged.get("base_params") or {}
            merged["base_params"] = {
                base: merged_params(base, overrides.get(base)) for base in merged["bases"]
            }
        params[kind] = merged
    return params


def base_job(args: argparse.Namespace, kinds: Sequence[str], data: Path) -> dict[str, Any]:
    """What every run reads from its JOB.json: the data, the models and the platform's settings."""
    settings = load_settings()
    return {
        "data": str(data),
        "models": list(kinds),
        # In the order Dagster runs the model steps (by key), so that in every run the same
        # model pays the JVM's warm-up and the per-model rows compare like with like.
        "params": resolved_params(sorted(kinds), settings.training_profile == "quick"),
        # The default run config's seed; its threshold strategy ("f1") is evaluation's default.
        "seed": DEFAULT_SEED,
        "train_max_rows": settings.train_max_rows,
        "data_only": args.data_only,
        # Settings fields of the same names, as core/scoring.py scoring_policy reads them.
        "scoring_policy": {
            f.name: getattr(settings, f.name) for f in dataclasses.fields(ScoringPolicy)
        },
        "service_columns": list(SERVICE_COLUMNS),
    }


def run_job(common: Mapping[str, Any], name: str, work: Path) -> dict[str, Any]:
    """One run's JOB.json: the common part, its output paths and, for Spark, its Spark conf."""
    home = work / name
    job = {**common, "result": str(work / f"{name}.json"), "scores": str(home / "scores.parquet")}
    if name in SPARK_BASELINES:
        job["spark_conf"] = spark_conf(load_settings(child_env(home)))
    return job


def run_command(name: str, job_file: Path) -> list[str]:
    """The platform run re-enters this script; the baselines run pipeline_baselines.py."""
    if name == "platform":
        return [sys.executable, str(Path(__file__).resolve()), "--run-platform", str(job_file)]
    return [sys.executable, str(HERE / "pipeline_baselines.py"), name, str(job_file)]


def prepare_data(args: argparse.Namespace, target: Path, work: Path) -> tuple[int, str]:
    """Put the benchmark's CSV where the bundled Telco spec reads it; (rows, description)."""
    target.parent.mkdir(parents=True)
    if args.telco:
        source = ensure_telco_csv(load_settings().data_dir)
        shutil.copyfile(source, target)
        with target.open("rb") as handle:
            rows = sum(1 for _ in handle) - 1
        return rows, f"the IBM Telco file, {rows:,} customers"
    command = [sys.executable, "-m", "churn_platform.cli", "generate", "--rows", str(args.rows)]
    command += ["--seed", str(args.seed), "--output", str(target)]
    done = subprocess.run(
        command, env=child_env(work / "generate"), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchmarkError(f"generating the data failed:\n{done.stderr[-3000:]}")
    return args.rows, f"{args.rows:,} synthetic customers (seed {args.seed})"


# ---------------------------------------------------------------------------------------------
# Orchestration


def benchmark(args: argparse.Namespace, kinds: list[str], work: Path) -> None:
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    data = work / "platform" / "data" / TELCO_FILE
    progress("preparing the data")
    rows, described = prepare_data(args, data, work)
    common = base_job(args, kinds, data)
    names = ("platform", "pyspark", "pandas", "naive") if args.compare else ("platform",)
    runs: dict[str, Run] = {}
    for name in names:
        (work / name).mkdir(exist_ok=True)
        job_file = work / f"{name}-job.json"
        job_file.write_text(json.dumps(run_job(common, name, work)))
        progress(f"{name} run (log: {work / f'{name}.log'})")
        runs[name] = launch(name, run_command(name, job_file), child_env(work / name), work)
        progress(f"{name} run: {runs[name].total:.1f} s")

    platform = runs["platform"]
    scope = "data layers only" if args.data_only else f"{len(kinds)} model(s): {', '.join(kinds)}"
    print(f"Pipeline benchmark: {described}; profile {args.profile}; {scope}")
    if args.data_only:
        print("\nPlatform (Dagster asset graph, the data layers)")
    else:
        print(
            f"\nPlatform (Dagster asset graph, every asset but backups), champion "
            f"{platform.champion} with test ROC-AUC {platform.roc_auc:.4f}"
        )
    print(platform_table(platform, rows))
    if platform.retried:
        print(f"warning: retried steps (their time covers every attempt): {platform.retried}")
    if args.compare:
        print("\nComparison on the same file (each run in a fresh process)")
        print(compare_table(runs, rows))
    if args.json:
        print(json.dumps(summary(rows, runs)))


def configure_environment(profile: str) -> None:
    """Settings every run shares: the bundled Telco spec, the training profile, no servers."""
    for name in ISOLATED_ENV:
        os.environ.pop(name, None)
    os.environ["CHURN_CONFIG"] = str(DEFAULT_SPEC)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    if profile == "quick":
        os.environ[PROFILE_ENV] = "quick"
    else:
        os.environ.pop(PROFILE_ENV, None)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--rows", type=int, help="synthetic customers to generate")
    data.add_argument("--telco", action="store_true", help="use the real IBM Telco CSV instead")
    parser.add_argument("--seed", type=int, default=42, help="seed of the synthetic data")
    parser.add_argument(
        "--compare", action="store_true", help="also run the pyspark, pandas and naive baselines"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    parser.add_argument(
        "--models", default=",".join(MODEL_KINDS), help="comma list of model kinds (default: all)"
    )
    parser.add_argument(
        "--profile",
        choices=("quick", "full"),
        default="quick",
        help="training profile: quick = small models, no grid search (default); full = production",
    )
    parser.add_argument(
        "--data-only",
        action="store_true",
        help="only the data layers (raw, cleaned, features) in every run; no training or scoring",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument("--run-platform", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    wanted = [k for k in args.models.split(",") if k]
    unknown = sorted(set(wanted) - set(MODEL_KINDS))
    if unknown or not wanted:
        parser.error(f"--models: unknown or no model kinds {unknown}; choose from {MODEL_KINDS}")
    if not args.run_platform and not (args.telco or (args.rows and args.rows > 0)):
        parser.error("pass --rows N (N > 0) or --telco")
    return args, [k for k in MODEL_KINDS if k in wanted]


def main(argv: list[str] | None = None) -> int:
    args, kinds = parse_args(argv)
    if args.run_platform:
        platform_run(json.loads(Path(args.run_platform).read_text()))
        return 0
    configure_environment(args.profile)
    work = Path(tempfile.mkdtemp(prefix="churn-bench-"))
    try:
        benchmark(args, kinds, work)
    except BenchmarkError as exc:
        print(f"error: {exc}\n(work folder kept: {work})", file=sys.stderr)
        return 1
    if args.keep:
        print(f"work folder kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
