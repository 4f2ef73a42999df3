"""Model monitoring: champion quality on the newest batch's known outcomes, and drift of the
customers it scores (those who can still churn) against the same customers in training."""

import math

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from churn_platform import etl
from churn_platform.automation import MONITORING_CHECKS
from churn_platform.core import evaluation, tracking
from churn_platform.core import scoring as core_scoring
from churn_platform.core.models.fitting import PROBABILITY_COL
from churn_platform.core.ops.log import OpsLog
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import SPARK_POOL, StateResource

PSI_BINS = 10
PSI_FLOOR = 1e-4  # keeps empty bins from making PSI infinite


def _psi(expected: dict, actual: dict) -> float:
    total_e, total_a = sum(expected.values()) or 1, sum(actual.values()) or 1
    value = 0.0
    for key in set(expected) | set(actual):
        e = max(expected.get(key, 0) / total_e, PSI_FLOOR)
        a = max(actual.get(key, 0) / total_a, PSI_FLOOR)
        value += (a - e) * math.log(a / e)
    return value


def population_stability(
    reference: DataFrame, current: DataFrame, columns: list[str]
) -> dict[str, float]:
    """PSI of each column: decile bins of the reference for numbers, categories for text.

    Three Spark jobs whatever the number of columns: the reference's deciles of every numeric
    column at once, then one (column, bin) count per side.
    """
    numeric = [c for c in columns if isinstance(reference.schema[c].dataType, T.NumericType)]
    probabilities = [i / PSI_BINS for i in range(1, PSI_BINS)]
    deciles = reference.approxQuantile(numeric, probabilities, 0.001) if numeric else []
    cuts = {c: sorted(set(q)) for c, q in zip(numeric, deciles, strict=True)}

    def bucket(column: str) -> Column:
        if column in cuts:
            above = [(F.col(column) > F.lit(cut)).cast("int") for cut in cuts[column]]
            index = sum(above, F.lit(0))
            return F.when(F.col(column).isNull(), F.lit(-1)).otherwise(index).cast("string")
        return F.coalesce(F.col(column).cast("string"), F.lit("<null>"))

    def counts(df: DataFrame) -> dict[str, dict[str, int]]:
        pairs = F.explode(
            F.array(*[F.struct(F.lit(c).alias("c"), bucket(c).alias("b")) for c in columns])
        )
        rows = df.select(pairs.alias("p")).groupBy("p.c", "p.b").count().collect()
        found: dict[str, dict[str, int]] = {c: {} for c in columns}
        for row in rows:
            found[row["c"]][row["b"]] = row["count"]
        return found

    expected, actual = counts(reference), counts(current)
    return {c: _psi(expected[c], actual[c]) for c in columns}


# Labelled rows judged on the driver at most: an AUC's error at this size is far below the
# changes monitoring looks for, and the cost stays flat as the customer base grows.
QUALITY_SAMPLE_ROWS = 1_000_000


def _quality(labelled: DataFrame, threshold: float) -> dict[str, float]:
    """Champion metrics on (a bounded random sample of) the newest batch's labelled rows."""
    rows = labelled.count()
    if rows > QUALITY_SAMPLE_ROWS:
        labelled = labelled.sample(fraction=QUALITY_SAMPLE_ROWS / rows, seed=0)
    frame = labelled.toPandas()
    return evaluation.evaluate(frame[etl.LABEL_COL], frame[PROBABILITY_COL], threshold)


