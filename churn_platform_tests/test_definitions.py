"""The asset graph loads and changes only on purpose (snapshot of keys, groups, checks, jobs)."""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from churn_platform.assets import training
from churn_platform.core.models.kinds import ENSEMBLE_KINDS, KINDS
from churn_platform.definitions import build_definitions
from churn_platform.resources import SPARK_POOL
from churn_platform.runner import install_dagster_yaml
from churn_platform.settings import load_settings
from churn_platform_tests.conftest import restored_environ

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "kinds": sorted(node.kinds),
            "pools": sorted(node.pools),
            "owners": list(node.owners),
            "code_version": node.code_version,
            "partitioned": node.partitions_def is not None,
            "has_freshness_policy": getattr(node, "freshness_policy", None) is not None,
            "automation": node.automation_condition is not None,
        }
    checks = sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys)
    return {
        "assets": assets,
        "checks": checks,
        "jobs": sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")),
        "schedules": sorted(s.name for s in defs.schedules or []),
        "sensors": sorted(s.name for s in defs.sensors or []),
    }


def test_definitions_load(tmp_path):
    defs = build_definitions(load_settings({"CHURN_HOME": str(tmp_path)}))
    dg.Definitions.validate_loadable(defs)
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        node = defs.resolve_asset_graph().get(key)
        assert node.group_name != "default", f"{key} has no stage group"
        assert node.owners, f"{key} has no owner"
        assert node.description, f"{key} has no description"


def test_spark_runs_take_turns_and_check_only_runs_do_not_wait(tmp_path):
    """Every Spark asset holds the Spark pool; the instance the platform installs lets one run
    holding it be in progress at a time, counted per run (a run's steps share one JVM)."""
    settings = load_settings({"CHURN_HOME": str(tmp_path)})
    graph = build_definitions(settings).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert (SPARK_POOL in node.pools) == ("spark" in node.kinds), key
    install_dagster_yaml(settings)
    with restored_environ():  # dagster.yaml names the storage folders by variable
        settings.export_library_env()
        with dg.DagsterInstance.from_config(str(settings.dagster_storage)) as instance:
            concurrency = instance.get_concurrency_config()
    assert concurrency.pool_config.pool_granularity.value == "run"
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.run_queue_config.max_concurrent_runs > 1


def test_asset_graph_matches_snapshot(tmp_path):
    current = graph_snapshot(build_definitions(load_settings({"CHURN_HOME": str(tmp_path)})))
    if os.environ.get("UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), (
        "asset graph changed; if on purpose, rerun with UPDATE_SNAPSHOTS=1 and commit the file"
    )


def test_churn_models_trains_only_the_chosen_kinds(tmp_path):
    env = {"CHURN_HOME": str(tmp_path), "CHURN_MODELS": "stacking, logistic_regression"}
    defs = build_definitions(load_settings(env))
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    models = {k.to_user_string() for k in graph.get_all_asset_keys()} & {
        f"model_{kind}" for kind in training.MODEL_KINDS
    }
    assert models == {"model_logistic_regression", "model_stacking"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("model_leaderboard")).parent_keys}
    assert parents == models
    # The ensemble waits for the one base it can reuse; it fits the other bases itself.
    stacking = {k.to_user_string() for k in graph.get(dg.AssetKey("model_stacking")).parent_keys}
    assert "model_logistic_regression" in stacking
    assert not stacking & {"model_decision_tree", "model_random_forest", "model_gbt"}


def test_ensembles_wait_for_exactly_the_bases_they_combine(tmp_path):
    """Retraining a base no ensemble combines (bagged LR, bagged trees) must not retrain the
    ensembles, and they must not wait for it; every base the default or quick profile combines is
    an input, so its fit is reused."""
    combined = {
        f"model_{base}"
        for kind in ENSEMBLE_KINDS
        for params in (KINDS[kind].defaults, KINDS[kind].quick)
        for base in params["bases"]
    }
    assert "model_bagged_trees" not in combined and "model_gbt_tuned" in combined
    graph = build_definitions(load_settings({"CHURN_HOME": str(tmp_path)})).resolve_asset_graph()
    for kind in ENSEMBLE_KINDS:
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(f"model_{kind}")).parent_keys}
        assert parents - {"customer_features", "feature_pipeline"} == combined, kind


def test_an_unknown_model_kind_is_refused_by_name(tmp_path):
    env = {"CHURN_HOME": str(tmp_path), "CHURN_MODELS": "logistic_regression,xgboost"}
    with pytest.raises(ValueError, match="CHURN_MODELS names unknown model kind.*xgboost"):
        build_definitions(load_settings(env))
