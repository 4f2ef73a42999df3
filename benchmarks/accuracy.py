"""Accuracy benchmark: every churn model on each public dataset beside scikit-learn references.

For each dataset of `--data-dir` (default ../shared/data next to the repository) with a spec
(`DATASETS`: the platform's Telco spec, and benchmarks/specs/ for the others), the platform's own
data layers (read, clean, features) give the split and folds. Each model kind is fitted with
`fit_model` on that training frame and judged the one way every model is (threshold by F1 out
of fold, metrics on the test split); ensembles reuse the bases fitted before them, as the asset
graph does. scikit-learn's LogisticRegression and a HistGradientBoostingClassifier tuned on the
same folds' mean ROC-AUC get the same feature vectors, folds and metric code. The champion is
the model with the best test ROC-AUC, as the leaderboard ranks.

    .venv/bin/python benchmarks/accuracy.py [--data-dir DIR] [--datasets telco] [--models gbt]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from sklearn.base import ClassifierMixin, clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from training import jobs_so_far, jvm_cpu_seconds

from churn_platform.config import load_spec
from churn_platform.core import cleaning, evaluation, sources
from churn_platform.core.columns import FEATURES_COL, FOLD_COL, LABEL_COL
from churn_platform.core.features import build_features
from churn_platform.core.models.fitting import (
    DEFAULT_SEED,
    PROBABILITY_COL,
    BaseFit,
    TrainingFrame,
    predict,
    training_frame,
)
from churn_platform.core.models.kinds import BASE_KINDS, MODEL_KINDS
from churn_platform.core.models.training import fit_model
from churn_platform.resources import spark_conf
from churn_platform.settings import DEFAULT_SPEC, load_settings

REPO = Path(__file__).resolve().parents[1]
SPECS = Path(__file__).resolve().parent / "specs"
GENERATED_ID = "customer_id"
LOGISTIC = "sklearn_logistic_regression"
HGB = "sklearn_hgb_tuned"
HGB_GRID = {
    "learning_rate": [0.05, 0.1],
    "max_leaf_nodes": [7, 15, 31],
    "l2_regularization": [0.0, 1.0],
}
COLUMNS = (
    ("roc_auc", "test AUC"),
    ("cv_roc_auc", "CV AUC"),
    ("pr_auc", "test PR"),
    ("cv_pr_auc", "CV PR"),
    ("brier", "test Brier"),
    ("cv_brier", "CV Brier"),
    ("f1", "test F1"),
    ("seconds", "seconds"),
    ("cpu_seconds", "JVM CPU s"),
    ("jobs", "jobs"),
)
WHOLE = ("seconds", "cpu_seconds", "jobs")


@dataclass(frozen=True)
class Dataset:
    """A dataset of the shared folder: its spec and the files that make its one input CSV.

    Several files, or a dataset without an id column, are concatenated into `target` with a
    generated `customer_id` (`<file tag>-<line>`): the spec cannot express a given split.
    """

    name: str
    spec: Path
    files: tuple[str, ...]
    target: str
    generated_id: bool = False

    @property
    def given_split(self) -> bool:
        return len(self.files) > 1


DATASETS = (
    Dataset("telco", DEFAULT_SPEC, ("telco_churn.csv",), "telco_churn.csv"),
    Dataset(
        "telco_ibm_v11",
        SPECS / "telco_ibm_v11.yaml",
        ("telco_churn_ibm_v11.csv",),
        "telco_churn_ibm_v11.csv",
    ),
    Dataset(
        "telecom_bigml",
        SPECS / "telecom_bigml.yaml",
        ("telecom_churn_bigml_80.csv", "telecom_churn_bigml_20.csv"),
        "telecom_churn_bigml.csv",
        generated_id=True,
    ),
)


def _log(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)


def stage_input(dataset: Dataset, data_dir: Path, home: Path) -> None:
    """Put the dataset's input CSV where its spec reads it: `<home>/data/<target>`."""
    target = home / "data" / dataset.target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not dataset.generated_id:
        shutil.copyfile(data_dir / dataset.files[0], target)
        return
    with target.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        header: list[str] | None = None
        for name in dataset.files:
            tag = "".join(Path(name).stem.split("_")[-2:])
            with (data_dir / name).open(newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                columns = next(reader)
                if header is None:
                    header = columns
                    writer.writerow([GENERATED_ID, *header])
                elif columns != header:
                    raise ValueError(f"{name}: header differs from {dataset.files[0]}'s")
                for line, row in enumerate(reader, start=2):
                    writer.writerow([f"{tag}-{line:04d}", *row])


def metrics(oof: Mapping[str, Any], test: Mapping[str, Any]) -> dict[str, float]:
    """Test metrics at the OOF-F1 threshold; CV ROC-AUC, PR-AUC and Brier as fold means."""
    threshold, _, judged = evaluation.judge(oof, test)
    labels, scores = np.asarray(oof[LABEL_COL]), np.asarray(oof[PROBABILITY_COL])
    folds = np.asarray(oof[FOLD_COL])
    pr, brier = [], []
    for fold in np.unique(folds):
        rows = folds == fold
        pr.append(evaluation.ranking_metrics(labels[rows], scores[rows])[1])
        brier.append(float(np.mean((scores[rows] - labels[rows]) ** 2)))
    return {
        **judged,
        "threshold": threshold,
        "cv_roc_auc": judged["cv_roc_auc_mean"],
        "cv_pr_auc": float(np.mean(pr)),
        "cv_brier": float(np.mean(brier)),
    }


def vectors(frame: DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature matrix, labels and folds of a training-frame split, on the driver."""
    data = frame.select(LABEL_COL, FOLD_COL, vector_to_array(FEATURES_COL).alias("x")).toPandas()
    return np.vstack(data["x"].to_numpy()), data[LABEL_COL].to_numpy(), data[FOLD_COL].to_numpy()


class References:
    """scikit-learn models on the platform's very vectors, split and folds."""

    def __init__(self, frame: TrainingFrame) -> None:
        self.x, self.y, self.fold = vectors(frame.train)
        self.x_test, self.y_test, test_fold = vectors(frame.test)
        self.test = {LABEL_COL: self.y_test, FOLD_COL: test_fold}

    def out_of_fold(self, estimator: ClassifierMixin) -> np.ndarray:
        oof = np.zeros(len(self.y))
        for fold in np.unique(self.fold):
            held_out = self.fold == fold
            model = clone(estimator).fit(self.x[~held_out], self.y[~held_out])
            oof[held_out] = model.predict_proba(self.x[held_out])[:, 1]
        return oof

    def judged(self, estimator: ClassifierMixin, oof: np.ndarray) -> dict[str, float]:
        """Metrics of the estimator refitted on all training rows, with its OOF predictions."""
        model = clone(estimator).fit(self.x, self.y)
        test = {**self.test, PROBABILITY_COL: model.predict_proba(self.x_test)[:, 1]}
        return metrics({LABEL_COL: self.y, FOLD_COL: self.fold, PROBABILITY_COL: oof}, test)

    def logistic(self) -> dict[str, float]:
        estimator = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        return self.judged(estimator, self.out_of_fold(estimator))

    def tuned_hgb(self) -> tuple[dict[str, float], dict[str, Any]]:
        """The grid candidate with the best mean fold ROC-AUC; its fold fits give the OOF."""
        grid = [
            dict(zip(HGB_GRID, values, strict=True))
            for values in itertools.product(*HGB_GRID.values())
        ]
        oofs = [self.out_of_fold(self._hgb(params)) for params in grid]
        scores = [
            np.mean(list(evaluation.roc_auc_by_group(self.y, oof, self.fold).values()))
            for oof in oofs
        ]
        best = int(np.argmax(scores))
        return self.judged(self._hgb(grid[best]), oofs[best]), grid[best]

    @staticmethod
    def _hgb(params: Mapping[str, Any]) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            max_iter=200, early_stopping=False, random_state=0, **params
        )


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    began = time.monotonic()
    return fn(), time.monotonic() - began


def run_dataset(
    spark: SparkSession,
    dataset: Dataset,
    home: Path,
    kinds: list[str],
    overrides: Mapping[str, Mapping[str, Any]],
    seed: int,
    started: float,
) -> dict[str, Any]:
    """Every model and both references on one dataset; its results and notes."""
    spec = load_spec(dataset.spec, home)
    raw = sources.read_batch(spark, spec, spec.sources, "benchmark", 0)
    clean = cleaning.clean_customers(raw.frame, spec)
    built = build_features(clean.cleaned, spec)
    results: dict[str, dict[str, float]] = {}
    notes = [
        f"rows in {clean.counts['rows_in']}, cleaned {clean.counts['rows_out']}, "
        f"quarantined {clean.counts['rows_quarantined']} {clean.by_reason or ''}".rstrip()
    ]
    try:
        with training_frame(built.features, spec.id_column, built.pipeline) as frame:
            notes.append(
                f"split (hash of {spec.id_column}): {frame.train_rows} train in "
                f"{len(frame.folds)} folds, {frame.test_rows} test; "
                f"{built.vector_size} features"
            )
            if dataset.given_split:
                notes.append(_given_split_note(dataset, frame))
            fitted: dict[str, BaseFit] = {}
            for kind in kinds:
                began, cpu, jobs = time.monotonic(), jvm_cpu_seconds(), jobs_so_far(spark)
                fit = fit_model(kind, frame, overrides.get(kind), seed, fitted_bases=fitted)
                judged = metrics(fit.oof, predict(fit.model, frame))
                results[kind] = {
                    **judged,
                    "seconds": time.monotonic() - began,
                    "cpu_seconds": jvm_cpu_seconds() - cpu,
                    "jobs": jobs_so_far(spark) - jobs,
                    "params": _plain(fit.params),
                }
                if kind in BASE_KINDS:
                    fitted[kind] = fit.as_base()
                _log(f"{dataset.name} {kind}: {_summary(results[kind])}", started)
            refs, prep = timed(lambda: References(frame))
        row, seconds = timed(refs.logistic)
        results[LOGISTIC] = {**row, "seconds": seconds + prep, "cpu_seconds": 0.0, "jobs": 0}
        (row, chosen), seconds = timed(refs.tuned_hgb)
        results[HGB] = {**row, "seconds": seconds + prep, "cpu_seconds": 0.0, "jobs": 0}
        notes.append(f"{HGB}: {chosen}, best of {_grid_size()} on the folds' mean ROC-AUC")
        _log(f"{dataset.name} references done", started)
    finally:
        raw.release()
    return {"results": results, "notes": notes}


def _given_split_note(dataset: Dataset, frame: TrainingFrame) -> str:
    test_ids = frame.test.select(frame.id_col).toPandas()[frame.id_col]
    tags = test_ids.str.split("-").str[0].value_counts().to_dict()
    return (
        f"given split ({' / '.join(dataset.files)}) not expressible in the spec: files "
        f"concatenated, the platform's hash split decides (test rows by file: {tags})"
    )


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    """The fitted parameters as JSON-safe values (the weights of a stacking head are floats)."""
    return json.loads(json.dumps(params, default=str))


def _grid_size() -> int:
    return int(np.prod([len(v) for v in HGB_GRID.values()]))


def champion(results: Mapping[str, Mapping[str, float]]) -> str | None:
    """Best test ROC-AUC, then CV mean, then name: the order of leaderboard_rows."""
    ours = [k for k in results if k in MODEL_KINDS]
    if not ours:
        return None
    return min(ours, key=lambda k: (-results[k]["roc_auc"], -results[k]["cv_roc_auc"], k))


def _summary(row: Mapping[str, float]) -> str:
    return f"test AUC {row['roc_auc']:.4f}, CV AUC {row['cv_roc_auc']:.4f}, {row['seconds']:.0f} s"


def table(name: str, outcome: Mapping[str, Any]) -> str:
    results = outcome["results"]
    best = champion(results)
    header = f"{'model':<30}" + "".join(f"{title:>11}" for _, title in COLUMNS)
    lines = [
        f"\n== {name}",
        *(f"   {note}" for note in outcome["notes"]),
        header,
        "-" * len(header),
    ]
    for model, row in results.items():
        label = f"{model} (champion)" if model == best else model
        cells = "".join(
            f"{row[key]:>11.1f}" if key in WHOLE else f"{row[key]:>11.4f}" for key, _ in COLUMNS
        )
        lines.append(f"{label:<30}{cells}")
    return "\n".join(lines)


def overview(outcomes: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per dataset: the champion's test and CV ROC-AUC beside both references."""
    header = (
        f"{'dataset':<16}{'champion':<22}{'test AUC':>10}{'CV AUC':>9}"
        f"{'LR test':>9}{'LR CV':>8}{'HGB test':>10}{'HGB CV':>8}"
    )
    lines = ["\n== champions (test ROC-AUC) beside scikit-learn", header, "-" * len(header)]
    for name, outcome in outcomes.items():
        results = outcome["results"]
        best = champion(results)
        cells = [(results[best] if best else None), results[LOGISTIC], results[HGB]]
        numbers = "".join(
            f"{row['roc_auc']:>{w}.4f}{row['cv_roc_auc']:>{v}.4f}" if row else f"{'-':>{w + v}}"
            for row, (w, v) in zip(cells, ((10, 9), (9, 8), (10, 8)), strict=True)
        )
        lines.append(f"{name:<16}{best or '-':<22}{numbers}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--datasets", default=",".join(d.name for d in DATASETS), help="comma list, run in order"
    )
    parser.add_argument("--models", default=",".join(MODEL_KINDS), help="comma list")
    parser.add_argument("--params", default="{}", help='JSON {"kind": {param: value}} overrides')
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"data folder not found: {args.data_dir} (pass --data-dir)")
    kinds = [k for k in args.models.split(",") if k]
    unknown = sorted(set(kinds) - set(MODEL_KINDS))
    if unknown or not kinds:
        parser.error(f"--models: unknown or no model kinds {unknown}; choose from {MODEL_KINDS}")
    by_name = {d.name: d for d in DATASETS}
    names = [n for n in args.datasets.split(",") if n]
    if set(names) - set(by_name) or not names:
        parser.error(f"--datasets: choose from {', '.join(by_name)}")
    wanted = [by_name[n] for n in names]
    covered = {f for d in DATASETS for f in d.files}
    for path in sorted(args.data_dir.glob("*.csv")):
        if path.name not in covered:
            print(f"note: {path.name} has no spec in DATASETS: skipped", file=sys.stderr)
    overrides: dict[str, dict[str, Any]] = json.loads(args.params)

    started = time.monotonic()
    outcomes: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="churn-accuracy-") as tmp:
        home = Path(tmp)
        builder = SparkSession.builder
        for key, value in spark_conf(load_settings({"CHURN_HOME": tmp})).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        try:
            for dataset in wanted:
                missing = [f for f in dataset.files if not (args.data_dir / f).is_file()]
                if missing:
                    print(f"note: {dataset.name} skipped, missing {missing}", file=sys.stderr)
                    continue
                stage_input(dataset, args.data_dir, home)
                outcomes[dataset.name] = run_dataset(
                    spark, dataset, home, kinds, overrides, args.seed, started
                )
                print(table(dataset.name, outcomes[dataset.name]), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(outcomes, indent=2, sort_keys=True))
        finally:
            spark.stop()
    print(overview(outcomes))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    sys.exit(main())
