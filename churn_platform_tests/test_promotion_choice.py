"""Which model becomes the promotion candidate (the leaderboard's first row) and whether it
passes the gate: the pure rules, without MLflow, Spark or Dagster."""

from typing import Any

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from churn_platform.core.evaluation import LEADERBOARD_METRICS, leaderboard_rows
from churn_platform.core.registry import METRIC_TAG_PREFIX, _gate


def _summary(kind: str, roc_auc: float, cv: float | None = 0.8) -> dict[str, Any]:
    """A model asset's summary as the leaderboard reads it; only roc_auc and cv differ."""
    metrics: dict[str, Any] = {m: 0.5 for m in LEADERBOARD_METRICS}
    metrics |= {"roc_auc": roc_auc, "cv_roc_auc_mean": cv}
    return {"kind": kind, "threshold": 0.3, "metrics": metrics, "mlflow_run_id": f"run-{kind}"}


def _candidate_of(*summaries: dict[str, Any]) -> str:
    models = {f"model_{s['kind']}": s for s in summaries}
    return leaderboard_rows(models)[0]["model"]


def test_the_best_test_roc_auc_is_the_candidate() -> None:
    assert _candidate_of(_summary("gbt", 0.84), _summary("stacking", 0.85)) == "stacking"


def test_a_tie_on_test_roc_auc_goes_to_the_better_cv_mean_then_the_name() -> None:
    tied = (_summary("voting", 0.85, cv=0.81), _summary("gbt", 0.85, cv=0.83))
    assert _candidate_of(*tied) == "gbt"
    assert _candidate_of(_summary("voting", 0.85), _summary("gbt", 0.85)) == "gbt"
    # A model without a CV mean ranks as if it were 0 among ties.
    assert _candidate_of(_summary("gbt", 0.85, cv=None), _summary("voting", 0.85)) == "voting"


def test_the_choice_does_not_depend_on_the_order_models_arrive_in() -> None:
    summaries = [_summary(k, auc) for k, auc in (("a", 0.8), ("b", 0.9), ("c", 0.9))]
    forward = [r["model"] for r in leaderboard_rows({s["kind"]: s for s in summaries})]
    backward = [r["model"] for r in leaderboard_rows({s["kind"]: s for s in summaries[::-1]})]
    assert forward == backward == ["b", "c", "a"]


def _version(number: int, **metrics: float) -> ModelVersion:
    tags = [ModelVersionTag(f"{METRIC_TAG_PREFIX}{k}", repr(v)) for k, v in metrics.items()]
    return ModelVersion("churn-telco", str(number), 0, tags=tags)


def test_the_first_candidate_becomes_champion() -> None:
    promoted, reason, gate = _gate("roc_auc", _version(1, roc_auc=0.8), None, 0.0, False)
    assert promoted and "no champion yet" in reason
    assert gate == {"metric": "roc_auc", "candidate_roc_auc": 0.8, "margin": 0.0}


@pytest.mark.parametrize(
    ("candidate", "margin", "promoted"),
    [(0.85, 0.0, True), (0.84, 0.0, False), (0.845, 0.01, False), (0.86, 0.01, True)],
)
def test_a_candidate_must_beat_the_champion_by_more_than_the_margin(
    candidate: float, margin: float, promoted: bool
) -> None:
    champion = _version(1, roc_auc=0.84)
    decided, reason, gate = _gate(
        "roc_auc", _version(2, roc_auc=candidate), champion, margin, False
    )
    assert decided is promoted
    assert gate["improvement"] == pytest.approx(candidate - 0.84)
    assert ("does not beat" in reason) is not promoted and "champion v1" in reason


def test_a_lower_is_better_metric_is_compared_the_other_way() -> None:
    champion = _version(1, roc_auc=0.84, brier=0.15)
    better, _, gate = _gate("brier", _version(2, roc_auc=0.84, brier=0.14), champion, 0.0, False)
    worse, _, _ = _gate("brier", _version(3, roc_auc=0.84, brier=0.16), champion, 0.0, False)
    assert better and not worse
    assert gate["improvement"] == pytest.approx(0.01)


def test_perfect_or_undefined_metrics_never_pass_without_the_opt_in() -> None:
    champion = _version(1, roc_auc=0.84)
    perfect = _version(2, roc_auc=0.9995)
    assert not _gate("roc_auc", perfect, champion, 0.0, False)[0]
    assert _gate("roc_auc", perfect, champion, 0.0, True)[0]
    undefined, reason, _ = _gate("roc_auc", _version(3, roc_auc=float("nan")), None, 0.0, True)
    assert not undefined and "not a finite number" in reason
