"""Trained models: MLlib base learners and ensembles, one asset each, every run in MLflow."""

import base64
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_pyspark import PySparkResource
from pydantic import Field
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from churn_platform import etl, modeling, tracking
from churn_platform.io_managers import load_summary, new_version_dir, publish_version
from churn_platform.ops_log import OpsLog
from churn_platform.resources import SPARK_POOL, StateResource
from churn_platform.tracking import MlflowResource

CODE_VERSION = "1"
PROFILE_ENV = "CHURN_TRAINING_PROFILE"

# CHURN_TRAINING_PROFILE=quick: small models with no grid search, for tests and smoke runs.
_QUICK_LR = {"regParam": 0.01, "maxIter": 10}
QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "logistic_regression": _QUICK_LR,
    "decision_tree": {"maxDepth": 4},
    "random_forest": {"numTrees": 10, "maxDepth": 4},
    "gbt": {"maxIter": 5, "maxDepth": 3},
    "gbt_tuned": {"maxIter": 5, "maxDepth": [2, 3], "stepSize": 0.2},
    "bagged_lr": {"numModels": 3, "maxIter": 10},
    "bagged_trees": {"numModels": 3, "maxDepth": 4},
    "stacking": {
        "bases": ["logistic_regression", "decision_tree"],
        "base_params": {
            "logistic_regression": _QUICK_LR,
            "decision_tree": {"maxDepth": 4},
        },
    },
    "voting": {
        "bases": ["logistic_regression", "decision_tree"],
        "base_params": {
            "logistic_regression": _QUICK_LR,
            "decision_tree": {"maxDepth": 4},
        },
        "weightStep": 0.25,
    },
}

_DEFAULTS = modeling.DEFAULT_PARAMS
# Base models whose fits and out-of-fold predictions the stacking and voting assets reuse
# instead of refitting them 1 + k times each (the bulk of an ensemble's cost).
ENSEMBLE_INPUTS = ("logistic_regression", "decision_tree", "random_forest", "gbt")


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
        description="Further Spark ML parameters as JSON; a list value is a grid searched by "
        "cross-validation on the training split.",
    )

    def spark_params(self) -> dict[str, Any]:
        return json.loads(self.extra_params_json or "{}")


class LogisticRegressionConfig(ModelConfig):
    reg_param: list[float] = Field(
        default=_DEFAULTS["logistic_regression"]["regParam"],
        description="L2 regularisation; several values are searched by 5-fold CV.",
    )
    elastic_net_param: float = Field(
        default=_DEFAULTS["logistic_regression"]["elasticNetParam"],
        description="0 = ridge, 1 = lasso.",
    )

    def spark_params(self) -> dict[str, Any]:
        return {
            "regParam": self.reg_param,
            "elasticNetParam": self.elastic_net_param,
            **super().spark_params(),
        }


class DecisionTreeConfig(ModelConfig):
    max_depth: int = Field(default=_DEFAULTS["decision_tree"]["maxDepth"])
    min_instances_per_node: int = Field(default=_DEFAULTS["decision_tree"]["minInstancesPerNode"])

    def spark_params(self) -> dict[str, Any]:
        return {
            "maxDepth": self.max_depth,
            "minInstancesPerNode": self.min_instances_per_node,
            **super().spark_params(),
        }


class RandomForestConfig(ModelConfig):
    num_trees: int = Field(default=_DEFAULTS["random_forest"]["numTrees"])
    max_depth: int = Field(default=_DEFAULTS["random_forest"]["maxDepth"])
    min_instances_per_node: int = Field(default=_DEFAULTS["random_forest"]["minInstancesPerNode"])

    def spark_params(self) -> dict[str, Any]:
        return {
            "numTrees": self.num_trees,
            "maxDepth": self.max_depth,
            "minInstancesPerNode": self.min_instances_per_node,
            **super().spark_params(),
        }


class GBTConfig(ModelConfig):
    max_iter: int = Field(default=_DEFAULTS["gbt"]["maxIter"], description="Boosting rounds.")
    max_depth: int = Field(default=_DEFAULTS["gbt"]["maxDepth"])
    step_size: float = Field(default=_DEFAULTS["gbt"]["stepSize"], description="Learning rate.")

    def spark_params(self) -> dict[str, Any]:
        return {
            "maxIter": self.max_iter,
            "maxDepth": self.max_depth,
            "stepSize": self.step_size,
            **super().spark_params(),
        }


@dataclass(frozen=True)
class ModelSpec:
    """One row of the model table: a model kind becomes the asset `model_<kind>`."""

    kind: str
    group: str
    description: str
    config: type[ModelConfig] = ModelConfig


