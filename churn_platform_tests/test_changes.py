"""Change records are stored, listed and logged; config changes are recorded once per change."""

import json
from pathlib import Path

import pytest

from churn_platform.core.ops.changes import (
    list_changes,
    record_change,
    record_config_change_if_any,
)
from churn_platform.core.ops.log import OpsLog
from churn_platform.settings import Settings, load_settings
from churn_platform_tests.test_ops_log import clear_ambient_ops_env, ops_log_file, ops_records


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_ambient_ops_env(monkeypatch)


def test_change_records_are_written_and_listed(settings: Settings, ops: OpsLog) -> None:
    change = record_change(
        settings, "normal", "model:churn", "user:lead", "3", "4", {"auc": 0.84, "gate": "passed"},
        "Promote v4 to champion", ops_log=ops,
    )  # fmt: skip
    record_change(
        settings, "standard", "features", "schedule:nightly", None, "v2", {}, "Refresh", ops_log=ops
    )
    assert (settings.home / "changes" / f"{change.id}.json").exists()
    assert [c.id for c in list_changes(settings, "model:churn")] == [change.id]
    assert len(list_changes(settings)) == 2
    (logged,) = [
        r for r in ops_records(ops_log_file(settings)) if r["configuration_item"] == "model:churn"
    ]
    assert logged["event_code"] == "change.recorded" and logged["metrics"] == {"auc": 0.84}
    with pytest.raises(ValueError, match="change_type"):
        record_change(settings, "urgent", "x", "me", None, None, {}, "bad type", ops_log=ops)


def test_config_changes_are_recorded_once_per_actual_change(
    settings: Settings, ops: OpsLog, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("id_column: customerID\n")
    assert record_config_change_if_any(settings, spec, ops_log=ops) is not None
    assert record_config_change_if_any(settings, spec, ops_log=ops) is None
    spec.write_text("id_column: customer_id\n")
    changed = record_config_change_if_any(settings, spec, ops_log=ops)
    assert changed is not None and changed.summary == "dataset spec changed"
    assert record_config_change_if_any(settings, spec, ops_log=ops) is None
    env = {"CHURN_HOME": str(settings.home), "CHURN_AUC_FLOOR": "0.8"}
    retuned = record_config_change_if_any(
        load_settings({**env, "CHURN_PSEUDONYM_KEY": "a"}), spec, ops_log=ops
    )
    assert retuned is not None and list(retuned.why["changed_settings"]) == ["auc_floor"]
    assert (
        record_config_change_if_any(
            load_settings({**env, "CHURN_PSEUDONYM_KEY": "b"}), spec, ops_log=ops
        )
        is None
    )
    assert len(list_changes(settings, "platform_config")) == 3
    state = json.loads((settings.home / "changes" / "config_state.json").read_text())
    assert "pseudonym_key" not in state["settings"]
