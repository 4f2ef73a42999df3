"""Accuracy benchmark: every churn model on the real Telco data beside scikit-learn references.

Runs the platform's own ETL (`core.features.build_features`), so the fixed test split and the 5
are the ones the pipeline uses. Each model is fitted on the training split with `fit_model`;
its threshold is chosen by F1 on out-of-fold predictions, then applied once to the test split.
The scikit-learn references (LogisticRegression, HistGradientBoosting) get the same feature
vectors, folds and metric code.

    .venv/bin/python benchmarks/accuracy.py --data /path/to/telco_churn.csv [--models gbt,voting]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.base import ClassifierMixin, clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from churn_platform import etl, modeling
from churn_platform.assets.training import ENSEMBLE_INPUTS
from churn_platform.config import load_spec
from churn_platform.core import cleaning, sources
from churn_platform.core.features import build_features
from churn_platform.resources import spark_conf
from churn_platform.settings import load_settings

TARGET_TEST_AUC = 0.85
TARGET_CV_AUC = 0.848
REFERENCES: dict[str, ClassifierMixin] = {
    "sklearn_logistic_regression": make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)
    ),
    "sklearn_hist_gradient_boosting": HistGradientBoostingClassifier(random_state=0),
}


def _log(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)


def load_features(spark: SparkSession, data: Path) -> tuple[DataFrame, str]:
    """The pipeline's feature table for a Telco CSV, through the platform's own ETL."""
    settings = load_settings()
    spec = load_spec(settings.spec_path, settings.home)
    source = dataclasses.replace(spec.sources[0], path=str(data))
    spec = dataclasses.replace(spec, sources=(source,))
    raw = sources.read_batch(spark, spec, spec.sources, batch="benchmark", batch_order=0).frame
    cleaned = cleaning.clean_customers(raw, spec).cleaned
    built = build_features(cleaned, spec)
    features = built.pipeline.transform(built.features)
    keep = [spec.id_column, etl.LABEL_COL, etl.SPLIT_COL, etl.FOLD_COL, etl.FEATURES_COL]
    return features.select(*keep).cache(), spec.id_column


def score(oof: DataFrame, test_pred: DataFrame) -> dict[str, float]:
    """Test metrics at the OOF-F1 threshold, and the mean of the per-fold OOF ROC-AUCs."""
    threshold, _ = modeling.choose_threshold(oof, strategy="f1")
    metrics = modeling.evaluate(test_pred, threshold)
    fold_auc = list(modeling.roc_auc_by_group(oof, etl.FOLD_COL).values())
    return {**metrics, "threshold": threshold, "cv_roc_auc": float(np.mean(fold_auc))}


def sklearn_reference(
    spark: SparkSession, estimator: ClassifierMixin, frame: pd.DataFrame, id_col: str
) -> tuple[DataFrame, DataFrame]:
    """OOF and test predictions of a scikit-learn model on the very same vectors and folds."""
    matrix = np.vstack(frame["x"].to_numpy())
    train = (frame[etl.SPLIT_COL] == "train").to_numpy()
    oof = np.zeros(len(frame))
    for fold in sorted(frame.loc[train, etl.FOLD_COL].unique()):
        fit_rows = train & (frame[etl.FOLD_COL] != fold).to_numpy()
        held_out = train & (frame[etl.FOLD_COL] == fold).to_numpy()
        model = clone(estimator).fit(matrix[fit_rows], frame[etl.LABEL_COL][fit_rows])
        oof[held_out] = model.predict_proba(matrix[held_out])[:, 1]
    model = clone(estimator).fit(matrix[train], frame[etl.LABEL_COL][train])
    test_probability = model.predict_proba(matrix[~train])[:, 1]

    def to_spark(rows: np.ndarray, probability: np.ndarray) -> DataFrame:
        part = frame.loc[rows, [id_col, etl.FOLD_COL, etl.LABEL_COL]].copy()
        part[modeling.PROBABILITY_COL] = probability
        return spark.createDataFrame(part)

    return to_spark(train, oof[train]), to_spark(~train, test_probability)


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=settings.data_dir / "telco_churn.csv")
    parser.add_argument("--models", default=",".join(modeling.MODEL_KINDS), help="comma list")
    parser.add_argument("--params", default="{}", help='JSON {"kind": {param: value}} overrides')
    parser.add_argument("--seed", type=int, default=modeling.DEFAULT_SEED)
    parser.add_argument("--no-sklearn", action="store_true", help="skip the references")
    parser.add_argument("--json", type=Path, help="also write the results table as JSON here")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"data file not found: {args.data} (pass --data)")
    kinds = [k for k in args.models.split(",") if k]
    overrides: dict[str, dict[str, Any]] = json.loads(args.params)

    started = time.monotonic()
    builder = SparkSession.builder
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    features, id_col = load_features(spark, args.data)
    test = features.filter(F.col(etl.SPLIT_COL) == "test")
    _log(f"features: {features.count()} rows, {test.count()} test", started)

    results: dict[str, dict[str, float]] = {}
    if not args.no_sklearn:
        frame = features.select(
            id_col,
            etl.LABEL_COL,
            etl.SPLIT_COL,
            etl.FOLD_COL,
            vector_to_array(etl.FEATURES_COL).alias("x"),
        ).toPandas()
        for name, estimator in REFERENCES.items():
            began = time.monotonic()
            oof, test_pred = sklearn_reference(spark, estimator, frame, id_col)
            results[name] = {**score(oof, test_pred), "seconds": time.monotonic() - began}
            _log(f"{name}: {_summary(results[name])}", started)

    # As the ensemble assets do: stacking and voting reuse the base models fitted above them.
    fitted: dict[str, modeling.BaseFit] = {}
    for kind in kinds:
        began = time.monotonic()
        params = {**modeling.DEFAULT_PARAMS[kind], **overrides.get(kind, {})}
        bases = {b: fitted[b] for b in params.get("bases", ()) if b in fitted}
        fit = modeling.fit_model(
            kind, features, params, seed=args.seed, id_col=id_col, fitted_bases=bases
        )
        fit.oof.cache()
        metrics = score(fit.oof, fit.model.transform(test))
        results[kind] = {**metrics, "seconds": time.monotonic() - began}
        if kind in ENSEMBLE_INPUTS:
            fitted[kind] = modeling.BaseFit(fit.model, fit.oof, fit.params)
        else:
            fit.oof.unpersist()
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
        chosen = {k: v for k, v in fit.params.items() if k != "base_params"}
        _log(f"{kind}: {_summary(results[kind])}; params {chosen}", started)

    print(_table(results))
    print(_verdict(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    spark.stop()
    return 0


def _summary(row: dict[str, float]) -> str:
    return (
        f"test ROC-AUC {row['roc_auc']:.4f}, CV ROC-AUC {row['cv_roc_auc']:.4f}, "
        f"{row['seconds']:.0f} s"
    )


def _table(results: dict[str, dict[str, float]]) -> str:
    columns = [
        ("roc_auc", "test ROC-AUC"),
        ("pr_auc", "test PR-AUC"),
        ("accuracy", "test acc"),
        ("f1", "test F1"),
        ("cv_roc_auc", "CV ROC-AUC"),
        ("threshold", "threshold"),
        ("seconds", "seconds"),
    ]
    header = f"{'model':<32}" + "".join(f"{title:>14}" for _, title in columns)
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        cells = "".join(
            f"{row[key]:>14.1f}" if key == "seconds" else f"{row[key]:>14.4f}" for key, _ in columns
        )
        lines.append(f"{name:<32}{cells}")
    return "\n".join(lines)


def _verdict(results: dict[str, dict[str, float]]) -> str:
    ours = {k: v for k, v in results.items() if k in modeling.MODEL_KINDS}
    if not ours:
        return ""
    best = max(ours, key=lambda k: ours[k]["roc_auc"])
    lines = [
        f"best test ROC-AUC: {best} {ours[best]['roc_auc']:.4f} (target >= {TARGET_TEST_AUC})",
        f"best CV ROC-AUC: {max(v['cv_roc_auc'] for v in ours.values()):.4f} "
        f"(target >= {TARGET_CV_AUC})",
    ]
    singles = [k for k in ours if k in modeling.BASE_KINDS]
    if singles:
        top_single = max(singles, key=lambda k: ours[k]["cv_roc_auc"])
        for kind in modeling.ENSEMBLE_KINDS:
            if kind in ours:
                lines.append(
                    f"{kind} vs best single ({top_single}): "
                    f"test {ours[kind]['roc_auc'] - ours[top_single]['roc_auc']:+.4f}, "
                    f"CV {ours[kind]['cv_roc_auc'] - ours[top_single]['cv_roc_auc']:+.4f}"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    sys.exit(main())