MODEL_SPECS = (
    ModelSpec(
        "logistic_regression",
        "training",
        "Logistic regression, CV-tuned regularisation.",
        LogisticRegressionConfig,
    ),
    ModelSpec("decision_tree", "training", "A single decision tree.", DecisionTreeConfig),
    ModelSpec("random_forest", "training", "Random forest.", RandomForestConfig),
    ModelSpec("gbt", "training", "Gradient-boosted trees.", GBTConfig),
    ModelSpec("gbt_tuned", "ensembles", "Boosting: GBT with depth and learning rate tuned by CV."),
    ModelSpec("bagged_lr", "ensembles", "Bagging: bootstrap-aggregated logistic regressions."),
    ModelSpec("bagged_trees", "ensembles", "Bagging: bootstrap-aggregated decision trees."),
    ModelSpec(
        "stacking",
        "ensembles",
        "Stacking: a logistic regression over out-of-fold base-model probabilities.",
    ),
    ModelSpec(
        "voting",
        "ensembles",
        "Soft voting: weighted calibrated probabilities, weights chosen out of fold.",
    ),
)


def model_key(kind: str) -> str:
    """Asset key (and warehouse folder) of a model kind: the one place the name is made."""
    return f"model_{kind}"


def model_params(kind: str, config: ModelConfig) -> dict[str, Any]:
    """Run config over the defaults; the quick profile shrinks everything for smoke runs."""
    params = config.spark_params() if type(config) is not ModelConfig else {}
    if os.environ.get(PROFILE_ENV) == "quick":
        params = {**params, **QUICK_PARAMS[kind]}
    return {**params, **json.loads(config.extra_params_json or "{}")}


def _png_markdown(paths: dict[str, Path]) -> str:
    parts = []
    for name, path in paths.items():
        encoded = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f"**{name}**\n\n![{name}](data:image/png;base64,{encoded})")
    return "\n\n".join(parts)


def _latest_data_version(context: dg.AssetExecutionContext, key: str) -> str:
    """Data version of the latest materialization of `key` (what this model was trained on)."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    materialization = event.asset_materialization if event else None
    tags = (materialization.tags if materialization else None) or {}
    return tags.get("dagster/data_version", "unknown")


def train_and_track(
    context: dg.AssetExecutionContext,
    kind: str,
    config: ModelConfig,
    state: StateResource,
    mlflow: MlflowResource,
    customer_features: DataFrame,
    feature_pipeline: PipelineModel,
) -> dict[str, Any]:
    """Fit, evaluate on the held-out split, choose the threshold out of fold, log to MLflow."""
    started = time.monotonic()
    settings, spec = state.settings(), state.spec()
    params = model_params(kind, config)
    capped = etl.cap_training_rows(customer_features, spec, settings.train_max_rows)
    features = capped.persist()
    fingerprint = {
        "features_data_version": _latest_data_version(context, "customer_features"),
        "seed": config.seed,
        "train_max_rows": settings.train_max_rows,
    }
    wanted = {**_DEFAULTS[kind], **params}.get("bases", [])
    bases = _reusable_bases(context, features, wanted, fingerprint, settings.warehouse)
    fit = modeling.fit_model(
        kind,
        features,
        params,
        config.seed,
        id_col=spec.id_column,
        fitted_bases={b: base for b, (base, _) in bases.items()},
    )
    oof = fit.oof.persist()
    judged = modeling.evaluate_fit(
        fit,
        features.where(F.col(etl.SPLIT_COL) == "test"),
        spec.id_column,
        config.threshold_strategy,
        cost_missed_churner=settings.cost_missed_churner or 500.0,
        cost_retention_offer=settings.cost_retention_offer or 50.0,
    )
    threshold, metrics, predictions = judged.threshold, judged.metrics, judged.predictions
    metrics[f"oof_{config.threshold_strategy}"] = judged.threshold_value
    importance = modeling.feature_importance(fit.model, modeling.vector_feature_names(features))
    numeric, categorical = etl.feature_roles(features, spec)
    example = features.select(*categorical, *numeric).limit(5).toPandas()
    with tempfile.TemporaryDirectory() as tmp:
        curves = modeling.plot_curves(predictions, Path(tmp))
        importance_file = Path(tmp) / "feature_importance.json"
        importance_file.write_text(json.dumps(importance, indent=2))
        run = tracking.log_training_run(
            mlflow,
            spec,
            model_kind=kind,
            model=modeling.full_model(feature_pipeline, fit.model),
            params={
                k: json.dumps(v) if isinstance(v, (list, dict)) else v
                for k, v in fit.params.items()
            },
            metrics=metrics,
            threshold=threshold,
            input_example=example,
            dagster_run_id=context.run_id,
            asset_key=context.asset_key.to_user_string(),
            code_version=CODE_VERSION,
            data_version=fingerprint["features_data_version"],
            git_commit=tracking.git_commit(),
            artifacts={**curves, "feature_importance": importance_file},
            tags={
                "dataset": spec.name,
                **{f"churn.base_run.{b}": run_id for b, (_, run_id) in bases.items()},
            },
        )
        images = _png_markdown(curves)
    reuse = None
    if kind in ENSEMBLE_INPUTS:
        reuse = _store_fit(settings.training / kind, context.run_id, fit, fingerprint)
    predictions.unpersist()
    oof.unpersist()
    duration = time.monotonic() - started
    OpsLog(settings).event(
        "training.completed",
        f"{kind} trained: test ROC-AUC {metrics['roc_auc']:.4f}",
        component="training",
        configuration_item=context.asset_key.to_user_string(),
        outcome="success",
        metrics={"roc_auc": metrics["roc_auc"], "duration_s": duration},
        mlflow_run_id=run.run_id,
        context=context,
    )
    top = "\n".join(f"| {name} | {value:+.4f} |" for name, value in importance[:15])
    context.add_output_metadata(
        {
            **{k: float(v) for k, v in metrics.items()},
            "threshold": threshold,
            "mlflow_run_id": run.run_id,
            "model_uri": run.model_uri,
            "params": dg.MetadataValue.json(fit.params),
            "feature_importance": dg.MetadataValue.md(f"| feature | weight |\n|---|---|\n{top}"),
            "curves": dg.MetadataValue.md(images),
            "training_seconds": duration,
        }
    )
    return {
        "kind": kind,
        "mlflow_run_id": run.run_id,
        "model_uri": run.model_uri,
        "threshold": threshold,
        "metrics": metrics,
        "params": fit.params,
        "reuse": reuse,
    }


def _store_fit(
    folder: Path, run_id: str, fit: modeling.FitResult, fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """Keep a base model's fit and OOF predictions (versioned) for the ensembles to reuse."""
    folder.mkdir(parents=True, exist_ok=True)
    version = new_version_dir(folder, run_id)
    fit.model.write().save(str(version / "model"))
    fit.oof.write.parquet(str(version / "oof"))
    publish_version(folder, version)
    return {
        **fingerprint,
        "model_path": str(version / "model"),
        "oof_path": str(version / "oof"),
    }


