"""Evaluation: every model compared on the same held-out test split."""

import math
from typing import Any

import dagster as dg

from churn_platform.core.evaluation import (
    LEADERBOARD_METRICS,
    OUT_OF_TIME_METRICS,
    earns_its_place,
    leaderboard_rows,
    promotion_candidate,
)
from churn_platform.resources import TrainingFrames

# The leaderboard as two tables that each fit the asset page's metadata column (one table of
# ten columns overflowed it): the threshold-free ranking, then the decision at the threshold
# chosen out of fold. Row order is the ranking in both.
RANKING_COLUMNS = {
    "roc_auc": "test ROC-AUC (the ranking metric)",
    "pr_auc": "test average precision",
    "brier": "test Brier score (lower is better)",
    "cv_roc_auc_mean": "mean ROC-AUC over the cross-validation folds",
}
AT_THRESHOLD_COLUMNS = {
    "threshold": "churn predicted from this probability (chosen out of fold)",
    "precision": "test precision at the threshold",
    "recall": "test recall at the threshold",
    "f1": "test F1 at the threshold",
    "accuracy": "test accuracy at the threshold",
}

OUT_OF_TIME_COLUMNS = {
    "oot_roc_auc": "ROC-AUC on the newest batch's customers, fitted on the older batches",
    "oot_pr_auc": "average precision on the newest batch, fitted on the older batches",
    "oot_brier": "Brier score on the newest batch (lower is better)",
    "roc_auc": "test ROC-AUC of the random split, which ranks the models and the gate uses",
}


def leaderboard_table(rows: list[dict[str, Any]], columns: dict[str, str]) -> dg.TableMetadataValue:
    """The models (best first) with `columns` rounded to 4 decimals, each column described."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("model", "string", description="model kind"),
            *(dg.TableColumn(name, "float", description=text) for name, text in columns.items()),
        ]
    )
    records = [
        dg.TableRecord({"model": r["model"], **{c: _rounded(r[c]) for c in columns}}) for r in rows
    ]
    return dg.MetadataValue.table(records, schema=schema)


def ensembles_table(rows: list[dict[str, Any]]) -> dg.TableMetadataValue | None:
    """Each ensemble against its best base out of fold: does combining pay? None without one.

    Short column names: six columns must fit the asset page's metadata column.
    """
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("model", "string", description="ensemble kind"),
            dg.TableColumn("cv_roc_auc", "float", description="the ensemble's mean CV ROC-AUC"),
            dg.TableColumn("best_base", "string", description="its base with the best CV"),
            dg.TableColumn("base_cv", "float", description="that base's mean CV ROC-AUC"),
            dg.TableColumn("gain", "float", description="cv_roc_auc - base_cv"),
            dg.TableColumn(
                "earns",
                "bool",
                description="earns its place: beats its best base on CV; if not, it is never "
                "the promotion candidate",
            ),
        ]
    )
    shown = {
        "cv_roc_auc": "cv_roc_auc_mean",
        "base_cv": "best_base_cv_roc_auc",
        "gain": "cv_gain_over_best_base",
    }
    records = [
        dg.TableRecord(
            {
                "model": r["model"],
                "best_base": r["best_base"],
                "earns": earns_its_place(r),
                **{column: _rounded(r[metric]) for column, metric in shown.items()},
            }
        )
        for r in rows
        if r.get("best_base") is not None
    ]
    return dg.MetadataValue.table(records, schema=schema) if records else None


def _rounded(value: Any) -> float | None:
    """4 decimals; a missing or undefined metric (NaN: one class only) as an empty cell."""
    return round(float(value), 4) if value is not None and math.isfinite(value) else None


def leaderboard_asset(model_keys: list[str]) -> dg.AssetsDefinition:
    """`model_leaderboard` over the models the platform trains (CHURN_MODELS)."""

    @dg.asset(
        name="model_leaderboard",
        ins={key: dg.AssetIn(key) for key in model_keys},
        group_name="evaluation",
        kinds={"mlflow"},
        code_version="1",
    )
    def model_leaderboard(
        context: dg.AssetExecutionContext, training_frames: TrainingFrames, **models: dict
    ) -> dict:
        """All models ranked by test ROC-AUC on the shared held-out split."""
        # Every model step of the run has finished: the cached training frame would otherwise
        # hold the JVM's memory through scoring and monitoring.
        training_frames.release()
        rows = leaderboard_rows(models)
        tables = {
            "ranking": leaderboard_table(rows, RANKING_COLUMNS),
            "at_threshold": leaderboard_table(rows, AT_THRESHOLD_COLUMNS),
        }
        shown = LEADERBOARD_METRICS
        if any(r["oot_roc_auc"] is not None for r in rows):
            tables["out_of_time"] = leaderboard_table(rows, OUT_OF_TIME_COLUMNS)
            shown = (*LEADERBOARD_METRICS, *OUT_OF_TIME_METRICS)
        versus_bases = ensembles_table(rows)
        if versus_bases is not None:
            tables["vs_best_base"] = versus_bases
        candidate, why = promotion_candidate(rows)
        # Short keys: the asset page's longest key sets the width left for the tables.
        context.add_output_metadata(
            {
                "best_model": rows[0]["model"],
                "best_roc_auc": rows[0]["roc_auc"],
                "candidate": candidate,
                "candidate_why": why,
                **tables,
                "leaderboard": dg.MetadataValue.json(
                    [{"model": r["model"], **{m: r[m] for m in shown}} for r in rows]
                ),
            }
        )
        # The base models' out-of-fold and out-of-time tables stay with their own assets.
        tables = ("oof", "oot")
        kept = {key: {k: v for k, v in m.items() if k not in tables} for key, m in models.items()}
        return {"rows": rows, "models": kept}

    return model_leaderboard
