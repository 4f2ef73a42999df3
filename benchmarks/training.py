"""Training benchmark: each model kind's seconds, Spark jobs and accuracy on one dataset.

Fits every kind with the platform's own fitting code (`churn_platform.core.models`) on one
cached training frame, as a model asset does, judges it the one way every model is judged
(threshold out of fold, metrics on the test split), and prints one row per kind: seconds, Spark
jobs (from the DAG scheduler's job counter), test and CV ROC-AUC. Ensembles reuse the bases
fitted before them, as the asset graph does. For the same rows and folds it also times
scikit-learn's LogisticRegression and HistGradientBoostingClassifier: the ratio is what Spark's
per-job latency costs on data this small.

    .venv/bin/python benchmarks/training.py                      # Telco, every kind
    .venv/bin/python benchmarks/training.py --models gbt,stacking --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from pyspark.sql import SparkSession
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from churn_platform.config import load_spec
from churn_platform.core import cleaning, evaluation, sources
from churn_platform.core.columns import FEATURES_COL, FOLD_COL, LABEL_COL
from churn_platform.core.features import build_features
from churn_platform.core.models.fitting import BaseFit, predict, training_frame
from churn_platform.core.models.kinds import BASE_KINDS, MODEL_KINDS
from churn_platform.core.models.training import fit_model
from churn_platform.core.spark_setup import spark_conf
from churn_platform.settings import DEFAULT_SPEC, load_settings

SHARED_TELCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "telco_churn.csv"


def jvm_cpu_seconds() -> float:
    """CPU seconds of this process's children (the Spark JVM): comparable on a shared machine."""
    children = psutil.Process(os.getpid()).children(recursive=True)
    return sum(c.cpu_times().user + c.cpu_times().system for c in children)


def jobs_so_far(spark: SparkSession) -> int:
    """Spark jobs submitted by this application so far (the DAG scheduler's counter)."""
    counter = spark.sparkContext._jsc.sc().dagScheduler().nextJobId()
    return int(counter if isinstance(counter, int) else counter.get())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_TELCO, help="Telco-shaped CSV")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--models", default=",".join(MODEL_KINDS), help="comma list")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args(argv)
    kinds = [k for k in args.models.split(",") if k]

    with tempfile.TemporaryDirectory(prefix="churn-bench-") as tmp:
        home = Path(tmp)
        (home / "data").mkdir()
        shutil.copy(args.data, home / "data" / "telco_churn.csv")
        settings = load_settings({"CHURN_HOME": str(home)})
        builder = SparkSession.builder
        for key, value in spark_conf(settings).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spec = load_spec(args.spec, home)
        started = time.perf_counter()
        raw = sources.read_batch(spark, spec, spec.sources, "benchmark", 0)
        clean = cleaning.clean_customers(raw.frame, spec)
        built = build_features(clean.cleaned, spec)
        rows: list[dict] = []
        fitted: dict[str, BaseFit] = {}
        with training_frame(built.features, spec.id_column, built.pipeline) as frame:
            prep = time.perf_counter() - started
            print(f"data + training frame: {prep:.1f} s ({frame.train_rows} training rows)")
            print(
                f"{'model':<20} {'seconds':>8} {'JVM CPU s':>10} {'jobs':>6} "
                f"{'test AUC':>9} {'CV AUC':>8}"
            )
            for kind in kinds:
                jobs, t0, cpu = jobs_so_far(spark), time.perf_counter(), jvm_cpu_seconds()
                fit = fit_model(kind, frame, fitted_bases=fitted)
                test = predict(fit.model, frame)
                _, _, metrics = evaluation.judge(fit.oof, test)
                seconds = time.perf_counter() - t0
                if kind in BASE_KINDS:
                    fitted[kind] = fit.as_base()
                row = {
                    "model": kind,
                    "seconds": round(seconds, 2),
                    "cpu_seconds": round(jvm_cpu_seconds() - cpu, 2),
                    "jobs": jobs_so_far(spark) - jobs,
                    "roc_auc": round(metrics["roc_auc"], 4),
                    "cv_roc_auc": round(metrics["cv_roc_auc_mean"], 4),
                }
                rows.append(row)
                print(
                    f"{kind:<20} {seconds:>8.1f} {row['cpu_seconds']:>10.1f} {row['jobs']:>6} "
                    f"{metrics['roc_auc']:>9.4f} {metrics['cv_roc_auc_mean']:>8.4f}",
                    flush=True,
                )
            reference = _sklearn(frame)
        raw.release()
        total = sum(r["seconds"] for r in rows)
        cpu_total = sum(r["cpu_seconds"] for r in rows)
        print(
            f"{'all models':<20} {total:>8.1f} {cpu_total:>10.1f} {sum(r['jobs'] for r in rows):>6}"
        )
        for name, seconds in reference.items():
            print(f"scikit-learn {name}: {seconds:.2f} s (5 folds + refit)")
        spark.stop()
    if args.json:
        print(json.dumps({"models": rows, "total_seconds": round(total, 1), "sklearn": reference}))
    return 0


def _sklearn(frame) -> dict[str, float]:
    """Seconds scikit-learn takes for the same fold fits + refit on the same vectors."""
    data = frame.train.toPandas()
    matrix = np.vstack([v.toArray() for v in data[FEATURES_COL]])
    label, fold = data[LABEL_COL].to_numpy(), data[FOLD_COL].to_numpy()
    seconds = {}
    for name, make in (
        ("LogisticRegression", lambda: LogisticRegression(C=1 / 0.03, max_iter=1000)),
        ("HistGradientBoosting", lambda: HistGradientBoostingClassifier(max_iter=100)),
    ):
        t0 = time.perf_counter()
        for f in [*frame.folds, None]:
            rows = fold != f if f is not None else np.ones(len(fold), bool)
            make().fit(matrix[rows], label[rows])
        seconds[name] = round(time.perf_counter() - t0, 2)
    return seconds


if __name__ == "__main__":
    sys.exit(main())
