"""What the Dagster UI shows of the models: inline curves, the whole leaderboard, the promotion
gate's check, the scores' blocking checks, and runs named after the platform's jobs."""

from __future__ import annotations

import math
import urllib.parse
import xml.etree.ElementTree as ET

import dagster as dg
import numpy as np
import pytest

from churn_platform import checks
from churn_platform.assets.evaluation import (
    AT_THRESHOLD_COLUMNS,
    RANKING_COLUMNS,
    leaderboard_table,
)
from churn_platform.assets.registry import PROMOTION_GATE, gate_result
from churn_platform.assets.training import curve_metadata, training_time_tags
from churn_platform.core.evaluation import LEADERBOARD_METRICS, curves, leaderboard_rows
from churn_platform.definitions import PIPELINE, build_definitions
from churn_platform.runner import job_name, whole_steps
from churn_platform.settings import load_settings
from churn_platform_tests.conftest import DATA_LAYERS

# Dagster's UI renders a Markdown metadata value inline only when it is shorter than this.
UI_INLINE_MARKDOWN = 1000


def test_curves_are_inline_svg_images_short_enough_to_show_without_a_click() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 20_000)
    scores = np.clip(labels * 0.3 + rng.uniform(size=labels.size) * 0.7, 0, 1)
    entries = curve_metadata(curves(labels, scores))
    assert set(entries) == {"roc_curve", "precision_recall_curve", "calibration_curve"}
    for name, entry in entries.items():
        text = entry.value
        assert len(text) < UI_INLINE_MARKDOWN, (name, len(text))
        alt, uri = text.split("\n\n")[0].removeprefix("![").removesuffix(")").split("](")
        assert uri.startswith("data:image/svg+xml,") and " " not in uri and "#" not in uri
        svg = ET.fromstring(urllib.parse.unquote(uri.removeprefix("data:image/svg+xml,")))
        points = svg.find("{http://www.w3.org/2000/svg}polyline").get("points").split()
        assert 2 <= len(points) <= 40
        assert all(0 <= int(v) <= 100 for point in points for v in point.split(","))
    assert "test ROC-AUC" in entries["roc_curve"].value


def _summary(kind: str, roc_auc: float, threshold: float = 0.3) -> dict:
    metrics = {m: 0.5 for m in LEADERBOARD_METRICS} | {"roc_auc": roc_auc, "cv_roc_auc_mean": 0.8}
    return {"kind": kind, "threshold": threshold, "metrics": metrics, "mlflow_run_id": kind}


def test_the_leaderboard_tables_hold_every_model_and_metric_rounded() -> None:
    rows = leaderboard_rows(
        {
            "model_a": _summary("logistic_regression", 0.84612345),
            "model_b": _summary("decision_tree", 0.81),
            "model_c": _summary("gbt", math.nan),
        }
    )
    ranking = leaderboard_table(rows, RANKING_COLUMNS)
    at_threshold = leaderboard_table(rows, AT_THRESHOLD_COLUMNS)
    assert [c.name for c in ranking.schema.columns] == ["model", *RANKING_COLUMNS]
    assert [c.name for c in at_threshold.schema.columns] == ["model", *AT_THRESHOLD_COLUMNS]
    # Every metric of the leaderboard is in one table or the other.
    assert set(LEADERBOARD_METRICS) <= set(RANKING_COLUMNS) | set(AT_THRESHOLD_COLUMNS)
    records = [r.data for r in ranking.records]
    assert [r["model"] for r in records] == [r["model"] for r in rows]
    assert records[0]["roc_auc"] == 0.8461
    assert {r["model"]: r["roc_auc"] for r in records}["gbt"] is None  # NaN: an empty cell


def _champion(version: str | None, roc_auc: float | None, promoted: bool = True) -> dict:
    return {
        "version": version,
        "model_kind": None if version is None else "gbt",
        "metrics": {} if roc_auc is None else {"roc_auc": roc_auc},
        "promoted": promoted,
        "challenger_version": "3",
        "reason": "roc_auc 0.8400 beats champion v2 (0.8300) by more than the margin 0.002",
    }


def test_the_promotion_gate_check_carries_the_decision_and_its_reason() -> None:
    gate = {"metric": "roc_auc", "candidate_roc_auc": 0.84, "champion_roc_auc": 0.83}
    result = gate_result(_champion("3", 0.84), gate, allow_perfect=False)
    assert result.passed and result.check_name == PROMOTION_GATE
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert result.metadata["decision"].value == "promoted"
    assert result.metadata["reason"].value.startswith("roc_auc 0.8400 beats champion v2")
    assert result.metadata["gate_champion_roc_auc"].value == 0.83
    kept = gate_result(_champion("2", 0.83, promoted=False), gate, allow_perfect=False)
    assert kept.passed and kept.description == "challenger v3: champion kept"


