"""The one settings object: every variable read by its name, secrets kept secret, bad values
named, and a child process given exactly the settings of its parent."""

import pytest
from pydantic import SecretStr

from churn_platform.settings import VARIABLES, Settings, SettingsError, load_settings


def test_variables_keep_their_names_and_empty_means_default(tmp_path) -> None:
    settings = load_settings(
        {
            "CHURN_HOME": str(tmp_path),
            "CHURN_CONFIG": str(tmp_path / "spec.yaml"),
            "SPARK_MASTER": "spark://h:7077",
            "CHURN_SHUFFLE_PARTITIONS": "8",
            "CHURN_MODELS": "stacking, decision_tree",
            "CHURN_AUC_FLOOR": "",
            "CHURN_ALLOW_PERFECT_METRICS": "yes",
        }
    )
    assert settings.home == tmp_path and settings.spec_path == tmp_path / "spec.yaml"
    assert (settings.spark_master, settings.spark_shuffle_partitions) == ("spark://h:7077", 8)
    assert settings.models == ("stacking", "decision_tree")
    assert settings.auc_floor == Settings().auc_floor == 0.75
    assert settings.allow_perfect_metrics
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"


def test_a_bad_value_names_its_variable(tmp_path) -> None:
    with pytest.raises(SettingsError, match="CHURN_TRAINING_PROFILE='fast'.*'default' or 'quick'"):
        load_settings({"CHURN_HOME": str(tmp_path), "CHURN_TRAINING_PROFILE": "fast"})
    with pytest.raises(SettingsError, match="CHURN_TRAIN_MAX_ROWS") as error:
        load_settings({"CHURN_TRAIN_MAX_ROWS": "many"})
    assert "MLFLOW" not in str(error.value)  # no noise from defaults derived from other fields


def test_secrets_are_masked_and_left_out_of_what_is_recorded(tmp_path) -> None:
    uri = "postgresql://mlflow:s3cr3t@db/mlflow"
    settings = load_settings(
        {
            "CHURN_HOME": str(tmp_path),
            "CHURN_PSEUDONYM_KEY": "k3y",
            "CHURN_BACKUP_KEY": "f3rnet",
            "MLFLOW_TRACKING_URI": uri,
        }
    )
    assert isinstance(settings.backup_key, SecretStr)
    assert "k3y" not in repr(settings) and "f3rnet" not in repr(settings)
    public = settings.public_values()
    assert "pseudonym_key" not in public and "backup_key" not in public
    assert "s3cr3t" not in str(public) and "db" in public["mlflow_tracking_uri"]


def test_a_child_process_rebuilds_the_same_settings(tmp_path) -> None:
    settings = load_settings(
        {"CHURN_HOME": str(tmp_path), "CHURN_PSEUDONYM_KEY": "k3y", "CHURN_MODELS": "gbt"}
    )
    assert load_settings(settings.to_env()).model_dump() == settings.model_dump()
    child = settings.child_env()
    assert load_settings(child).model_dump() == settings.model_dump()
    assert child["DAGSTER_HOME"] == str(tmp_path / "dagster") and "PATH" in child
    assert set(VARIABLES.values()) >= set(settings.to_env())


def test_settings_built_in_code_read_no_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CHURN_AUC_FLOOR", "0.9")
    assert Settings(home=tmp_path).auc_floor == 0.75
    assert load_settings({"CHURN_HOME": str(tmp_path)}).auc_floor == 0.75
