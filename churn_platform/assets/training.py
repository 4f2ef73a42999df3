"""Trained models: one asset per model kind, every run in MLflow.

Thin: the fitting and judging live in `churn_platform.core`; here the run configuration is
merged, the result logged to MLflow and described in the UI. Ensembles take the base model
assets they reuse as inputs, so the graph shows where their fits come from.
"""

import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster_pyspark import PySparkResource
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame

from churn_platform.core import evaluation, reasons, tracking
from churn_platform.core.attribution import REFERENCE, write_reference
from churn_platform.core.columns import FEATURES_COL, FOLD_COL, LABEL_COL
from churn_platform.core.encoding import read_encoding
from churn_platform.core.features import cap_training_rows, feature_roles
from churn_platform.core.models import ensembles, explain, out_of_time
from churn_platform.core.models.fitting import (
    BaseFit,
    FitResult,
    full_model,
    predict,
)
from churn_platform.core.models.kinds import (
    BASE_KINDS,
    ENSEMBLE_KINDS,
    KINDS,
    MODEL_KINDS,
    model_key,
)
from churn_platform.core.models.training import fit_model
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.model_config import CONFIGS, ModelConfig, model_params
from churn_platform.resources import SPARK_POOL, OpsLogResource, StateResource, TrainingFrames

CODE_VERSION = "2"
# Base models whose fits and out-of-fold predictions the stacking and voting assets reuse
# instead of refitting them 1 + k times each (the bulk of an ensemble's cost): the bases either
# profile combines, and no other, so retraining e.g. bagged trees does not retrain the ensembles.
ENSEMBLE_INPUTS = tuple(
    base
    for base in BASE_KINDS
    if any(
        base in params.get("bases", ())
        for kind in ENSEMBLE_KINDS
        for params in (KINDS[kind].defaults, KINDS[kind].quick)
    )
)
# Dagster's UI shows a Markdown value inline only below 1,000 characters (longer ones behind a
# "[Show Markdown]" link), so the curves are small SVG thumbnails, one entry each; the
# full-size PNGs are the run's MLflow artifacts (evaluation/).
CURVE_CAPTIONS = {
    "roc": ("ROC curve", "x: false positive rate, y: true positive rate; dashed: chance"),
    "precision_recall": ("Precision-recall curve", "x: recall, y: precision; dashed: churn rate"),
    "calibration": (
        "Reliability curve",
        "x: mean predicted probability (10 bins), y: observed churn rate; dashed: perfect",
    ),
}


def curve_metadata(found: evaluation.Curves) -> dict[str, dg.MetadataValue]:
    """One Markdown entry per curve: the SVG as an inline image (a data URI), then its axes."""
    entries = {}
    for name, svg in evaluation.curve_svgs(found).items():
        title, axes = CURVE_CAPTIONS[name]
        if name == "roc":
            title = f"{title}, test ROC-AUC {found.roc_auc:.3f}"
        uri = "data:image/svg+xml," + svg.replace("#", "%23").replace(" ", "%20")
        entries[f"{name}_curve"] = dg.MetadataValue.md(f"![{title}]({uri})\n\n{title}; {axes}")
    return entries