@pytest.mark.parametrize(
    ("version", "roc_auc", "allow", "problem"),
    [
        (None, None, False, "no champion to score with: roc_auc 0.8400"),
        ("3", 0.5, False, "no better than chance"),
        ("3", math.nan, False, "no better than chance"),
        ("3", 0.9995, False, "implausibly perfect"),
    ],
)
def test_without_a_usable_champion_the_gate_check_fails_and_says_why(
    version: str | None, roc_auc: float | None, allow: bool, problem: str
) -> None:
    result = gate_result(_champion(version, roc_auc), {}, allow_perfect=allow)
    assert not result.passed and problem in result.description
    assert result.metadata["problem"].value == result.description


def test_a_perfect_champion_passes_when_perfect_metrics_are_allowed() -> None:
    assert gate_result(_champion("3", 0.9995), {}, allow_perfect=True).passed


def test_the_mlflow_run_says_how_long_training_took() -> None:
    tags = training_time_tags(384.24)
    assert tags["training_time"] == "384.2 s"
    assert "Training took 384.2 s" in tags["mlflow.note.content"]


def test_runs_are_named_after_the_job_of_exactly_the_selected_assets(tmp_path) -> None:
    defs = build_definitions(load_settings({"CHURN_HOME": str(tmp_path)}))
    graph = defs.resolve_asset_graph()

    def name(selection: str | None) -> str:
        chosen = dg.AssetSelection.from_coercible(selection) if selection else PIPELINE
        return job_name(defs, graph, chosen.resolve(graph), selection)

    assert name(None) == "full_pipeline"
    assert name(DATA_LAYERS) == "data_layers"
    assert name("churn_scores") == "score"
    assert name("platform_backup") == "select_platform_backup"
    assert name("*churn_scores") == "select_churn_scores"
    assert name("group:training or group:ensembles or group:evaluation") == (
        "select_group_training_or_group_ensembles_or_group_evaluation"
    )


def test_an_upstream_selection_runs_the_cleaned_layer_whole(tmp_path) -> None:
    """`run --select '*churn_scores'` names cleaned_customers but not the quarantine written by
    the same step; Dagster cannot run part of that step, so the runner selects both."""
    defs = build_definitions(load_settings({"CHURN_HOME": str(tmp_path)}))
    graph = defs.resolve_asset_graph()
    keys = dg.AssetSelection.from_coercible("*churn_scores").resolve(graph)
    whole = whole_steps(graph, keys)
    assert whole - keys == {dg.AssetKey("quarantined_customers")}

    def job(selection: dg.AssetSelection) -> dg.JobDefinition:
        jobs = [dg.define_asset_job("j", selection=selection)]
        resolved = dg.Definitions(assets=list(defs.assets), resources=defs.resources, jobs=jobs)
        return resolved.resolve_job_def("j")

    with pytest.raises(dg.DagsterInvalidDefinitionError):
        job(dg.AssetSelection.assets(*keys))
    assert job(dg.AssetSelection.assets(*whole)).name == "j"


def test_churn_scores_has_blocking_checks_on_its_rows_and_probabilities(tmp_path) -> None:
    graph = build_definitions(load_settings({"CHURN_HOME": str(tmp_path)})).resolve_asset_graph()
    specs = {
        key.name: graph.get_check_spec(key)
        for key in graph.asset_check_keys
        if key.asset_key == dg.AssetKey("churn_scores")
    }
    for name in (checks.SCORED_POPULATION, checks.PROBABILITY_RANGE):
        assert specs[name].blocking and specs[name].description, name


def test_the_population_check_fails_when_a_customer_is_lost_or_scored_twice() -> None:
    assert checks.scored_population_result("churn_scores", 5174, 5174).passed
    for stored in (5173, 5175):
        result = checks.scored_population_result("churn_scores", stored, 5174)
        assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
        assert result.description == f"{stored} rows stored for a scoring population of 5174"
        assert result.metadata["scoring_population"].value == 5174


def test_the_probability_check_judges_the_stored_probabilities(spark) -> None:
    def judged(values: list[float | None]) -> dg.AssetCheckResult:
        frame = spark.createDataFrame([(v,) for v in values], "churn_probability double")
        return checks.probability_range_result("churn_scores", checks.probability_statistics(frame))

    fine = judged([0.0, 0.25, 1.0])
    assert fine.passed and fine.metadata["rows_outside"].value == 0
    assert (fine.metadata["lowest"].value, fine.metadata["highest"].value) == (0.0, 1.0)
    broken = judged([0.5, -0.01, 1.2, float("nan"), None])
    assert not broken.passed and broken.severity == dg.AssetCheckSeverity.ERROR
    assert broken.metadata["rows_outside"].value == 4
    assert broken.description.startswith("4 probabilities outside [0, 1] (lowest -0.0100")
