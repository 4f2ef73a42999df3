"""The champion asset registers every model of a made-up leaderboard and sends to the gate the
best test ROC-AUC among the models that earn their place: an ensemble first on test that does
not beat its best base on CV is passed over, and the leaderboard's table says so. Real MLflow
(sqlite), no JVM."""

from typing import Any

import dagster as dg

from churn_platform.assets.evaluation import ensembles_table
from churn_platform.assets.registry import champion_model
from churn_platform.core.evaluation import LEADERBOARD_METRICS, leaderboard_rows
from churn_platform.core.tracking import TAG_MODEL_KIND, TAG_MODEL_SHA256
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import OpsLogResource, StateResource
from churn_platform.settings import Settings
from churn_platform_tests.test_ops_log import clear_ambient_ops_env


def _summaries(resource: MlflowResource, experiment: str) -> dict[str, dict[str, Any]]:
    """Three trained models as MLflow runs: stacking first on test, but below its base on CV."""
    client = resource.client()
    figures = {
        "stacking": (0.866, 0.843, "logistic_regression", 0.845),
        "logistic_regression": (0.862, 0.845, None, None),
        "gbt": (0.858, 0.844, None, None),
    }
    summaries = {}
    for kind, (roc_auc, cv, base, base_cv) in figures.items():
        tags = {TAG_MODEL_SHA256: "0" * 64, TAG_MODEL_KIND: kind}
        run = client.create_run(resource.experiment_id(experiment), tags=tags)
        client.set_terminated(run.info.run_id)
        metrics = {m: 0.5 for m in LEADERBOARD_METRICS} | {"roc_auc": roc_auc}
        metrics["cv_roc_auc_mean"] = cv
        summary: dict[str, Any] = {
            "kind": kind,
            "mlflow_run_id": run.info.run_id,
            "model_uri": f"runs:/{run.info.run_id}/model",
            "threshold": 0.3,
            "metrics": metrics,
        }
        if base is not None:
            summary["best_base"] = base
            metrics |= {"best_base_cv_roc_auc": base_cv, "cv_gain_over_best_base": cv - base_cv}
        summaries[f"model_{kind}"] = summary
    return summaries


def test_the_gate_gets_the_base_when_the_ensemble_does_not_beat_it_on_cv(
    settings: Settings, monkeypatch
) -> None:
    clear_ambient_ops_env(monkeypatch)
    state = StateResource(platform=settings)
    mlflow = MlflowResource.from_settings(settings)
    models = _summaries(mlflow, state.spec().name)

    @dg.asset(name="model_leaderboard")
    def made_up_leaderboard() -> dict:
        return {"rows": leaderboard_rows(models), "models": models}

    result = dg.materialize(
        [made_up_leaderboard, champion_model],
        resources={
            "state": state,
            "ops_log": OpsLogResource(platform=settings),
            "mlflow": mlflow,
        },
    )

    assert result.success
    champion = result.output_for_node("champion_model")
    assert champion["model_kind"] == "logistic_regression" and champion["promoted"]
    client = mlflow.client()
    registered = client.search_model_versions(f"name = '{champion['name']}'")
    assert len(registered) == 3  # every model is registered; only the candidate meets the gate
    challenger = client.get_model_version(champion["name"], champion["challenger_version"])
    assert challenger.tags[TAG_MODEL_KIND] == "logistic_regression"
    check = result.get_asset_check_evaluations()[0]
    assert check.passed


def test_the_leaderboard_table_shows_each_ensemble_against_its_best_base(
    settings: Settings,
) -> None:
    models = _summaries(MlflowResource.from_settings(settings), "telco")
    table = ensembles_table(leaderboard_rows(models))
    assert table is not None
    (record,) = [r.data for r in table.records]
    assert record == {
        "model": "stacking",
        "best_base": "logistic_regression",
        "earns": False,
        "cv_roc_auc": 0.843,
        "base_cv": 0.845,
        "gain": -0.002,
    }
    bases_only = {k: v for k, v in models.items() if k != "model_stacking"}
    assert ensembles_table(leaderboard_rows(bases_only)) is None
