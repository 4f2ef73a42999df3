"""The entry point for fitting any model kind of the table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from churn_platform.core.models.ensembles import fit_ensemble
from churn_platform.core.models.fitting import (
    DEFAULT_SEED,
    BaseFit,
    FitResult,
    TrainingFrame,
    fit_classifier,
)
from churn_platform.core.models.kinds import kind, merged_params


def fit_model(
    name: str,
    frame: TrainingFrame,
    params: Mapping[str, Any] | None = None,
    seed: int = DEFAULT_SEED,
    *,
    fitted_bases: Mapping[str, BaseFit] | None = None,
) -> FitResult:
    """Fit a model kind with its out-of-fold predictions; `params` override the kind's defaults.

    An ensemble takes the bases found in `fitted_bases` as they are (fitted on the same frame,
    folds and seed, they are exactly what it would compute itself) and fits only the others.
    """
    row = kind(name)
    merged = merged_params(name, params)
    if row.is_ensemble:
        return fit_ensemble(name, row.family, merged, frame, seed, fitted_bases or {})
    return fit_classifier(name, row.family, merged, frame, seed)
