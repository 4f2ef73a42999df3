"""Run configuration of the model assets: each kind's settings as the Launchpad edits them
(Dagster config classes; the kinds and their defaults are `core.models.kinds`)."""

import json
from typing import Any

import dagster as dg
from pydantic import Field

from churn_platform.core.models.kinds import KINDS, merged_params

_DEFAULTS = {name: row.defaults for name, row in KINDS.items()}


class ModelConfig(dg.Config):
    """Run configuration shared by every model asset (editable in the Launchpad)."""

    seed: int = Field(default=42, description="Seed for bootstrap samples and tree randomness.")
    threshold_strategy: str = Field(
        default="f1",
        description="How the decision threshold is chosen on out-of-fold predictions: 'f1', or "
        "'profit' using CHURN_COST_MISSED_CHURNER and CHURN_COST_RETENTION_OFFER.",
    )
    extra_params_json: str = Field(
        default="{}",
        description="Further Spark ML parameters as JSON; a list value is a grid whose winner "
        "is chosen on out-of-fold ROC-AUC.",
    )

    def spark_params(self) -> dict[str, Any]:
        """The parameters this config's own fields set (none for the shared config)."""
        return {}


class LogisticRegressionConfig(ModelConfig):
    reg_param: list[float] = Field(
        default=_DEFAULTS["logistic_regression"]["regParam"],
        description="L2 regularisation; several values are compared out of fold.",
    )
    elastic_net_param: float = Field(
        default=_DEFAULTS["logistic_regression"]["elasticNetParam"],
        description="0 = ridge, 1 = lasso.",
    )

    def spark_params(self) -> dict[str, Any]:
        return {"regParam": self.reg_param, "elasticNetParam": self.elastic_net_param}


class DecisionTreeConfig(ModelConfig):
    max_depth: int = Field(default=_DEFAULTS["decision_tree"]["maxDepth"])
    min_instances_per_node: int = Field(default=_DEFAULTS["decision_tree"]["minInstancesPerNode"])

    def spark_params(self) -> dict[str, Any]:
        return {"maxDepth": self.max_depth, "minInstancesPerNode": self.min_instances_per_node}


class RandomForestConfig(ModelConfig):
    num_trees: int = Field(default=_DEFAULTS["random_forest"]["numTrees"])
    max_depth: int = Field(default=_DEFAULTS["random_forest"]["maxDepth"])
    min_instances_per_node: int = Field(default=_DEFAULTS["random_forest"]["minInstancesPerNode"])

    def spark_params(self) -> dict[str, Any]:
        return {
            "numTrees": self.num_trees,
            "maxDepth": self.max_depth,
            "minInstancesPerNode": self.min_instances_per_node,
        }


class GBTConfig(ModelConfig):
    max_iter: int = Field(default=_DEFAULTS["gbt"]["maxIter"], description="Boosting rounds.")
    max_depth: int = Field(default=_DEFAULTS["gbt"]["maxDepth"])
    step_size: float = Field(default=_DEFAULTS["gbt"]["stepSize"], description="Learning rate.")

    def spark_params(self) -> dict[str, Any]:
        return {"maxIter": self.max_iter, "maxDepth": self.max_depth, "stepSize": self.step_size}


CONFIGS: dict[str, type[ModelConfig]] = {
    "logistic_regression": LogisticRegressionConfig,
    "decision_tree": DecisionTreeConfig,
    "random_forest": RandomForestConfig,
    "gbt": GBTConfig,
}


def model_params(kind: str, config: ModelConfig, profile: str = "default") -> dict[str, Any]:
    """Defaults < run config < quick profile < extra JSON (`kinds.merged_params`)."""
    return merged_params(
        kind,
        config.spark_params(),
        quick=profile == "quick",
        extra=json.loads(config.extra_params_json or "{}"),
    )
