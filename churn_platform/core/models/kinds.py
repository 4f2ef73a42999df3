"""The one table of model kinds: what each is, its family, group and default parameters.

Spark parameter names pass straight to the estimators; a list value is a grid whose winner is
chosen on out-of-fold ROC-AUC by the same fold fits that give the out-of-fold predictions.
`earlyStopping` (boosting only) stops each fold model's rounds on its held-out fold and refits
the final model with their mean (`fitting.fit_classifier`).
Defaults were cut where they bought no accuracy on Telco (each model's test ROC-AUC within
0.003 of the slower defaults' or better): docs/BENCHMARKS.md has the measured cost of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Families: how a kind is fitted. The four MLlib classifiers, bagging (bootstrap members
# averaged), and the two ensembles over other kinds' out-of-fold predictions.
CLASSIFIER_FAMILIES = ("logistic_regression", "decision_tree", "random_forest", "gbt")
ENSEMBLE_FAMILIES = ("stacking", "voting")


@dataclass(frozen=True)
class ModelKind:
    """One row of the table; a kind becomes the asset `model_<name>`."""

    name: str
    family: str
    group: str
    description: str
    defaults: Mapping[str, Any]
    quick: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_ensemble(self) -> bool:
        return self.family in ENSEMBLE_FAMILIES


_QUICK_LR = {"regParam": 0.01, "maxIter": 10, "logNumeric": False}
# The bases stacking and voting combine by default; gbt_tuned among them: BigML telecom CV
# 0.9036 -> 0.9164 for voting and 0.9002 -> 0.9143 for stacking (docs/BENCHMARKS.md, session 11).
ENSEMBLE_BASES = ("logistic_regression", "random_forest", "gbt", "gbt_tuned")
_QUICK_BASES = {
    "bases": ["logistic_regression", "decision_tree"],
    "base_params": {"logistic_regression": _QUICK_LR, "decision_tree": {"maxDepth": 4}},
}

KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind(
            "logistic_regression",
            "logistic_regression",
            "training",
            "Logistic regression, regularisation chosen out of fold.",
            # tol 1e-3 stops L-BFGS at the same test and CV ROC-AUC (0.8627 / 0.8432 on Telco)
            # in 40 % less time than 1e-4: each iteration is a Spark job. logNumeric (numeric
            # columns also on a log scale) is a switch, off: Telco 0.8638 / 0.8451, BigML
            # telecom CV 0.7969 -> 0.8090, but 26 more Spark jobs, about 4 s of make demo's
            # 180 s budget (188.0 s with it on, session 12), for a Telco champion 0.0003 better
            # on test (voting 0.8641 against bagged LR 0.8638; docs/BENCHMARKS.md). On for a
            # run with extra_params_json '{"logNumeric": true}'.
            {"regParam": [0.01, 0.03], "elasticNetParam": 0.0, "tol": 1e-3, "logNumeric": False},
            _QUICK_LR,
        ),
        ModelKind(
            "decision_tree",
            "decision_tree",
            "training",
            "A single decision tree.",
            {"maxDepth": 6, "minInstancesPerNode": 20},
            {"maxDepth": 4},
        ),
        ModelKind(
            "random_forest",
            "random_forest",
            "training",
            "Random forest.",
            {
                "numTrees": 50,
                "maxDepth": 8,
                "minInstancesPerNode": 10,
                "featureSubsetStrategy": "sqrt",
            },
            {"numTrees": 10, "maxDepth": 4},
        ),
        ModelKind(
            "gbt",
            "gbt",
            "training",
            "Gradient-boosted trees.",
            # 30 rounds at step 0.2: Telco test ROC-AUC 0.8620 (CV 0.8441) in about 60 % of the
            # time of 40 rounds at 0.15 (0.8598 / 0.8439).
            {"maxIter": 30, "maxDepth": 2, "stepSize": 0.2, "subsamplingRate": 0.8},
            {"maxIter": 5, "maxDepth": 3},
        ),
        ModelKind(
            # Shallow or deep trees, chosen out of fold; rounds stop on each fold's held-out
            # part, so the cost follows what the data rewards: about 18 deep rounds on BigML
            # telecom (test ROC-AUC 0.938, CV 0.916), 18 shallow ones on Telco (644 Spark jobs
            # against 854 for the fixed depth {2, 3} x 30 rounds before).
            "gbt_tuned",
            "gbt",
            "ensembles",
            "Boosting: GBT with tree depth chosen and rounds stopped early out of fold.",
            {
                "maxIter": 100,
                "maxDepth": [2, 5],
                "stepSize": 0.2,
                "minInstancesPerNode": 10,
                "earlyStopping": True,
                "validationTol": 0.0,
            },
            {"maxIter": 5, "maxDepth": [2, 3], "stepSize": 0.2},
        ),
        ModelKind(
            "bagged_lr",
            "bagging",
            "ensembles",
            "Bagging: bootstrap-aggregated logistic regressions.",
            {"base": "logistic_regression", "numModels": 3, "regParam": 0.03, "tol": 1e-3},
            {"numModels": 3, "maxIter": 10},
        ),
        ModelKind(
            # Bagged trees are a random forest that considers every feature at every split:
            # one Spark fit grows all members level by level instead of one fit per member.
            "bagged_trees",
            "random_forest",
            "ensembles",
            "Bagging: bootstrap-aggregated decision trees (all features at every split).",
            {
                "numTrees": 20,
                "maxDepth": 8,
                "minInstancesPerNode": 10,
                "featureSubsetStrategy": "all",
                "bootstrap": True,
                "subsamplingRate": 1.0,
            },
            {"numTrees": 3, "maxDepth": 4},
        ),
        ModelKind(
            # Over the same four bases as voting. Over all seven base kinds its CV was a little
            # higher (Telco 0.8454 against 0.8451, BigML telecom 0.9146 against 0.9143, IBM
            # Telco v11 0.8584 against 0.8570) for 88 Spark jobs more, which took the quiet
            # `make demo` run to 187.6 s, over its 180 s budget (docs/BENCHMARKS.md, session 11).
            "stacking",
            "stacking",
            "ensembles",
            "Stacking: a logistic regression over out-of-fold base-model probabilities.",
            {
                "bases": list(ENSEMBLE_BASES),
                "base_params": {"logistic_regression": {"regParam": 0.03}},
                "regParam": 0.001,
            },
            _QUICK_BASES,
        ),
        ModelKind(
            # With gbt_tuned among the bases: BigML telecom CV 0.9036 -> 0.9164 (test 0.9217 ->
            # 0.9414), Telco and IBM Telco v11 CV unchanged (0.8453, 0.8566).
            "voting",
            "voting",
            "ensembles",
            "Soft voting: weighted calibrated probabilities, weights chosen out of fold.",
            {
                "bases": list(ENSEMBLE_BASES),
                "base_params": {"logistic_regression": {"regParam": 0.03}},
                "weightStep": 0.05,
                "maxSampleRows": 200_000,
            },
            {**_QUICK_BASES, "weightStep": 0.25},
        ),
    )
}

MODEL_KINDS = tuple(KINDS)
BASE_KINDS = tuple(k for k, v in KINDS.items() if not v.is_ensemble)
ENSEMBLE_KINDS = tuple(k for k, v in KINDS.items() if v.is_ensemble)


def model_key(kind: str) -> str:
    """Asset key (and warehouse folder) of a model kind: the one place the name is made."""
    return f"model_{kind}"


def kind(name: str) -> ModelKind:
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; choose from {', '.join(MODEL_KINDS)}")
    return KINDS[name]


def merged_params(
    name: str,
    config: Mapping[str, Any] | None = None,
    *,
    quick: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one precedence rule: defaults < run config < quick profile < extra JSON params."""
    row = kind(name)
    return {**row.defaults, **(config or {}), **(row.quick if quick else {}), **(extra or {})}
