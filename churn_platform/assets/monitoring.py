"""Model monitoring: champion quality on the newest batch's known outcomes, and drift of the
customers it scores (those who can still churn) against the same customers in training (see
churn_platform.core.monitoring)."""

import tempfile

import dagster as dg
import pandas as pd
from dagster_pyspark import PySparkResource
from mlflow.entities.model_registry import ModelVersion
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from churn_platform.automation import MONITORING_CHECKS
from churn_platform.core import monitoring, population, tracking
from churn_platform.core import scoring as core_scoring
from churn_platform.core.columns import LABEL_COL, PROBABILITY_COL, SPLIT_COL
from churn_platform.core.features import engineer_features, feature_roles
from churn_platform.core.sampling import sampled
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import SPARK_POOL, OpsLogResource, StateResource


def reference_scores(mlflow: MlflowResource, version: ModelVersion) -> pd.DataFrame:
    """The version's out-of-fold scores (label, fold, churn_probability; no customer ids),
    logged with its training run: what it scored on training customers it had not seen."""
    with tempfile.TemporaryDirectory(prefix="churn-oof-") as tmp:
        return pd.read_parquet(tracking.evaluation_file(mlflow, version, tracking.OOF_SCORES, tmp))


@dg.asset(
    pool=SPARK_POOL,
    kinds={"spark", "mlflow"},
    code_version="2",
    check_specs=[dg.AssetCheckSpec(name, asset="model_monitoring") for name in MONITORING_CHECKS],
)
def model_monitoring(
    context: dg.AssetExecutionContext,
    pyspark: PySparkResource,
    state: StateResource,
    ops_log: OpsLogResource,
    mlflow: MlflowResource,
    churn_scores: DataFrame,
    cleaned_customers: DataFrame,
    customer_features: DataFrame,
):
    """Champion ROC-AUC and calibration on the newest batch's labelled customers; PSI of the
    scored customers' features and scores against the training customers."""
    settings, spec = state.settings(), state.spec()
    bound, ids = settings.monitoring_sample_rows, spec.id_column
    model, version = core_scoring.load_champion(mlflow, spec)
    threshold = tracking.model_threshold(version)
    in_population = population.population_filter(spec)
    batch = monitoring.newest_batch(cleaned_customers, in_population)
    newest = cleaned_customers.where(batch.rows_filter)
    # Quality needs known outcomes: the batch's labelled customers, churned or not, scored here.
    labelled = sampled(newest.where(F.col(LABEL_COL).isNotNull()), batch.labelled, bound, ids)
    outcomes = (
        core_scoring.probabilities(labelled, spec, model)
        .select(LABEL_COL, PROBABILITY_COL)
        .toPandas()
    )
    quality = monitoring.quality(outcomes, PROBABILITY_COL, threshold)
    # Drift compares like with like: the batch's scored customers against the training customers
    # under the same rule (the whole batch if nobody in it can still churn).
    drifting = batch.in_population > 0
    current = sampled(
        newest.where(in_population) if drifting else newest,
        batch.in_population if drifting else batch.rows,
        bound,
        ids,
    )
    train = customer_features.where(F.col(SPLIT_COL) == "train")
    train = train.where(in_population) if drifting else train
    reference = sampled(train, train.count(), bound, ids)
    numeric, categorical = feature_roles(customer_features, spec)
    psi = monitoring.population_stability(
        reference, engineer_features(current, spec), numeric + categorical
    )
    # The batch's scores as churn_scores holds them; outside the population, scored here.
    scores = (
        churn_scores.join(F.broadcast(current.select(ids)), ids, "left_semi")
        if drifting
        else core_scoring.probabilities(current, spec, model)
    )
    oof = reference_scores(mlflow, version)
    labels = population.population_labels(spec)
    if drifting and labels is not None:
        oof = oof[oof[LABEL_COL].isin(labels)]
    drift = monitoring.score_drift(oof[PROBABILITY_COL].to_numpy(), scores, PROBABILITY_COL)
    psi["churn_score"] = drift.psi
    worst = max(psi, key=psi.__getitem__)
    auc = quality.get("roc_auc")
    ops_log.log().event(
        "monitoring.evaluated",
        f"champion v{version.version} on batch {batch.name}: AUC {auc}, max PSI {psi[worst]:.3f}",
        component="monitoring",
        configuration_item=f"model:{version.name}:v{version.version}",
        outcome="success",
        metrics={"max_psi": psi[worst], **({"roc_auc": auc} if auc is not None else {})},
        context=context,
    )
    yield dg.MaterializeResult(
        metadata={
            "batch": batch.name,
            "rows": batch.rows,
            "labelled_rows": batch.labelled,
            "quality_sample_rows": len(outcomes),
            "drift_population": population.population_rule(spec) if drifting else "whole batch",
            "drift_rows": batch.in_population,
            "drift_sample_rows": drift.rows,
            "reference_scores": len(oof),
            "model_version": str(version.version),
            "roc_auc": auc if auc is not None else float("nan"),
            "brier": quality.get("brier", float("nan")),
            "score_mean": drift.mean,
            "max_psi": psi[worst],
            "max_psi_feature": worst,
            "psi": dg.MetadataValue.json({k: round(v, 5) for k, v in psi.items()}),
        }
    )
    yield dg.AssetCheckResult(
        check_name="auc_above_floor",
        passed=auc is None or auc >= settings.auc_floor,
        metadata={
            "roc_auc": auc if auc is not None else "n/a (one class)",
            "floor": settings.auc_floor,
        },
    )
    yield dg.AssetCheckResult(
        check_name="psi_below_threshold",
        passed=psi[worst] <= settings.psi_threshold,
        metadata={"max_psi": psi[worst], "feature": worst, "threshold": settings.psi_threshold},
    )
    yield dg.AssetCheckResult(
        check_name="score_distribution_sane",
        passed=drift.sane,
        metadata={"mean": drift.mean, "std": drift.std, "nan": drift.nan},
    )
