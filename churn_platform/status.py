"""What an operator asks first: is every asset fresh, did checks fail, which model serves?

Status reads the Dagster instance, the MLflow registry and the incident records. The asset and
check keys it reports on come from the definitions, but building those imports every asset
module (Spark ML, scikit-learn, the plotting code): seconds for a command that runs no asset.
So each build made here or by a run records the keys in the state root beside a fingerprint
of what they depend on (the package's code, the settings, Dagster's version), and status
builds the definitions only when that record is missing or stale.
"""

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from churn_platform.config import platform_spec
from churn_platform.core.ops.incidents import IncidentStore
from churn_platform.core.registry import registry_snapshot
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import Settings

GRAPH_KEYS_FILE = "asset_graph_keys.json"
PACKAGE_DIR = Path(__file__).resolve().parent


def graph_fingerprint(settings: Settings) -> str:
    """SHA-256 of what the asset and check keys depend on: every module of the package (a
    changed or added asset), the settings (the enabled model kinds) and Dagster's version."""
    digest = hashlib.sha256(dg.__version__.encode() + b"\0")
    digest.update(json.dumps(settings.public_values(), sort_keys=True, default=str).encode())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(b"\0" + path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def record_graph_keys(settings: Settings, graph: Any, fingerprint: str | None = None) -> dict:
    """Keep the resolved graph's asset and check keys for the next status (atomic write)."""
    record = {
        "fingerprint": fingerprint or graph_fingerprint(settings),
        "assets": sorted(key.to_user_string() for key in graph.get_all_asset_keys()),
        "checks": sorted(
            [key.asset_key.to_user_string(), key.name] for key in graph.asset_check_keys
        ),
    }
    target = settings.dagster_storage / GRAPH_KEYS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{GRAPH_KEYS_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, target)
    return record


def graph_keys(settings: Settings) -> tuple[list[dg.AssetKey], list[dg.AssetCheckKey]]:
    """The definitions' asset and check keys: from the record while it is current, else from
    building the definitions (which records them)."""
    fingerprint = graph_fingerprint(settings)
    try:
        record = json.loads((settings.dagster_storage / GRAPH_KEYS_FILE).read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("fingerprint") != fingerprint:
        from churn_platform.definitions import build_definitions

        graph = build_definitions(settings).resolve_asset_graph()
        record = record_graph_keys(settings, graph, fingerprint)
    assets = [dg.AssetKey.from_user_string(key) for key in record["assets"]]
    checks = [
        dg.AssetCheckKey(dg.AssetKey.from_user_string(asset), name)
        for asset, name in record["checks"]
    ]
    return assets, checks


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
    asset_keys, check_keys = graph_keys(settings)
    now = dt.datetime.now(dt.UTC).timestamp()
    assets, failed_checks = {}, []
    for key in asset_keys:
        event = instance.get_latest_materialization_event(key)
        last = event.timestamp if event else None
        assets[key.to_user_string()] = {
            "last_materialization": (
                dt.datetime.fromtimestamp(last, dt.UTC).isoformat() if last else None
            ),
            "run_id": event.run_id if event else None,
            "freshness": freshness_state(last, settings, now),
        }
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
