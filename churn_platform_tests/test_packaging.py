"""The package works without a checkout around it: every file it reads ships as package data,
its dagster.yaml is the top-level one, and the default state root follows the working
directory."""

import ast
from fnmatch import fnmatch
from pathlib import Path

import pytest

from churn_platform.core.spark_setup import LOG4J2_TEMPLATE
from churn_platform.settings import DAGSTER_YAML, DEFAULT_SPEC, PACKAGE_DIR, load_settings

CHECKOUT = Path(__file__).resolve().parents[1]


def _package_data() -> list[str]:
    """setup.py's `package_data` patterns for churn_platform, read without running setup()."""
    tree = ast.parse((CHECKOUT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_data":
            return ast.literal_eval(node.value)["churn_platform"]
    raise AssertionError("setup.py declares no package_data")


@pytest.mark.parametrize(
    "path", [DAGSTER_YAML, DEFAULT_SPEC, LOG4J2_TEMPLATE], ids=lambda p: p.name
)
def test_every_file_the_package_reads_is_package_data(path: Path) -> None:
    relative = path.relative_to(PACKAGE_DIR).as_posix()
    assert path.is_file()
    assert any(fnmatch(relative, pattern) for pattern in _package_data()), relative


def test_the_package_dagster_yaml_is_the_top_level_one() -> None:
    """One source of truth: the top-level file is the one people edit and docs name."""
    assert DAGSTER_YAML.read_bytes() == (CHECKOUT / "dagster.yaml").read_bytes()


def test_the_default_state_root_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    assert settings.home == tmp_path / ".churn_home"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/.churn_home/mlflow/mlflow.db"