def training_time_tags(fit_seconds: float) -> dict[str, str]:
    """The fit's wall time where MLflow's UI shows it: a run's own duration is only the logging
    (the run starts after the fit), so it goes into a tag and the run's description."""
    return {
        "training_time": f"{fit_seconds:.1f} s",
        "mlflow.note.content": (
            f"Training took {fit_seconds:.1f} s (fit with out-of-fold predictions, test "
            "scoring; metric `training_seconds`). The run's duration covers only the logging."
        ),
    }


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
    training_frames: TrainingFrames,
    ops_log: OpsLogResource,
    bases: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """Fit with out-of-fold predictions, judge on the test split, log to MLflow."""
    started = time.monotonic()
    settings, spec = state.settings(), state.spec()
    params = model_params(kind, config, settings.training_profile)
    fingerprint = {
        "features_data_version": _latest_data_version(context, "customer_features"),
        "seed": config.seed,
        "train_max_rows": settings.train_max_rows,
    }
    frame_key = (fingerprint["features_data_version"], settings.train_max_rows)
    frame = training_frames.frame(
        frame_key,
        lambda: cap_training_rows(customer_features, spec, settings.train_max_rows),
        spec.id_column,
        feature_pipeline,
    )
    wanted = {model_key(b) for b in params.get("bases", [])}
    usable = {k: v for k, v in (bases or {}).items() if k in wanted}
    reused = _reusable_bases(context, usable, fingerprint, mlflow, feature_pipeline)
    fit = fit_model(
        kind, frame, params, config.seed, fitted_bases={b: f for b, (f, _) in reused.items()}
    )
    test = predict(fit.model, frame)
    fit_seconds = time.monotonic() - started
    threshold, value, metrics = evaluation.judge(
        fit.oof,
        test,
        config.threshold_strategy,
        settings.cost_missed_churner,
        settings.cost_retention_offer,
    )
    metrics[f"oof_{config.threshold_strategy}"] = value
    versus = ensembles.versus_best_base(fit)
    if versus is not None:
        best_base, metrics["best_base_cv_roc_auc"], metrics["cv_gain_over_best_base"] = versus
    oot = training_frames.out_of_time()
    oot_scores = None
    if oot is not None:
        oot_started = time.monotonic()
        given = {
            summary.get("kind", key.removeprefix("model_")): summary["oot"]
            for key, summary in (bases or {}).items()
            if isinstance(summary.get("oot"), pd.DataFrame)
        }
        oot_scores = out_of_time.predictions(kind, fit, oot, config.seed, given)
        metrics.update(out_of_time.metrics(oot_scores, threshold, oot))
        metrics["oot_seconds"] = time.monotonic() - oot_started
        context.log.info(
            f"{kind}: out of time, fitted on {oot.older_rows} customers of the older batches, "
            f"ROC-AUC {metrics['oot_roc_auc']:.4f} on the newest batch's {oot.newest_rows}"
        )
    names = explain.vector_feature_names(frame.train)
    importance = explain.feature_importance(fit.model, names)
    numeric, categorical = feature_roles(customer_features.drop(FEATURES_COL), spec)
    input_schema = customer_features.select(*categorical, *numeric).schema
    found = evaluation.curves(test["label"], test["churn_probability"])
    model = full_model(feature_pipeline, fit.model)
    with tempfile.TemporaryDirectory() as tmp:
        curves = evaluation.plot_curves(found, tmp)
        # Out-of-fold scores without customer ids: monitoring's drift reference for this model.
        oof_scores = Path(tmp) / tracking.OOF_SCORES
        fit.oof[[LABEL_COL, FOLD_COL, "churn_probability"]].to_parquet(oof_scores)
        # The reasons' reference customer, from the cached training rows: scoring reads it.
        reasons_reference = Path(tmp) / REFERENCE
        mean = reasons.reference_mean(model, read_encoding(model), frame.train)
        write_reference(reasons_reference, mean, frame.train_rows)
        run = tracking.log_training_run(
            mlflow,
            spec,
            model_kind=kind,
            model=model,
            params=fit.params,
            metrics={**metrics, "training_seconds": fit_seconds},
            threshold=threshold,
            input_schema=input_schema,
            dagster_run_id=context.run_id,
            asset_key=context.asset_key.to_user_string(),
            code_version=CODE_VERSION,
            data_version=fingerprint["features_data_version"],
            git_commit=tracking.git_commit(),
            artifacts={
                **curves,
                oof_scores.stem: oof_scores,
                reasons_reference.stem: reasons_reference,
            },
            feature_importance=importance,
            tags={
                "dataset": spec.name,
                **{f"churn.base_run.{b}": run_id for b, (_, run_id) in reused.items()},
                **training_time_tags(fit_seconds),
            },
        )
    duration = time.monotonic() - started
    context.log.info(
        f"{kind}: fitted and judged in {fit_seconds:.1f} s, logged to MLflow in "
        f"{duration - fit_seconds:.1f} s; test ROC-AUC {metrics['roc_auc']:.4f}"
    )
    if versus is not None:
        context.log.info(
            f"{kind}: CV ROC-AUC {metrics['cv_roc_auc_mean']:.4f} against its best base "
            f"{best_base}'s {versus[1]:.4f} ({versus[2]:+.4f})"
        )
    ops_log.log().event(
        "training.completed",
        f"{kind} trained: test ROC-AUC {metrics['roc_auc']:.4f}",
        component="training",
        configuration_item=context.asset_key.to_user_string(),
        outcome="success",
        metrics={"roc_auc": metrics["roc_auc"], "duration_s": duration},
        mlflow_run_id=run.run_id,
        context=context,
    )
    context.add_output_metadata(
        _metadata(fit, metrics, threshold, run, importance, duration) | curve_metadata(found)
    )
    summary: dict[str, Any] = {
        "kind": kind,
        "mlflow_run_id": run.run_id,
        "model_uri": run.model_uri,
        "threshold": threshold,
        "metrics": metrics,
        "params": fit.params,
        "cv": fit.cv,
    }
    if versus is not None:
        summary["best_base"] = best_base
    if kind in ENSEMBLE_INPUTS:
        summary["reuse"] = fingerprint
        summary["oof"] = fit.oof
        if oot_scores is not None:
            summary["oot"] = oot_scores
    return summary


