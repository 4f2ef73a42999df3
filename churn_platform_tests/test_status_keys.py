"""`status` reports on every asset and check of the definitions without rebuilding them each
time: the keys a build recorded are used while the code and settings they came from are
unchanged, and rebuilt as soon as either changes."""

from __future__ import annotations

import json

import pytest

from churn_platform import definitions, status
from churn_platform.settings import Settings


def _built_keys(settings: Settings) -> tuple[list[str], list[tuple[str, str]]]:
    graph = definitions.build_definitions(settings).resolve_asset_graph()
    assets = sorted(key.to_user_string() for key in graph.get_all_asset_keys())
    checks = sorted((k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys)
    return assets, checks


def _status_keys(settings: Settings) -> tuple[list[str], list[tuple[str, str]]]:
    assets, checks = status.graph_keys(settings)
    return (
        [key.to_user_string() for key in assets],
        sorted((k.asset_key.to_user_string(), k.name) for k in checks),
    )


def test_status_reuses_the_recorded_keys_until_code_or_settings_change(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = _built_keys(settings)
    assert (
        "churn_scores" in built[0] and ("churn_scores", "rows_equal_scoring_population") in built[1]
    )
    assert _status_keys(settings) == built  # the first status builds and records them
    record = settings.dagster_storage / status.GRAPH_KEYS_FILE
    assert json.loads(record.read_text())["fingerprint"] == status.graph_fingerprint(settings)

    def no_build(_: Settings) -> None:
        raise AssertionError("status built the definitions although its record is current")

    monkeypatch.setattr(definitions, "build_definitions", no_build)
    assert _status_keys(settings) == built
    monkeypatch.undo()

    # Other enabled model kinds are another graph: the record is stale and rebuilt.
    fewer = settings.model_copy(update={"models": ("logistic_regression",)})
    assert status.graph_fingerprint(fewer) != status.graph_fingerprint(settings)
    rebuilt = _status_keys(fewer)
    assert rebuilt == _built_keys(fewer) and rebuilt != built
    assert "model_logistic_regression" in rebuilt[0]

    record.write_text("{not json")  # a damaged record is rebuilt, not trusted or fatal
    assert _status_keys(settings) == built


def test_a_changed_module_changes_the_fingerprint(
    settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "package"
    (package / "assets").mkdir(parents=True)
    (package / "assets" / "scoring.py").write_text("ASSET = 1\n")
    monkeypatch.setattr(status, "PACKAGE_DIR", package)
    before = status.graph_fingerprint(settings)
    (package / "assets" / "scoring.py").write_text("ASSET = 2\n")
    assert status.graph_fingerprint(settings) != before
    changed = status.graph_fingerprint(settings)
    (package / "assets" / "extra.py").write_text("")
    assert status.graph_fingerprint(settings) != changed
