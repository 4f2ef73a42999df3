"""Accuracy benchmark: every churn model on each public dataset beside scikit-learn references.

For each dataset of `--data-dir` (default ../shared/data next to the repository) with a spec
(`DATASETS`: the platform's Telco spec, and benchmarks/specs/ for the others), the platform's own
data layers (read, clean, features) give the split and folds. Each model kind is fitted with
`fit_model` on that training frame and judged the one way every model is (threshold by F1 out
of fold, metrics on the test split); ensembles reuse the bases fitted before them, as the asset
graph does; each ensemble is also compared with its best base on CV. scikit-learn's
LogisticRegression and a HistGradientBoostingClassifier tuned on the same folds' mean ROC-AUC
get the same feature vectors, folds and metric code (benchmarks/sklearn_references.py). The
champion is the promotion candidate: the best test ROC-AUC among the models that earn their
place (an ensemble must beat its best base on CV).

    .venv/bin/python benchmarks/accuracy.py [--data-dir DIR] [--datasets telco] [--models gbt]
        [--variants '{"stacking_tuned": {"kind": "stacking", "params": {...}}}'] [--spread 20]
"""

from __future__ import annotations

import argparse
import csv
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

from pyspark.sql import SparkSession
from sklearn_references import References, grid_size, metrics
from training import jobs_so_far, jvm_cpu_seconds

from churn_platform.config import load_spec
from churn_platform.core import cleaning, evaluation, sources
from churn_platform.core.features import build_features
from churn_platform.core.models.ensembles import versus_best_base
from churn_platform.core.models.fitting import (
    DEFAULT_SEED,
    BaseFit,
    FitResult,
    TrainingFrame,
    predict,
    training_frame,
)
from churn_platform.core.models.kinds import BASE_KINDS, MODEL_KINDS
from churn_platform.core.models.training import fit_model
from churn_platform.core.spark_setup import spark_conf
from churn_platform.settings import DEFAULT_SPEC, load_settings

REPO = Path(__file__).resolve().parents[1]
SPECS = Path(__file__).resolve().parent / "specs"
GENERATED_ID = "customer_id"
LOGISTIC = "sklearn_logistic_regression"
HGB = "sklearn_hgb_tuned"
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
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    spread: int = 0,
    references: bool = True,
) -> dict[str, Any]:
    """Every model and both references on one dataset; its results and notes.

    `variants` ({label: {"kind": k, "params": {...}}}) are fitted after the kinds on the same
    frame, reusing their base fits: other settings of a kind compared at the cost of a head.
    """
    variants = variants or {}
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
            runs = [(kind, kind, overrides.get(kind)) for kind in kinds]
            runs += [(label, v["kind"], v.get("params")) for label, v in variants.items()]
            for label, kind, params in runs:
                began, cpu, jobs = time.monotonic(), jvm_cpu_seconds(), jobs_so_far(spark)
                fit = fit_model(kind, frame, params, seed, fitted_bases=fitted)
                judged = metrics(fit.oof, predict(fit.model, frame))
                results[label] = {
                    **judged,
                    **_versus_best_base(fit),
                    "seconds": time.monotonic() - began,
                    "cpu_seconds": jvm_cpu_seconds() - cpu,
                    "jobs": jobs_so_far(spark) - jobs,
                    "params": _plain(fit.params),
                }
                if kind in BASE_KINDS and label == kind:
                    fitted[kind] = fit.as_base()
                _log(f"{dataset.name} {label}: {_summary(results[label])}", started)
            if not references:
                return {"results": results, "notes": notes}
            refs, prep = timed(lambda: References(frame))
        row, seconds = timed(refs.logistic)
        results[LOGISTIC] = {**row, "seconds": seconds + prep, "cpu_seconds": 0.0, "jobs": 0}
        (row, chosen), seconds = timed(refs.tuned_hgb)
        results[HGB] = {**row, "seconds": seconds + prep, "cpu_seconds": 0.0, "jobs": 0}
        notes.append(f"{HGB}: {chosen}, best of {grid_size()} on the folds' mean ROC-AUC")
        if spread:
            notes.append(refs.split_spread(spread, seed))
        _log(f"{dataset.name} references done", started)
    finally:
        raw.release()
    return {"results": results, "notes": notes}


def _versus_best_base(fit: FitResult) -> dict[str, Any]:
    """An ensemble's best base on CV and its gain over it, as the leaderboard shows them."""
    versus = versus_best_base(fit)
    if versus is None:
        return {}
    base, base_cv, gain = versus
    return {"best_base": base, "best_base_cv_roc_auc": base_cv, "cv_gain_over_best_base": gain}


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


def champion(results: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The promotion candidate: best test ROC-AUC, then CV mean, then name (the order of
    leaderboard_rows) among the model kinds that earn their place (`promotion_candidate`)."""
    ours = [k for k in results if k in MODEL_KINDS]
    if not ours:
        return None
    ranked = sorted(ours, key=lambda k: (-results[k]["roc_auc"], -results[k]["cv_roc_auc"], k))
    rows = [{"model": k, "cv_roc_auc_mean": results[k]["cv_roc_auc"], **results[k]} for k in ranked]
    return evaluation.promotion_candidate(rows)[0]


def _summary(row: Mapping[str, Any]) -> str:
    text = f"test AUC {row['roc_auc']:.4f}, CV AUC {row['cv_roc_auc']:.4f}, {row['seconds']:.0f} s"
    if "best_base" in row:
        text += (
            f"; best base {row['best_base']} CV {row['best_base_cv_roc_auc']:.4f} "
            f"({row['cv_gain_over_best_base']:+.4f})"
        )
    return text


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
    versus = [(model, row) for model, row in results.items() if "best_base" in row]
    if versus:
        lines.append("   ensembles against their best base on CV ROC-AUC:")
        lines += [
            f"   {model:<27}{row['cv_roc_auc']:>8.4f} vs {row['best_base']:<20}"
            f"{row['best_base_cv_roc_auc']:>8.4f} {row['cv_gain_over_best_base']:>+8.4f}"
            for model, row in versus
        ]
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
        cells = [results.get(best) if best else None, results.get(LOGISTIC), results.get(HGB)]
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
    parser.add_argument(
        "--variants",
        default="{}",
        help='JSON {"label": {"kind": "stacking", "params": {...}}}: more settings of a kind, '
        "fitted after --models on their base fits",
    )
    parser.add_argument(
        "--spread",
        type=int,
        default=0,
        help="N: scikit-learn's LogisticRegression CV on N other random splits and fold "
        "assignments of the same rows (how much the CV figure moves with the split)",
    )
    parser.add_argument(
        "--no-references", action="store_true", help="the platform's models only (exploring)"
    )
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
    variants: dict[str, dict[str, Any]] = json.loads(args.variants)
    clashing = sorted(set(variants) & set(MODEL_KINDS))
    bad = sorted(k for k, v in variants.items() if v.get("kind") not in MODEL_KINDS)
    if clashing or bad:
        parser.error(f"--variants: labels must not be kinds ({clashing}), kinds known ({bad})")

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
                    spark,
                    dataset,
                    home,
                    kinds,
                    overrides,
                    args.seed,
                    started,
                    variants,
                    args.spread,
                    not args.no_references,
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
