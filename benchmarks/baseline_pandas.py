"""The pandas + scikit-learn baseline of benchmarks/pipeline.py: the same layers, models and
scoring on one machine, what a single-machine team would write."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from baseline_common import Candidate, Timeline, champion_of
from baseline_sklearn import _f1_threshold, _fit_model, _roc_auc

from churn_platform.config import DatasetSpec
from churn_platform.core.models.kinds import KINDS

# core.reasons' settings, repeated: importing it would load PySpark into the pandas run.
TOP_REASONS = 3
SURROGATE_MAX_ROWS = 200_000
SURROGATE_REG_PARAM = 1e-3
LOGIT_CLIP = 1e-3


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
