"""scikit-learn references for the accuracy benchmark, on the platform's own vectors and folds.

The same feature vectors, split, folds and metric code as the platform's models get: a plain
LogisticRegression, a HistGradientBoostingClassifier tuned on the folds' mean ROC-AUC, and how
much LogisticRegression's CV figure moves when the same rows are split and folded otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from sklearn.base import ClassifierMixin, clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from churn_platform.core import evaluation
from churn_platform.core.columns import FEATURES_COL, FOLD_COL, LABEL_COL
from churn_platform.core.models.fitting import PROBABILITY_COL, TrainingFrame

HGB_GRID = {
    "learning_rate": [0.05, 0.1],
    "max_leaf_nodes": [7, 15, 31],
    "l2_regularization": [0.0, 1.0],
}


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


def out_of_fold(
    estimator: ClassifierMixin, x: np.ndarray, y: np.ndarray, folds: np.ndarray
) -> np.ndarray:
    """Each row's P(churn) from a clone of `estimator` fitted on the other folds."""
    oof = np.zeros(len(y))
    for fold in np.unique(folds):
        held_out = folds == fold
        model = clone(estimator).fit(x[~held_out], y[~held_out])
        oof[held_out] = model.predict_proba(x[held_out])[:, 1]
    return oof


class References:
    """scikit-learn models on the platform's very vectors, split and folds."""

    def __init__(self, frame: TrainingFrame) -> None:
        self.x, self.y, self.fold = vectors(frame.train)
        self.x_test, self.y_test, test_fold = vectors(frame.test)
        self.test = {LABEL_COL: self.y_test, FOLD_COL: test_fold}

    def out_of_fold(self, estimator: ClassifierMixin) -> np.ndarray:
        return out_of_fold(estimator, self.x, self.y, self.fold)

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

    def split_spread(self, count: int, seed: int) -> str:
        """LogisticRegression's CV ROC-AUC (mean of 5 fold AUCs) on `count` other random 80/20
        splits and fold assignments of the same rows, beside the platform's split."""
        x = np.vstack([self.x, self.x_test])
        y = np.concatenate([self.y, self.y_test])
        folds = len(np.unique(self.fold))
        estimator = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        ours = _fold_mean(self.y, self.out_of_fold(estimator), self.fold)
        found = []
        rng = np.random.default_rng(seed)
        for _ in range(count):
            train = rng.permutation(len(y))[: len(self.y)]
            fold = rng.permutation(np.arange(len(train)) % folds)
            oof = out_of_fold(estimator, x[train], y[train], fold)
            found.append(_fold_mean(y[train], oof, fold))
        values = np.array(found)
        return (
            f"split spread: scikit-learn LogisticRegression CV {ours:.4f} on this split; on "
            f"{count} other random splits mean {values.mean():.4f}, sd {values.std(ddof=1):.4f}, "
            f"range {values.min():.4f}-{values.max():.4f}, "
            f"{(values <= ours).mean():.0%} of them at or below this split's"
        )

    @staticmethod
    def _hgb(params: Mapping[str, Any]) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            max_iter=200, early_stopping=False, random_state=0, **params
        )


def _fold_mean(labels: np.ndarray, scores: np.ndarray, folds: np.ndarray) -> float:
    return float(np.mean(list(evaluation.roc_auc_by_group(labels, scores, folds).values())))


def grid_size() -> int:
    return int(np.prod([len(v) for v in HGB_GRID.values()]))