@dg.asset(
    pool=SPARK_POOL,
    deps=["churn_scores"],
    kinds={"spark", "mlflow"},
    code_version="1",
    check_specs=[dg.AssetCheckSpec(name, asset="model_monitoring") for name in MONITORING_CHECKS],
)
def model_monitoring(
    context: dg.AssetExecutionContext,
    pyspark: PySparkResource,
    state: StateResource,
    mlflow: MlflowResource,
    cleaned_customers: DataFrame,
    customer_features: DataFrame,
):
    """Champion ROC-AUC and calibration on the newest batch; PSI of its features and scores
    against the training sample."""
    settings, spec = state.settings(), state.spec()
    newest_order = cleaned_customers.agg(F.max(etl.BATCH_ORDER_COL)).first()[0]
    newest = cleaned_customers.where(F.col(etl.BATCH_ORDER_COL) == newest_order).persist()
    batch = newest.select(etl.BATCH_COL).first()[0]
    model, version = tracking.load_model(mlflow, spec, alias="champion")
    threshold = tracking.model_threshold(version)
    in_population = core_scoring.population_filter(spec)
    scored = model.transform(etl.engineer_features(newest, spec)).select(
        etl.LABEL_COL, PROBABILITY_COL, in_population.alias("in_population")
    )
    # Quality needs known outcomes: every labelled customer of the batch, churned or not.
    labelled = (
        scored.where(F.col(etl.LABEL_COL).isNotNull())
        .select(etl.LABEL_COL, PROBABILITY_COL)
        .persist()
    )
    classes = labelled.select(etl.LABEL_COL).distinct().count()
    quality = _quality(labelled, threshold) if classes == 2 else {}
    # The reference is the training sample the models saw (CHURN_TRAIN_MAX_ROWS): the right
    # baseline for drift, and it keeps this asset's cost flat as the customer base grows.
    sample = etl.cap_training_rows(customer_features, spec, settings.train_max_rows)
    train = sample.where(F.col(etl.SPLIT_COL) == "train")
    # Drift compares like with like: the batch's scored population against the training
    # customers under the same rule (the whole batch if nobody in it can still churn).
    drift_rows = newest.where(in_population).count()
    if drift_rows:
        train = train.where(in_population)
        scored = scored.where(F.col("in_population"))
    current = etl.engineer_features(newest.where(in_population) if drift_rows else newest, spec)
    numeric, categorical = etl.feature_roles(train.drop(etl.FEATURES_COL), spec)
    psi = population_stability(train, current, numeric + categorical)
    train_scores = model.transform(
        etl.engineer_features(
            cleaned_customers.join(train.select(spec.id_column), spec.id_column), spec
        )
    ).select(PROBABILITY_COL)
    psi["churn_score"] = population_stability(
        train_scores, scored.select(PROBABILITY_COL), [PROBABILITY_COL]
    )[PROBABILITY_COL]
    stats = labelled.agg(
        F.avg(PROBABILITY_COL).alias("mean"),
        F.stddev(PROBABILITY_COL).alias("std"),
        F.sum(F.isnan(PROBABILITY_COL).cast("int")).alias("nan"),
    ).first()
    worst = max(psi, key=psi.get)
    auc = quality.get("roc_auc")
    metrics = {
        "batch": batch,
        "rows": newest.count(),
        "drift_population": core_scoring.population_rule(spec) if drift_rows else "whole batch",
        "drift_rows": drift_rows,
        "model_version": str(version.version),
        "roc_auc": auc if auc is not None else float("nan"),
        "brier": quality.get("brier", float("nan")),
        "score_mean": float(stats["mean"] or 0.0),
        "max_psi": psi[worst],
        "max_psi_feature": worst,
        "psi": dg.MetadataValue.json({k: round(v, 5) for k, v in psi.items()}),
    }
    OpsLog(settings).event(
        "monitoring.evaluated",
        f"champion v{version.version} on batch {batch}: AUC {auc}, max PSI {psi[worst]:.3f}",
        component="monitoring",
        configuration_item=f"model:{version.name}:v{version.version}",
        outcome="success",
        metrics={"max_psi": psi[worst], **({"roc_auc": auc} if auc is not None else {})},
        context=context,
    )
    yield dg.MaterializeResult(metadata=metrics)
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
    sane = (
        not stats["nan"] and 0.01 <= (stats["mean"] or 0.0) <= 0.99 and (stats["std"] or 0.0) > 1e-3
    )
    yield dg.AssetCheckResult(
        check_name="score_distribution_sane",
        passed=bool(sane),
        metadata={"mean": float(stats["mean"] or 0.0), "std": float(stats["std"] or 0.0)},
    )
