"""Which model becomes the promotion candidate (the best test ROC-AUC among the models that
earn their place: an ensemble must beat its best base on CV) and whether it passes the gate:
the pure rules, without MLflow, Spark or Dagster."""

from typing import Any

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from churn_platform.core.evaluation import (
    LEADERBOARD_METRICS,
    earns_its_place,
    leaderboard_rows,
    promotion_candidate,
)
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


def _ensemble(
    kind: str, roc_auc: float, cv: float, base: str, base_cv: float | None
) -> dict[str, Any]:
    """An ensemble's summary: its best base on CV and its gain over it, as training records."""
    summary = _summary(kind, roc_auc, cv)
    summary["best_base"] = base
    gain = None if base_cv is None else cv - base_cv
    summary["metrics"] |= {"best_base_cv_roc_auc": base_cv, "cv_gain_over_best_base": gain}
    return summary


def _promoted(*summaries: dict[str, Any]) -> tuple[str, str]:
    return promotion_candidate(leaderboard_rows({f"model_{s['kind']}": s for s in summaries}))


def test_an_ensemble_that_beats_its_best_base_on_cv_is_the_candidate() -> None:
    stacking = _ensemble("stacking", 0.864, cv=0.846, base="gbt", base_cv=0.844)
    chosen, reason = _promoted(stacking, _summary("gbt", 0.862, cv=0.844))
    assert chosen == "stacking" and "passed over" not in reason
    row = leaderboard_rows({"model_stacking": stacking})[0]
    assert row["best_base"] == "gbt"
    assert row["cv_gain_over_best_base"] == pytest.approx(0.002)


def test_an_ensemble_first_on_test_but_not_better_than_its_base_on_cv_is_passed_over() -> None:
    stacking = _ensemble("stacking", 0.864, cv=0.843, base="logistic_regression", base_cv=0.845)
    voting = _ensemble("voting", 0.863, cv=0.845, base="logistic_regression", base_cv=0.845)
    lr = _summary("logistic_regression", 0.862, cv=0.845)
    chosen, reason = _promoted(stacking, voting, lr, _summary("gbt", 0.850, cv=0.846))
    # Voting only ties its base on CV: a tie does not earn an ensemble its place either.
    assert chosen == "logistic_regression"
    assert "passed over: stacking" in reason and "voting" in reason
    assert "does not beat its base logistic_regression's 0.8450" in reason


def test_models_without_a_comparison_are_ranked_as_before() -> None:
    # A base kind, an ensemble from a run before the comparison existed, an undefined figure.
    old = _summary("voting", 0.87)
    undefined = _ensemble("stacking", 0.86, cv=float("nan"), base="gbt", base_cv=0.84)
    assert earns_its_place(leaderboard_rows({"v": old})[0])
    assert earns_its_place(leaderboard_rows({"s": undefined})[0])
    assert _promoted(old, undefined, _summary("gbt", 0.85))[0] == "voting"


def test_when_no_model_earns_its_place_the_first_row_is_still_judged() -> None:
    only = _ensemble("stacking", 0.86, cv=0.84, base="gbt", base_cv=0.85)
    chosen, reason = _promoted(only)
    assert chosen == "stacking" and "no model earns its place" in reason
    with pytest.raises(ValueError, match="no models"):
        promotion_candidate([])


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
