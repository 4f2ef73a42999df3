"""The comparison runs of benchmarks/pipeline.py: plain PySpark, pandas + scikit-learn, naive.

Run by pipeline.py as `python pipeline_baselines.py {pyspark|pandas|naive} JOB.json`, each in a
fresh process, so its memory and its Spark start-up are its own. JOB.json carries everything
taken from the platform (resolved model parameters, Spark configuration, scoring policy):
computed once by the benchmark, so this module imports no Dagster or MLflow and the drivers'
RSS stays honest.
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
from churn_platform.core.models.kinds import KINDS, model_key
from churn_platform.settings import load_settings

BAGGING_KEYS = ("base", "numModels", "sampleFraction")
MAX_FEATURES = {"auto": "sqrt", "sqrt": "sqrt", "log2": "log2", "all": None, "onethird": 1 / 3}
EPSILON = 1e-6
# The pyspark run's layers, each a plain Parquet folder beside its scores.
LAYERS = ("raw", "cleaned", "quarantined", "features")
# core.reasons' settings, repeated: importing it would load PySpark into the pandas run.
TOP_REASONS = 3
SURROGATE_MAX_ROWS = 200_000
SURROGATE_REG_PARAM = 1e-3
LOGIT_CLIP = 1e-3


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


def _spark(job: Mapping[str, Any]) -> Any:
    """A SparkSession with the platform's configuration for this run (from JOB.json)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in job["spark_conf"].items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


# ---------------------------------------------------------------------------------------------
# Plain PySpark: the platform's own functions, in the assets' order, without the asset graph.


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
            if not KINDS[kind].is_ensemble:
                reusable[kind] = (model, oof)
            threshold = _f1_threshold(y_train, oof)
            test_auc = _roc_auc(y_test, model.predict_proba(x_test)[:, 1])
            cv_auc = [_roc_auc(y_train[folds == f], oof[folds == f]) for f in np.unique(folds)]
            candidates.append(Candidate(kind, model, threshold, test_auc, float(np.mean(cv_auc))))
    with timeline.step("champion_model"):
        champion = champion_of(candidates)
    with timeline.step("churn_scores"):
        _score(job, spec, champion, encoder, cleaned, table)
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
    # Unparseable (NaN after coercion), non-finite and out-of-range numbers, as in cleaning.
    bad = [text[c].notna() & ~np.isfinite(numbers[c]) for c in spec.numeric]
    for c, (low, high) in spec.ranges.items():
        bad += [numbers[c] < low] if low is not None else []
        bad += [numbers[c] > high] if high is not None else []
    usable = text[spec.id_column].notna() & label.notna() & ~np.logical_or.reduce(bad)
    cleaned = text.loc[usable, [spec.id_column, *spec.categorical]].assign(
        label=label[usable].astype(np.int32), **{c: v[usable] for c, v in numbers.items()}
    )
    return cleaned[~cleaned[spec.id_column].duplicated(keep="last")].reset_index(drop=True)


def _engineer(cleaned: Any, spec: DatasetSpec, service_columns: Sequence[str]) -> Any:
    """core.features.engineer_features in pandas: the engineered columns the spec asks for."""
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
    """Training rows, hash-sampled down to about max_rows like core.features.cap_training_rows."""
    train = (table["split"] == "train").to_numpy()
    if 0 < max_rows < train.sum():
        keep = _unit_hash(table[spec.id_column], f"sample:{spec.seed}") < max_rows / train.sum()
        train &= keep
    return train


def _encoder(table: Any, spec: DatasetSpec) -> Any:
    """Median imputation and one-hot encoding, like core.features.fit_feature_pipeline."""
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


