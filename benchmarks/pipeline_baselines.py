"""The comparison runs of benchmarks/pipeline.py: plain PySpark, pandas + scikit-learn, naive.

Run by pipeline.py as `python pipeline_baselines.py {pyspark|pandas|naive} JOB.json`, each in a
fresh process, so its memory and its Spark start-up are its own. JOB.json carries everything taken
from the platform (resolved model parameters, Spark configuration, risk tiers): computed once by
the benchmark, so this module imports no Dagster or MLflow and the drivers' RSS stays honest.
For the same reason heavy imports sit in the functions that use them, and `main` loads just the
chosen run's (`IMPORTS`) before its clock starts: the pandas run never loads Spark.

Each run writes a result JSON: epoch start/end and (start, end) per step, with the step names
of the platform's asset graph, so the benchmark lines the three runs up layer by layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from churn_platform.config import DatasetSpec, load_spec
from churn_platform.core.models.kinds import KINDS
from churn_platform.settings import load_settings

BAGGING_KEYS = ("base", "numModels", "sampleFraction")
MAX_FEATURES = {"auto": "sqrt", "sqrt": "sqrt", "log2": "log2", "all": None, "onethird": 1 / 3}
EPSILON = 1e-6


@dataclass
class Timeline:
    """Wall-clock spans per step, in epoch seconds: the clock of Dagster's event log."""

    steps: dict[str, tuple[float, float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.time()
        yield
        self.steps[name] = (started, time.time())


@dataclass(frozen=True)
class Candidate:
    """A trained model as the leaderboard sees it."""

    kind: str
    model: Any
    threshold: float
    roc_auc: float
    cv_roc_auc: float


def champion_of(candidates: Sequence[Candidate]) -> Candidate:
    """The leaderboard's winner: best test ROC-AUC, then CV mean, then name (leaderboard_rows)."""
    return min(candidates, key=lambda c: (-c.roc_auc, -c.cv_roc_auc, c.kind))


# ---------------------------------------------------------------------------------------------
# Plain PySpark: the platform's own functions, in the assets' order, without the asset graph.


def run_pyspark(job: Mapping[str, Any], spec: DatasetSpec, timeline: Timeline) -> Candidate:
    """Read, clean, features, every model as `train_and_track` fits it, then score the champion.

    Left out, as platform overhead: the warehouse writes of every layer, quarantine output,
    asset checks, content fingerprints, MLflow logging (curves, importances, model artifacts),
    registry and promotion, monitoring and audit. Layers stay in memory instead.
    """
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from churn_platform import etl
    from churn_platform.core import cleaning, evaluation, sources
    from churn_platform.core.features import build_features
    from churn_platform.core.models.fitting import (
        PROBABILITY_COL,
        BaseFit,
        full_model,
        predict,
        training_frame,
    )
    from churn_platform.core.models.training import fit_model

    builder = SparkSession.builder
    for key, value in job["spark_conf"].items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    with timeline.step("raw_customers"):
        read = sources.read_batch(spark, spec, spec.sources, batch="base", batch_order=0)
        raw = read.frame.persist()
        raw.count()
    with timeline.step("cleaned_customers"):
        clean = cleaning.clean_customers(raw, spec)
        cleaned = _in_memory(clean.cleaned)
    with timeline.step("customer_features"):
        built = build_features(cleaned, spec)
        features = _in_memory(built.pipeline.transform(built.features))
    for layer in (read, clean, built):
        layer.release()
    raw.unpersist()
    if job["data_only"]:
        return Candidate("-", None, 0.0, math.nan, math.nan)
    candidates = []
    # As the ensemble assets do: bases trained earlier in the run are reused, not refitted.
    reusable: dict[str, BaseFit] = {}
    with contextlib.ExitStack() as cached:
        with timeline.step("training_sample"):
            capped = etl.cap_training_rows(features, spec, job["train_max_rows"])
            frame = cached.enter_context(training_frame(capped, spec.id_column))
        for kind, params in job["params"].items():
            with timeline.step(f"model_{kind}"):
                bases = {b: reusable[b] for b in params.get("bases", ()) if b in reusable}
                fit = fit_model(kind, frame, params, job["seed"], fitted_bases=bases)
                # The default costs are train_and_track's fallbacks; the "f1" default uses none.
                threshold, _, metrics = evaluation.judge(
                    fit.oof, predict(fit.model, frame), job["threshold_strategy"]
                )
                candidates.append(
                    Candidate(
                        kind,
                        full_model(built.pipeline, fit.model),
                        threshold,
                        metrics["roc_auc"],
                        metrics["cv_roc_auc_mean"],
                    )
                )
                if kind in job["ensemble_inputs"]:
                    reusable[kind] = fit.as_base()
    with timeline.step("champion_model"):
        champion = champion_of(candidates)
    with timeline.step("churn_scores"):
        # assets/scoring.py score_customers, written once as Parquet like the IO manager does.
        scored = champion.model.transform(etl.engineer_features(cleaned, spec))
        probability = F.col(PROBABILITY_COL)
        (high, high_name), (medium, medium_name) = job["risk_tiers"]
        tier = F.when(probability >= high, high_name).when(probability >= medium, medium_name)
        scored.select(
            F.col(spec.id_column),
            probability.alias("churn_probability"),
            (probability >= F.lit(champion.threshold)).cast("int").alias("churn_predicted"),
            tier.otherwise("low").alias("risk_tier"),
            F.lit(champion.kind).alias("model_name"),
            F.lit("1").alias("model_version"),
            F.lit(champion.threshold).alias("threshold"),
        ).write.parquet(job["scores"])
    return champion


def run_naive(job: Mapping[str, Any], spec: DatasetSpec, timeline: Timeline) -> Candidate:
    """The data layers as a naive PySpark script: the floor the platform's layers are held to.

    Read the CSV with a typed schema, drop duplicate ids and rows without a label, engineer and
    encode (the same fitted pipeline the platform stores), write each layer as Parquet. No
    quarantine, line numbers, checks, fingerprints or versioned folders; no training.
    """
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from churn_platform import etl

    builder = SparkSession.builder
    for key, value in job["spark_conf"].items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    out = Path(job["scores"]).parent / "naive"
    header = etl.read_csv_header(Path(job["data"]), spec.sources[0].delimiter)
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
        spark.read.parquet(str(out / "raw")).withColumn(etl.LABEL_COL, label).where(
            F.col(etl.LABEL_COL).isNotNull() & F.col(spec.id_column).isNotNull()
        ).dropDuplicates([spec.id_column]).drop(target.column, *spec.drop).write.parquet(
            str(out / "cleaned")
        )
    with timeline.step("customer_features"):
        cleaned = spark.read.parquet(str(out / "cleaned"))
        table = etl.assign_split(etl.engineer_features(cleaned, spec), spec)
        numeric, categorical = etl.feature_roles(table, spec)
        pipeline = etl.fit_feature_pipeline(
            table.where(F.col(etl.SPLIT_COL) == "train"), numeric, categorical
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


def _in_memory(df: Any) -> Any:
    """A layer that feeds MLlib, computed once, cached, with its lineage cut.

    MLlib plans its input anew for every job it runs; on a merely cached DataFrame that plan is
    the whole read-clean-features lineage, and each fit took 2-3 times as long as on the same
    table read back from Parquet (which is what the platform's steps do). Checkpointed and
    cached, it is as fast as the Parquet copy and stays in memory.
    """
    layer = df.localCheckpoint().persist()
    layer.count()
    return layer


# ---------------------------------------------------------------------------------------------
# pandas + scikit-learn (LightGBM for boosting when installed): the same work on one machine.


def run_pandas(job: Mapping[str, Any], spec: DatasetSpec, timeline: Timeline) -> Candidate:
    """The same layers with pandas and scikit-learn: what a single-machine team would write.

    Splits and folds come from a hash of the customer id, as in the platform (pandas' hash, so
    the rows differ but the proportions match). Models get the Spark models' resolved
    parameters, the same grids tuned once by CV over the folds, the same 5-fold out-of-fold
    predictions for the threshold and the same ensembles over the same bases.
    """
    import pandas as pd

    with timeline.step("raw_customers"):
        # Arrow-backed strings: a few bytes per value, where a Python object per value would
        # need about 30 GB at 10M rows.
        raw = pd.read_csv(spec.sources[0].path, dtype="string[pyarrow]", keep_default_na=False)
    with timeline.step("cleaned_customers"):
        cleaned = _clean(raw, spec)
        del raw
    with timeline.step("customer_features"):
        table = _assign_split(_engineer(cleaned, spec, job["service_columns"]), spec)
        encoder = _encoder(table, spec).fit(table[table["split"] == "train"])
        matrix = _encode(encoder, table)
    if job["data_only"]:
        return Candidate("-", None, 0.0, math.nan, math.nan)
    with timeline.step("training_sample"):
        train = _training_rows(table, spec, job["train_max_rows"])
        x_train, y_train = matrix[train], table["label"].to_numpy()[train]
        folds = table["fold"].to_numpy()[train]
        test = (table["split"] == "test").to_numpy()
        x_test, y_test = matrix[test], table["label"].to_numpy()[test]
        del matrix  # the rows it needs are copied; scoring encodes again, as the platform does
    candidates = []
    reusable: dict[str, tuple[Any, np.ndarray]] = {}
    for kind, params in job["params"].items():
        with timeline.step(f"model_{kind}"):
            model, oof = _fit_model(kind, params, x_train, y_train, folds, job["seed"], reusable)
            if kind in job["ensemble_inputs"]:
                reusable[kind] = (model, oof)
            threshold = _f1_threshold(y_train, oof)
            test_auc = _roc_auc(y_test, model.predict_proba(x_test)[:, 1])
            cv_auc = [_roc_auc(y_train[folds == f], oof[folds == f]) for f in np.unique(folds)]
            candidates.append(Candidate(kind, model, threshold, test_auc, float(np.mean(cv_auc))))
    with timeline.step("champion_model"):
        champion = champion_of(candidates)
    with timeline.step("churn_scores"):
        features = _engineer(cleaned, spec, job["service_columns"])
        probability = champion.model.predict_proba(_encode(encoder, features))[:, 1]
        (high, high_name), (medium, medium_name) = job["risk_tiers"]
        pd.DataFrame(
            {
                spec.id_column: cleaned[spec.id_column].array,
                "churn_probability": probability,
                "churn_predicted": (probability >= champion.threshold).astype(np.int32),
                "risk_tier": np.select(
                    [probability >= high, probability >= medium], [high_name, medium_name], "low"
                ),
                "model_name": champion.kind,
                "model_version": "1",
                "threshold": champion.threshold,
            }
        ).to_parquet(job["scores"], index=False)
    return champion


def _clean(raw: Any, spec: DatasetSpec) -> Any:
    """Trimmed text, blanks as missing, typed numbers; unusable rows and duplicate ids dropped.

    Trims `raw` in place, a column at a time: whole-frame copies would triple the peak memory.
    """
    import pandas as pd

    text = raw
    for column in text.columns:
        trimmed = text[column].str.strip()
        text[column] = trimmed.mask(trimmed.eq(""))
    target = spec.target
    label = text[target.column].map({target.positive: 1, target.negative: 0})
    numbers = {
        c: pd.Series(
            pd.to_numeric(text[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
            index=text.index,
        )
        for c in spec.numeric
    }
    unparseable = np.logical_or.reduce([text[c].notna() & numbers[c].isna() for c in spec.numeric])
    usable = text[spec.id_column].notna() & label.notna() & ~unparseable
    cleaned = text.loc[usable, [spec.id_column, *spec.categorical]].assign(
        label=label[usable].astype(np.int32), **{c: v[usable] for c, v in numbers.items()}
    )
    return cleaned[~cleaned[spec.id_column].duplicated(keep="last")].reset_index(drop=True)


def _engineer(cleaned: Any, spec: DatasetSpec, service_columns: Sequence[str]) -> Any:
    """etl.engineer_features in pandas: the engineered columns the spec asks for."""
    tenure, payment = cleaned["tenure"], cleaned["PaymentMethod"]
    internet = cleaned["InternetService"]
    builders: dict[str, Callable[[], Any]] = {
        "tenure_bucket": lambda: np.select(
            [tenure.isna(), tenure < 6, tenure < 12, tenure < 24, tenure < 48],
            ["unknown", "0-6m", "6-12m", "1-2y", "2-4y"],
            "4y+",
        ),
        "num_services": lambda: (
            (internet.notna() & (internet != "No")).astype(float)
            + sum((cleaned[c] == "Yes").astype(float) for c in service_columns)
        ),
        "charges_per_tenure_month": lambda: cleaned["TotalCharges"] / tenure.clip(lower=1.0),
        "contract_payment": lambda: cleaned["Contract"] + "|" + payment,
        "auto_pay": lambda: payment.str.lower().str.contains("automatic", na=False).astype(float),
    }
    engineered = cleaned.assign(**{name: builders[name]() for name in spec.engineered})
    # Text columns as categories: one-hot encoding then sees a few shared strings per column.
    text = [c for c, t in engineered.dtypes.items() if c != spec.id_column and t.kind == "O"]
    return engineered.astype(dict.fromkeys(text, "category"))


def _unit_hash(ids: Any, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per id, stable for the id's whole life."""
    import pandas as pd

    hashed = pd.util.hash_pandas_object(salt + ids, index=False).to_numpy()
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _assign_split(df: Any, spec: DatasetSpec) -> Any:
    ids = df[spec.id_column]
    is_test = _unit_hash(ids, f"split:{spec.seed}") < spec.test_fraction
    fold = np.floor(_unit_hash(ids, f"fold:{spec.seed}") * spec.folds).astype(np.int32)
    return df.assign(split=np.where(is_test, "test", "train"), fold=np.where(is_test, -1, fold))


def _training_rows(table: Any, spec: DatasetSpec, max_rows: int) -> np.ndarray:
    """Mask of training rows, hash-sampled down to about max_rows like etl.cap_training_rows."""
    train = (table["split"] == "train").to_numpy()
    if 0 < max_rows < train.sum():
        keep = _unit_hash(table[spec.id_column], f"sample:{spec.seed}") < max_rows / train.sum()
        train &= keep
    return train


def _encoder(table: Any, spec: DatasetSpec) -> Any:
    """Median imputation and one-hot encoding, like etl.fit_feature_pipeline."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    skip = {spec.id_column, "label", "split", "fold"}
    columns = [c for c in table.columns if c not in skip]
    numeric = [c for c in columns if table[c].dtype.kind in "fiu"]
    categorical = [c for c in columns if c not in numeric]
    return ColumnTransformer(
        [
            ("numeric", SimpleImputer(strategy="median"), numeric),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32),
                categorical,
            ),
        ]
    )


def _encode(encoder: Any, table: Any, chunk_rows: int = 1_000_000) -> np.ndarray:
    """The encoded feature matrix (float32), built a million rows at a time: transforming all
    rows at once would hold float64 copies of every column (about 9 GB more at 10M rows)."""
    matrix = np.empty((len(table), len(encoder.get_feature_names_out())), dtype=np.float32)
    for start in range(0, len(table), chunk_rows):
        stop = start + chunk_rows
        matrix[start:stop] = encoder.transform(table.iloc[start:stop])
    return matrix


def _single(family: str, params: Mapping[str, Any], rows: int, seed: int) -> Any:
    """The scikit-learn (or LightGBM) learner with a Spark learner's fixed parameters."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    leaf = int(params.get("minInstancesPerNode", 1))
    if family == "logistic_regression":
        elastic = float(params.get("elasticNetParam", 0.0))
        # Spark minimises mean loss + regParam/2 |w|^2 on standardised features: C = 1/(reg n).
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(
                C=1.0 / (float(params["regParam"]) * rows),
                l1_ratio=elastic,
                solver="saga" if elastic else "lbfgs",
                max_iter=1000,
            ),
        )
    if family == "decision_tree":
        return DecisionTreeClassifier(
            max_depth=int(params.get("maxDepth", 5)), min_samples_leaf=leaf, random_state=seed
        )
    if family == "random_forest":
        return RandomForestClassifier(
            n_estimators=int(params.get("numTrees", 20)),
            max_depth=int(params.get("maxDepth", 5)),
            min_samples_leaf=leaf,
            max_features=MAX_FEATURES[params.get("featureSubsetStrategy", "auto")],
            n_jobs=-1,
            random_state=seed,
        )
    if family == "gbt":
        return _boosting(params, seed)
    raise ValueError(f"no scikit-learn stand-in for the Spark learner {family!r}")


def _boosting(params: Mapping[str, Any], seed: int) -> Any:
    """LightGBM when installed (what a pandas user reaches for), else HistGradientBoosting."""
    rounds, depth = int(params.get("maxIter", 20)), int(params.get("maxDepth", 5))
    rate = float(params.get("stepSize", 0.1))
    try:
        from lightgbm import LGBMClassifier
    except ImportError:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=rounds,
            max_depth=depth,
            learning_rate=rate,
            early_stopping=False,
            random_state=seed,
        )
    return LGBMClassifier(
        n_estimators=rounds,
        max_depth=depth,
        num_leaves=2**depth,
        learning_rate=rate,
        subsample=float(params.get("subsamplingRate", 1.0)),
        subsample_freq=1,
        random_state=seed,
        verbose=-1,
    )


def _splits(folds: np.ndarray) -> Any:
    from sklearn.model_selection import PredefinedSplit

    return PredefinedSplit(folds)


def _learner(
    kind: str, params: Mapping[str, Any], x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int
) -> Any:
    """A base learner; list-valued parameters are tuned once by CV over the folds, as in Spark."""
    from sklearn.ensemble import BaggingClassifier
    from sklearn.model_selection import ParameterGrid, cross_val_score

    family = KINDS[kind].family
    if family == "bagging":
        learner = {k: v for k, v in params.items() if k not in BAGGING_KEYS}
        return BaggingClassifier(
            _single(params["base"], learner, len(y), seed),
            n_estimators=int(params["numModels"]),
            max_samples=float(params.get("sampleFraction", 1.0)),
            random_state=seed,
        )
    grid = {k: v for k, v in params.items() if isinstance(v, list)}
    if grid:
        best = max(
            ParameterGrid(grid),
            key=lambda chosen: cross_val_score(
                _single(family, {**params, **chosen}, len(y), seed),
                x,
                y,
                cv=_splits(folds),
                scoring="roc_auc",
            ).mean(),
        )
        params = {**params, **best}
    return _single(family, params, len(y), seed)


def _fit_base(
    kind: str, params: Mapping[str, Any], x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int
) -> tuple[Any, np.ndarray]:
    """The learner fitted on all training rows, and its out-of-fold probabilities."""
    from sklearn.model_selection import cross_val_predict

    learner = _learner(kind, params, x, y, folds, seed)
    oof = cross_val_predict(learner, x, y, cv=_splits(folds), method="predict_proba")[:, 1]
    return learner.fit(x, y), oof


class Ensemble:
    """Bases fitted on all training rows under a combiner of their probabilities."""

    def __init__(self, bases: Sequence[Any], head: Callable[[np.ndarray], np.ndarray]) -> None:
        self.bases, self.head = bases, head

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = self.head(np.column_stack([b.predict_proba(x)[:, 1] for b in self.bases]))
        return np.column_stack([1.0 - p, p])


def _fit_model(
    kind: str,
    params: Mapping[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    seed: int,
    reusable: Mapping[str, tuple[Any, np.ndarray]],
) -> tuple[Any, np.ndarray]:
    """core.models.training.fit_model's work: the final model and its out-of-fold probabilities.

    An ensemble takes the bases already in `reusable` (model, OOF) and fits the others.
    """
    if "bases" not in params:
        return _fit_base(kind, params, x, y, folds, seed)
    fitted = [
        reusable[b] if b in reusable else _fit_base(b, params["base_params"][b], x, y, folds, seed)
        for b in params["bases"]
    ]
    base_oof = np.column_stack([oof for _, oof in fitted])
    if kind == "stacking":
        reg = float(params["regParam"])

        def fit_head(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
            return _stacking_head(base_oof[rows], y[rows], reg)
    else:
        step = float(params["weightStep"])

        def fit_head(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
            return _voting_head(base_oof[rows], y[rows], step)

    oof = np.empty(len(y))
    for fold in np.unique(folds):
        oof[folds == fold] = fit_head(folds != fold)(base_oof[folds == fold])
    return Ensemble([model for model, _ in fitted], fit_head(np.ones(len(y), bool))), oof


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPSILON, 1.0 - EPSILON)
    return np.log(p / (1.0 - p))


def _stacking_head(z: np.ndarray, y: np.ndarray, reg: float) -> Callable[[np.ndarray], np.ndarray]:
    """A logistic regression on the bases' log-odds."""
    from sklearn.linear_model import LogisticRegression

    meta = LogisticRegression(C=1.0 / (reg * len(y))).fit(_logit(z), y)
    return lambda probabilities: meta.predict_proba(_logit(probabilities))[:, 1]


def _voting_head(z: np.ndarray, y: np.ndarray, step: float) -> Callable[[np.ndarray], np.ndarray]:
    """Platt-calibrate each base, then the simplex weights with the lowest log loss."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    platt = [LogisticRegression(C=1e6).fit(_logit(z[:, [j]]), y) for j in range(z.shape[1])]

    def calibrated(probabilities: np.ndarray) -> np.ndarray:
        columns = [
            m.predict_proba(_logit(probabilities[:, [j]]))[:, 1] for j, m in enumerate(platt)
        ]
        return np.column_stack(columns)

    sample = calibrated(z)
    units = round(1.0 / step)  # the simplex grid of core.models.ensembles.simplex_grid
    grid = [
        np.diff([-1, *cuts, units + z.shape[1] - 1]) - 1
        for cuts in itertools.combinations(range(units + z.shape[1] - 1), z.shape[1] - 1)
    ]
    weights = (
        min(grid, key=lambda w: log_loss(y, np.clip(sample @ (w / units), EPSILON, 1 - EPSILON)))
        / units
    )
    return lambda probabilities: calibrated(probabilities) @ weights


def _f1_threshold(y: np.ndarray, probability: np.ndarray) -> float:
    """The OOF score maximising F1; ties go to the highest threshold, as in choose_threshold."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, probability)
    f1 = (2 * precision * recall / np.maximum(precision + recall, EPSILON))[:-1]
    return float(thresholds[len(f1) - 1 - int(np.argmax(f1[::-1]))])


def _roc_auc(y: np.ndarray, probability: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, probability))


# What each run imports, loaded before its clock starts; each run loads only its own stack, so
# its driver's RSS is that stack's.
IMPORTS = {
    "pyspark": (
        "pyspark.sql",
        "churn_platform.core.cleaning",
        "churn_platform.core.models.training",
    ),
    "naive": ("pyspark.sql", "churn_platform.etl", "pyspark.ml"),
    "pandas": (
        "pandas",
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