def _reusable_bases(
    context: dg.AssetExecutionContext,
    features: DataFrame,
    bases: list[str],
    fingerprint: dict[str, Any],
    warehouse: Path,
) -> dict[str, tuple[modeling.BaseFit, str]]:
    """Current base-model fits made on the same features, seed and row cap, with their run ids.

    A base without such a fit (never materialized, trained on older features, other seed) is
    fitted inside the ensemble, which gives the same result at the cost of 1 + k fits.
    """
    found: dict[str, tuple[modeling.BaseFit, str]] = {}
    for base in bases:
        if base not in ENSEMBLE_INPUTS:
            continue
        summary = load_summary(warehouse / model_key(base))
        reuse = (summary or {}).get("reuse") or {}
        stale = sorted(k for k, v in fingerprint.items() if reuse.get(k) != v)
        if summary is None or stale or not Path(reuse.get("oof_path", "")).is_dir():
            why = f"its {', '.join(stale)} differ" if summary and stale else "no stored fit"
            context.log.info(f"fitting base {base} here: {why}")
            continue
        model = PipelineModel.load(reuse["model_path"])
        oof = features.sparkSession.read.parquet(reuse["oof_path"])
        found[base] = (modeling.BaseFit(model, oof, summary["params"]), summary["mlflow_run_id"])
        context.log.info(f"reusing base {base} from MLflow run {summary['mlflow_run_id']}")
    return found


def _model_asset(model: ModelSpec, base_keys: list[str]) -> dg.AssetsDefinition:
    config_cls = model.config

    @dg.asset(
        pool=SPARK_POOL,
        name=model_key(model.kind),
        description=model.description,
        group_name=model.group,
        kinds={"spark", "mlflow"},
        code_version=CODE_VERSION,
        retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
        tags={"churn/model_kind": model.kind},
        deps=base_keys if model.kind in modeling.ENSEMBLE_KINDS else None,
    )
    def _train(
        context: dg.AssetExecutionContext,
        config: config_cls,  # type: ignore[valid-type]
        pyspark: PySparkResource,
        state: StateResource,
        mlflow: MlflowResource,
        customer_features: DataFrame,
        feature_pipeline: PipelineModel,
    ) -> dict:
        return train_and_track(
            context, model.kind, config, state, mlflow, customer_features, feature_pipeline
        )

    return _train


MODEL_KINDS = tuple(m.kind for m in MODEL_SPECS)
MODEL_ASSET_KEYS = [model_key(kind) for kind in MODEL_KINDS]


def enabled_kinds(wanted: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The model kinds to train, in table order; `()` means all (CHURN_MODELS unset)."""
    unknown = sorted(set(wanted) - set(MODEL_KINDS))
    if unknown:
        raise ValueError(
            f"CHURN_MODELS names unknown model kind(s) {', '.join(unknown)}; "
            f"choose from {', '.join(MODEL_KINDS)}"
        )
    return tuple(k for k in MODEL_KINDS if not wanted or k in wanted)


def build_model_assets(kinds: tuple[str, ...]) -> list[dg.AssetsDefinition]:
    """One asset per enabled kind; an ensemble waits for the enabled bases it can reuse and
    fits any other base itself."""
    base_keys = [model_key(b) for b in ENSEMBLE_INPUTS if b in kinds]
    return [_model_asset(m, base_keys) for m in MODEL_SPECS if m.kind in kinds]
