"""Dataset specs: every mistake in a YAML spec is reported with the file and the key."""

from pathlib import Path

import pytest

from churn_platform.config import SpecError, load_spec
from churn_platform.settings import DEFAULT_SPEC, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_bundled_telco_spec_loads_with_state_root_paths(tmp_path):
    spec = load_spec(DEFAULT_SPEC, tmp_path)
    assert spec.name == "telco" and spec.model_name == "churn-telco"
    assert spec.sources[0].path == str(tmp_path / "data" / "telco_churn.csv")
    assert spec.id_column in spec.declared_columns and "Churn" in spec.declared_columns


def test_relative_paths_resolve_against_the_spec_file(tmp_path):
    path = _write(
        tmp_path,
        "name: x\nsources: [{name: a, format: parquet, path: data/a.parquet}]\n"
        "id_column: id\ntarget: {column: y, positive: '1'}\n",
    )
    assert load_spec(path, tmp_path / "home").sources[0].path == str(tmp_path / "data/a.parquet")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources: []\nid_column: id\ntarget: {column: y, positive: 1}\n", "'name'"),
        (
            "name: x\nsources: [{name: a, format: xls, path: a}]\nid_column: i\n"
            "target: {column: y, positive: 1}\n",
            "format",
        ),
        (
            "name: x\nsources: [{name: a, format: jdbc, url: 'jdbc:postgresql://h/db', table: t,"
            " password: hunter2}]\nid_column: i\ntarget: {column: y, positive: 1}\n",
            "password_env",
        ),
        (
            "name: x\nsources: [{name: a, format: csv, path: a.csv}]\nid_column: i\n"
            "target: {column: y}\n",
            "positive",
        ),
        (
            "name: x\nsources: [{name: a, format: csv, path: a.csv}]\nid_column: i\n"
            "target: {column: y, positive: 1}\ncategorical: [a]\nnumeric: [a]\n",
            "both",
        ),
    ],
)
def test_invalid_specs_name_the_problem(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path, tmp_path)
    assert str(path) in str(info.value)


def test_jdbc_password_comes_only_from_the_environment(tmp_path, monkeypatch):
    path = _write(
        tmp_path,
        "name: x\nsources: [{name: a, format: jdbc, url: 'jdbc:postgresql://h/db', table: t,"
        " user: u, password_env: SPEC_TEST_PW}]\nid_column: i\ntarget: {column: y, positive: 1}\n",
    )
    source = load_spec(path, tmp_path).sources[0]
    monkeypatch.delenv("SPEC_TEST_PW", raising=False)
    with pytest.raises(SpecError, match="SPEC_TEST_PW"):
        source.password()
    monkeypatch.setenv("SPEC_TEST_PW", "s3cret")
    assert source.password() == "s3cret"
    assert "s3cret" not in source.location


def test_settings_default_to_one_state_root(tmp_path):
    settings = load_settings({"CHURN_HOME": str(tmp_path)})
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    for folder in (settings.warehouse, settings.logs, settings.backups, settings.dagster_storage):
        assert folder.is_relative_to(tmp_path)
    with pytest.raises(ValueError, match="CHURN_AUC_FLOOR"):
        load_settings({"CHURN_HOME": str(tmp_path), "CHURN_AUC_FLOOR": "high"})
