"""An ensemble's comparison with its best base out of fold, as the leaderboard shows it and the
promotion candidate depends on it: computed from the fold predictions, without a JVM."""

import numpy as np
import pandas as pd
import pytest

from churn_platform.core import evaluation
from churn_platform.core.columns import FOLD_COL, LABEL_COL, PROBABILITY_COL
from churn_platform.core.models.ensembles import BASE_SUFFIX, versus_best_base
from churn_platform.core.models.fitting import FitResult


def _fold_mean(labels: np.ndarray, scores: np.ndarray, folds: np.ndarray) -> float:
    return float(np.mean(list(evaluation.roc_auc_by_group(labels, scores, folds).values())))


def test_the_best_base_is_chosen_on_mean_fold_roc_auc_and_the_gain_is_measured_against_it() -> None:
    rng = np.random.default_rng(7)
    n = 600
    label = rng.integers(0, 2, n)
    fold = np.arange(n) % 3
    signal = label + rng.normal(0, 1.0, n)
    strong = 1 / (1 + np.exp(-signal))
    weak = 1 / (1 + np.exp(-(label + rng.normal(0, 3.0, n))))
    own = 1 / (1 + np.exp(-(signal + 0.5 * label)))
    base_oof = pd.DataFrame(
        {
            "id": np.arange(n),
            FOLD_COL: fold,
            LABEL_COL: label,
            "gbt" + BASE_SUFFIX: weak,
            "logistic_regression" + BASE_SUFFIX: strong,
        }
    )
    oof = pd.DataFrame({"id": np.arange(n), LABEL_COL: label, FOLD_COL: fold, PROBABILITY_COL: own})
    params = {"bases": ["gbt", "logistic_regression"]}
    fit = FitResult("stacking", None, oof, params, base_oof=base_oof)  # type: ignore[arg-type]

    base, base_cv, gain = versus_best_base(fit)

    assert base == "logistic_regression"
    assert base_cv == pytest.approx(_fold_mean(label, strong, fold))
    assert gain == pytest.approx(_fold_mean(label, own, fold) - base_cv)
    assert gain > 0


def test_a_model_without_bases_has_no_comparison() -> None:
    oof = pd.DataFrame({LABEL_COL: [0, 1], FOLD_COL: [0, 0], PROBABILITY_COL: [0.2, 0.8]})
    assert versus_best_base(FitResult("gbt", None, oof, {})) is None  # type: ignore[arg-type]
