"""The gate never crowns a model whose test metrics are too perfect to be honest."""

import pytest

from churn_platform.config import DatasetSpec, SourceSpec, TargetSpec
from churn_platform.core.ops.log import OpsLog
from churn_platform.core.registry import promote, register_candidate
from churn_platform.core.tracking import TAG_MODEL_SHA256, TrainingRun
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import Settings, load_settings
from churn_platform_tests.test_ops_log import clear_ambient_ops_env, ops_log_file, ops_records


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_ambient_ops_env(monkeypatch)


def _candidate(settings: Settings, roc_auc: float) -> tuple[MlflowResource, DatasetSpec, str]:
    """A registered version carrying `roc_auc`, without training anything."""
    resource = MlflowResource.from_settings(settings)
    spec = DatasetSpec(
        name="leaky",
        sources=(SourceSpec(name="customers", format="csv", path="unused.csv"),),
        id_column="id",
        target=TargetSpec(column="churn", positive="Yes"),
    )
    client = resource.client()
    run = client.create_run(resource.experiment_id(spec.name), tags={TAG_MODEL_SHA256: "0" * 64})
    client.set_terminated(run.info.run_id)
    training = TrainingRun(run.info.run_id, f"runs:/{run.info.run_id}/model")
    version = register_candidate(resource, spec, training, {"roc_auc": roc_auc}, 0.5)
    return resource, spec, version.version


def test_a_perfect_first_model_is_not_promoted(settings: Settings, ops: OpsLog) -> None:
    resource, spec, version = _candidate(settings, roc_auc=1.0)
    decision = promote(resource, spec, version, settings=settings, ops_log=ops)
    assert not decision.promoted and decision.champion_version is None
    assert "implausibly perfect" in decision.reason
    assert "CHURN_ALLOW_PERFECT_METRICS" in decision.reason
    assert "champion" not in resource.client().get_registered_model(spec.model_name).aliases


def test_perfect_metrics_are_promoted_when_explicitly_allowed(
    settings: Settings, ops: OpsLog
) -> None:
    allowed = settings.model_copy(update={"allow_perfect_metrics": True})
    resource, spec, version = _candidate(allowed, roc_auc=1.0)
    assert promote(resource, spec, version, settings=allowed, ops_log=ops).promoted


def test_an_honest_first_model_is_promoted_in_the_callers_log(
    settings: Settings, ops: OpsLog
) -> None:
    resource, spec, version = _candidate(settings, roc_auc=0.84)
    assert promote(resource, spec, version, settings=settings, ops_log=ops).promoted
    codes = [r["event_code"] for r in ops_records(ops_log_file(settings))]
    assert codes == ["change.recorded", "registry.alias.set"]


def test_the_opt_in_is_read_from_the_environment(tmp_path) -> None:
    env = {"CHURN_HOME": str(tmp_path)}
    assert not load_settings(env).allow_perfect_metrics
    assert load_settings({**env, "CHURN_ALLOW_PERFECT_METRICS": "true"}).allow_perfect_metrics
    with pytest.raises(ValueError, match="CHURN_ALLOW_PERFECT_METRICS"):
        load_settings({**env, "CHURN_ALLOW_PERFECT_METRICS": "perhaps"})