def _metadata(
    fit: FitResult,
    metrics: dict[str, float],
    threshold: float,
    run: tracking.TrainingRun,
    importance: list[tuple[str, float]],
    duration: float,
) -> dict[str, Any]:
    top = "\n".join(f"| {name} | {value:+.4f} |" for name, value in importance[:15])
    return {
        **{k: float(v) for k, v in metrics.items()},
        "threshold": threshold,
        "mlflow_run_id": run.run_id,
        "model_uri": run.model_uri,
        "params": dg.MetadataValue.json(fit.params),
        "cv_candidates": dg.MetadataValue.json(fit.cv),
        "feature_importance": dg.MetadataValue.md(f"| feature | weight |\n|---|---|\n{top}"),
        "training_seconds": duration,
    }


def _reusable_bases(
    context: dg.AssetExecutionContext,
    bases: dict[str, dict],
    fingerprint: dict[str, Any],
    mlflow: MlflowResource,
    feature_pipeline: PipelineModel,
) -> dict[str, tuple[BaseFit, str]]:
    """Base-model fits made on the same features, seed and row cap, with their MLflow run ids.

    A base whose stored fit does not match (trained on older features, another seed) is fitted
    inside the ensemble, which gives the same result at the cost of 1 + k fits.
    """
    found: dict[str, tuple[BaseFit, str]] = {}
    for key, summary in bases.items():
        base = summary.get("kind", key.removeprefix("model_"))
        reuse = summary.get("reuse") or {}
        stale = sorted(k for k, v in fingerprint.items() if reuse.get(k) != v)
        if stale or not isinstance(summary.get("oof"), pd.DataFrame):
            why = f"its {', '.join(stale)} differ" if stale else "no stored fit"
            context.log.info(f"fitting base {base} here: {why}")
            continue
        full = tracking.load_run_model(mlflow, summary["model_uri"])
        model = PipelineModel(stages=full.stages[len(feature_pipeline.stages) :])
        found[base] = (BaseFit(model, summary["oof"], summary["params"]), summary["mlflow_run_id"])
        context.log.info(f"reusing base {base} from MLflow run {summary['mlflow_run_id']}")
    return found


def _model_asset(kind: str, base_keys: list[str]) -> dg.AssetsDefinition:
    row = KINDS[kind]
    config_cls = CONFIGS.get(kind, ModelConfig)
    ins = {key: dg.AssetIn(key) for key in base_keys} if row.is_ensemble else {}

    @dg.asset(
        pool=SPARK_POOL,
        name=model_key(kind),
        description=row.description,
        group_name=row.group,
        kinds={"spark", "mlflow"},
        code_version=CODE_VERSION,
        retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
        tags={"churn/model_kind": kind},
        ins={
            "customer_features": dg.AssetIn("customer_features"),
            "feature_pipeline": dg.AssetIn("feature_pipeline"),
            **ins,
        },
    )
    def _train(
        context: dg.AssetExecutionContext,
        config: config_cls,  # type: ignore[valid-type]
        pyspark: PySparkResource,
        state: StateResource,
        mlflow: MlflowResource,
        customer_features: DataFrame,
        feature_pipeline: PipelineModel,
        training_frames: TrainingFrames,
        ops_log: OpsLogResource,
        **bases: dict,
    ) -> dict:
        return train_and_track(
            context,
            kind,
            config,
            state,
            mlflow,
            customer_features,
            feature_pipeline,
            training_frames,
            ops_log,
            bases,
        )

    return _train


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
    """One asset per enabled kind; an ensemble takes the enabled bases it can reuse as inputs
    and fits any other base itself."""
    base_keys = [model_key(b) for b in ENSEMBLE_INPUTS if b in kinds]
    return [_model_asset(kind, base_keys) for kind in kinds]
