"""Dataset specs: every mistake in a YAML spec is reported with the file and the key."""

from pathlib import Path

import pytest

from churn_platform.config import SourceSpec, SpecError, load_spec
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


_BASE = (
    "name: x\nsources: [{name: a, format: csv, path: a.csv}]\nid_column: id\n"
    "target: {column: churn, positive: 'Yes'}\n"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_BASE + "categorial: [plan]\n", "'categorial': unknown key; did you mean 'categorical'"),
        (
            _BASE.replace("path: a.csv", "path: a.csv, delimeter: ';'"),
            r"'sources\[0\]\.delimeter': unknown key; did you mean 'delimiter'",
        ),
        (_BASE.replace("'Yes'", "Yes"), "'target.positive': .*boolean; quote the label"),
        (_BASE + "folds: 2.9\n", "'folds': .*integer"),
        (_BASE + "folds: five\n", "'folds': .*integer.*five"),
        (_BASE + "test_fraction: '0.2'\n", "'test_fraction'"),
        (_BASE + "categorical: [plan, churn]\n", "'categorical' lists 'churn', the target"),
        (_BASE + "numeric: [id, spend]\n", "'numeric' lists 'id', the id column"),
        (_BASE + "numeric: [spend]\nranges: {plan: [0, 1]}\n", "'ranges' names 'plan'"),
        (_BASE + "numeric: [spend]\nranges: {spend: [5, 1]}\n", "low 5.0 is above high 1.0"),
        (_BASE + "numeric: [spend]\nranges: {spend: [0, lots]}\n", "'ranges"),
    ],
)
def test_spec_mistakes_are_refused_naming_file_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path, tmp_path)
    assert str(path) in str(info.value)


def test_declared_ranges_reach_the_spec(tmp_path):
    text = _BASE + "numeric: [spend, tenure]\nranges: {spend: [0, 10000], tenure: [0, null]}\n"
    spec = load_spec(_write(tmp_path, text), tmp_path)
    assert spec.ranges == {"spend": (0.0, 10000.0), "tenure": (0.0, None)}


def test_integer_labels_are_read_as_written(tmp_path):
    spec = load_spec(_write(tmp_path, _BASE.replace("'Yes'", "1, negative: 0")), tmp_path)
    assert (spec.target.positive, spec.target.negative) == ("1", "0")


def test_jdbc_password_comes_only_from_the_environment(tmp_path):
    path = _write(
        tmp_path,
        "name: x\nsources: [{name: a, format: jdbc, url: 'jdbc:postgresql://h/db', table: t,"
        " user: u, password_env: SPEC_TEST_PW}]\nid_column: i\ntarget: {column: y, positive: 1}\n",
    )
    with pytest.raises(SpecError, match="SPEC_TEST_PW"):
        load_spec(path, tmp_path, {}).sources[0].password()
    source = load_spec(path, tmp_path, {"SPEC_TEST_PW": "s3cret"}).sources[0]
    assert source.password() == "s3cret"
    assert "s3cret" not in source.location and "s3cret" not in repr(source)


@pytest.mark.parametrize(
    "url",
    [
        "jdbc:postgresql://churn:s3cret@db:5432/crm",
        "jdbc:postgresql://db:5432/crm?user=churn&password=s3cret",
        "jdbc:sqlserver://db:1433;databaseName=crm;password=s3cret",
    ],
)
def test_a_source_location_never_holds_the_password(url):
    source = SourceSpec(name="billing", format="jdbc", url=url, table="billing")
    assert "s3cret" not in source.location
    assert source.location.endswith("#billing") and "db" in source.location


def test_settings_default_to_one_state_root(tmp_path):
    settings = load_settings({"CHURN_HOME": str(tmp_path)})
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    for folder in (settings.warehouse, settings.logs, settings.backups, settings.dagster_storage):
        assert folder.is_relative_to(tmp_path)
    with pytest.raises(ValueError, match="CHURN_AUC_FLOOR"):
        load_settings({"CHURN_HOME": str(tmp_path), "CHURN_AUC_FLOOR": "high"})
