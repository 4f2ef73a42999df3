"""Evaluation: every model compared on the same held-out test split."""

from typing import Any

import dagster as dg

from churn_platform.core.evaluation import LEADERBOARD_METRICS, leaderboard_rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = "| model | " + " | ".join(LEADERBOARD_METRICS) + " | CV AUC | threshold |"
    sep = "|" + "---|" * (len(LEADERBOARD_METRICS) + 3)
    body = [
        f"| {r['model']} | "
        + " | ".join(f"{r[m]:.4f}" for m in LEADERBOARD_METRICS)
        + f" | {r['cv_roc_auc_mean']:.4f} | {r['threshold']:.3f} |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])


def leaderboard_asset(model_keys: list[str]) -> dg.AssetsDefinition:
    """`model_leaderboard` over the models the platform trains (CHURN_MODELS)."""

    @dg.asset(
        name="model_leaderboard",
        ins={key: dg.AssetIn(key) for key in model_keys},
        group_name="evaluation",
        kinds={"mlflow"},
        code_version="1",
    )
    def model_leaderboard(context: dg.AssetExecutionContext, **models: dict) -> dict:
        """All models ranked by test ROC-AUC on the shared held-out split."""
        rows = leaderboard_rows(models)
        context.add_output_metadata(
            {
                "table": dg.MetadataValue.md(_markdown(rows)),
                "best_model": rows[0]["model"],
                "best_roc_auc": rows[0]["roc_auc"],
                "leaderboard": dg.MetadataValue.json(
                    [{"model": r["model"], **{m: r[m] for m in LEADERBOARD_METRICS}} for r in rows]
                ),
            }
        )
        # The base models' out-of-fold tables stay with their own assets.
        kept = {key: {k: v for k, v in m.items() if k != "oof"} for key, m in models.items()}
        return {"rows": rows, "models": kept}

    return model_leaderboard