def _score(
    job: Mapping[str, Any],
    spec: DatasetSpec,
    champion: Candidate,
    encoder: Any,
    cleaned: Any,
    table: Any,
) -> None:
    """core.scoring.score_customers in pandas, written once as Parquet: for each customer who
    can still churn, probability, decision, tier, contact value, top reasons, unseen values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    policy = job["scoring_policy"]
    scored = cleaned[_in_population(cleaned, spec)]
    features = _engineer(scored, spec, job["service_columns"])
    x = _encode(encoder, features)
    probability = champion.model.predict_proba(x)[:, 1]
    # The reference customer: the mean encoded row of the training split, as in the platform.
    reference = _mean_row(encoder, table[table["split"] == "train"])
    high, medium = _tier_cuts(champion.threshold, policy)
    rows = len(scored)
    columns = {
        spec.id_column: pa.array(scored[spec.id_column]),
        "churn_probability": probability,
        "churn_predicted": (probability >= champion.threshold).astype(np.int32),
        "risk_tier": np.select(
            [probability >= high, probability >= medium], ["high", "medium"], "low"
        ),
        "expected_value": probability * policy["cost_missed_churner"]
        - policy["cost_retention_offer"],
        "reasons": _reasons(
            encoder, features, x, _attribution(champion.model, x, probability), reference
        ),
        "unseen_values": _unseen(encoder, features),
        "model_name": np.full(rows, spec.model_name, dtype=object),
        "model_version": np.full(rows, "1", dtype=object),
        "threshold": np.full(rows, champion.threshold),
    }
    pq.write_table(pa.table(columns), job["scores"])


def _in_population(cleaned: Any, spec: DatasetSpec) -> Any:
    """core.population.population_filter: by default the customers who can still churn."""
    rule = spec.score_population
    if rule is None:
        return cleaned["label"] == 0
    if rule.column == spec.target.column:
        return cleaned["label"].isin([1 if v == spec.target.positive else 0 for v in rule.values])
    return cleaned[rule.column].astype("string").isin([str(v) for v in rule.values])


def _tier_cuts(threshold: float, policy: Mapping[str, Any]) -> tuple[float, float]:
    """core.scoring.tier_cuts: `high` from the threshold, `medium` from the contact break-even."""
    high = threshold * policy["tier_high_ratio"]
    medium = policy["tier_medium_probability"]
    if medium is None:
        missed = policy["cost_missed_churner"]
        medium = policy["cost_retention_offer"] / missed if missed > 0 else high
    return high, min(medium, high)


def _mean_row(encoder: Any, table: Any, chunk_rows: int = 1_000_000) -> np.ndarray:
    """The mean encoded row of `table`, a million rows at a time (as `_encode`)."""
    total = sum(
        encoder.transform(table.iloc[start : start + chunk_rows]).sum(axis=0, dtype=np.float64)
        for start in range(0, len(table), chunk_rows)
    )
    return total / max(len(table), 1)


def _slot_owners(encoder: Any) -> list[str]:
    """The dataset column behind each slot of the encoded matrix (one-hot slots share theirs)."""
    owners: list[str] = []
    for name, transformer, columns in encoder.transformers_:
        if name == "numeric":
            owners += list(transformer.get_feature_names_out())
        elif name == "categorical":
            owners += [
                c for c, cats in zip(columns, transformer.categories_, strict=True) for _ in cats
            ]
    return owners


def _attribution(model: Any, x: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """Slot coefficients of a linear log-odds model, as core.reasons.fit_attribution: exact for
    a logistic regression, else a ridge surrogate of the champion's log-odds."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline) and isinstance(model[-1], LogisticRegression):
        return model[-1].coef_[0] / model[0].scale_  # back from the scaler's units
    p = np.clip(probability, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    log_odds = np.log(p / (1.0 - p))
    rows = np.arange(len(x))
    if len(rows) > SURROGATE_MAX_ROWS:
        rows = np.random.default_rng(0).choice(rows, SURROGATE_MAX_ROWS, replace=False)
    # Spark's regParam weighs the mean loss; Ridge's alpha the summed one.
    ridge = Ridge(alpha=SURROGATE_REG_PARAM * len(rows)).fit(x[rows], log_odds[rows])
    return ridge.coef_


def _reasons(
    encoder: Any, features: Any, x: np.ndarray, coefficients: np.ndarray, reference: np.ndarray
) -> Any:
    """The top (feature, value, contribution) per row by size, one-hot slots summed into their
    column, contributions measured from the reference row (core.reasons.with_reasons)."""
    import pyarrow as pa

    owners = np.array(_slot_owners(encoder), dtype=object)
    columns = list(dict.fromkeys(owners))
    by_column = np.column_stack(
        [(x[:, owners == c] - reference[owners == c]) @ coefficients[owners == c] for c in columns]
    )
    top = np.argsort(-np.abs(by_column), axis=1, kind="stable")[:, :TOP_REASONS]
    values = np.empty(top.shape, dtype=object)
    for j, column in enumerate(columns):
        rows, ranks = np.nonzero(top == j)
        values[rows, ranks] = _shown(features[column].iloc[rows])
    items = pa.StructArray.from_arrays(
        [
            pa.array(np.array(columns, dtype=object)[top].ravel(), type=pa.string()),
            pa.array(values.ravel(), type=pa.string()),
            pa.array(np.take_along_axis(by_column, top, axis=1).ravel()),
        ],
        names=["feature", "value", "contribution"],
    )
    return pa.ListArray.from_arrays(np.arange(0, top.size + 1, top.shape[1], dtype=np.int32), items)


def _shown(values: Any) -> np.ndarray:
    """Values as a reason shows them: text as is, whole numbers without `.0`, else 2 decimals."""
    if values.dtype.kind != "f":
        return values.astype("string").fillna("missing").to_numpy(dtype=object)
    v = values.to_numpy(dtype=np.float64)
    whole = np.nan_to_num(v).astype(np.int64).astype(str)
    shown = np.where(v == np.floor(v), whole, np.round(v, 2).astype(str))
    return np.where(np.isnan(v), "missing", shown).astype(object)


def _unseen(encoder: Any, features: Any) -> Any:
    """Per row, `column=value` for each category value the encoder never saw (core.scoring)."""
    import pyarrow as pa

    _, onehot, columns = next(t for t in encoder.transformers_ if t[0] == "categorical")
    rows, marks = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=object)]
    for column, known in zip(columns, onehot.categories_, strict=True):
        values = features[column]
        hit = np.flatnonzero((values.notna() & ~values.isin(known)).to_numpy())
        rows.append(hit)
        marks.append(f"{column}=" + values.iloc[hit].astype(str).to_numpy(dtype=object))
    row = np.concatenate(rows)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=len(features)))])
    ordered = np.concatenate(marks)[np.argsort(row, kind="stable")]
    return pa.ListArray.from_arrays(offsets.astype(np.int32), pa.array(ordered, type=pa.string()))


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
