"""What an operator asks first: is every asset fresh, did checks fail, which model serves?"""

import datetime as dt
from typing import Any

import dagster as dg

from churn_platform.config import platform_spec
from churn_platform.core.ops.incidents import IncidentStore
from churn_platform.core.registry import registry_snapshot
from churn_platform.definitions import build_definitions
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import Settings


def freshness_state(last: float | None, settings: Settings, now: float) -> str:
    """PASS / WARN / FAIL against the same windows as the assets' freshness policies."""
    if last is None:
        return "NEVER_MATERIALIZED"
    age_hours = (now - last) / 3600
    if age_hours > settings.freshness_fail_hours:
        return "FAIL"
    if age_hours > settings.freshness_warn_hours:
        return "WARN"
    return "PASS"


def platform_status(settings: Settings, instance: dg.DagsterInstance) -> dict[str, Any]:
    graph = build_definitions(settings).resolve_asset_graph()
    now = dt.datetime.now(dt.UTC).timestamp()
    assets, failed_checks = {}, []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        event = instance.get_latest_materialization_event(key)
        last = event.timestamp if event else None
        assets[key.to_user_string()] = {
            "last_materialization": (
                dt.datetime.fromtimestamp(last, dt.UTC).isoformat() if last else None
            ),
            "run_id": event.run_id if event else None,
            "freshness": freshness_state(last, settings, now),
        }
    check_keys = list(graph.asset_check_keys)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    for check_key, record in sorted(latest.items(), key=lambda kv: str(kv[0])):
        if record.status.value == "FAILED":
            failed_checks.append(
                {
                    "asset": check_key.asset_key.to_user_string(),
                    "check": check_key.name,
                    "run_id": record.run_id,
                }
            )
    try:
        models = registry_snapshot(MlflowResource.from_settings(settings), platform_spec(settings))
    except Exception as exc:  # an unreachable registry must not hide the rest of the status
        models = [{"error": f"{type(exc).__name__}: {exc}"}]
    incidents = [
        {
            "id": i.id,
            "priority": i.priority,
            "configuration_item": i.configuration_item,
            "summary": i.summary,
            "opened_at": i.opened_at,
        }
        for i in IncidentStore(settings).list(status="open")
    ]
    return {
        "assets": assets,
        "failed_checks": failed_checks,
        "models": models,
        "incidents": incidents,
    }


def render_status(status: dict[str, Any]) -> str:
    lines = ["ASSETS"]
    for key, info in status["assets"].items():
        lines.append(f"  {key:32} {info['freshness']:20} {info['last_materialization'] or '-'}")
    lines.append("FAILED CHECKS" + ("" if status["failed_checks"] else ": none"))
    lines += [f"  {c['asset']}:{c['check']} (run {c['run_id']})" for c in status["failed_checks"]]
    lines.append("MODELS")
    for model in status["models"]:
        aliases = ",".join(model.get("aliases", [])) or "-"
        auc = model.get("roc_auc")
        detail = f"{model.get('model_kind') or '?'}, test ROC-AUC {float(auc):.4f}" if auc else ""
        lines.append(f"  {model.get('name')} v{model.get('version')} [{aliases}] {detail}".rstrip())
    lines.append("OPEN INCIDENTS" + ("" if status["incidents"] else ": none"))
    lines += [f"  {i['id']} {i['priority']} {i['summary']}" for i in status["incidents"]]
    return "\n".join(lines)
