"""The scikit-learn (LightGBM for boosting when installed) counterparts of the platform's models
and ensembles, for the pandas baseline: the same parameters, grids, folds and heads."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from churn_platform.core.models.kinds import KINDS

BAGGING_KEYS = ("base", "numModels", "sampleFraction")
MAX_FEATURES = {"auto": "sqrt", "sqrt": "sqrt", "log2": "log2", "all": None, "onethird": 1 / 3}
EPSILON = 1e-6


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
