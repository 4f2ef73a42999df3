"""ITIL change records: who changed which configuration item, from what to what, and why.

changes/CHG-YYYYMMDD-NNNN.json     one change record per file
changes/config_state.json          hashes of the last recorded spec and settings
changes/.lock                      flock held around "allocate an id, write the record"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churn_platform.core.ops.chain import canonical_json
from churn_platform.core.ops.files import ensure_dir, locked, next_id, utc_iso, write_json_atomic
from churn_platform.core.ops.log import OpsLog, default_actor
from churn_platform.core.ops.privacy import sanitize
from churn_platform.settings import Settings

CHANGE_TYPES = ("standard", "normal", "emergency")
CONFIG_CI = "platform_config"


@dataclass(frozen=True)
class ChangeRecord:
    """An ITIL change record: what changed on which CI, from what to what, by whom and why."""

    id: str
    change_type: str
    configuration_item: str
    who: str
    what_from: str | None
    what_to: str | None
    why: dict[str, Any]
    summary: str
    recorded_at: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _changes_dir(settings: Settings) -> Path:
    return ensure_dir(settings.home / "changes")


def _store_change(settings: Settings, draft: ChangeRecord, ops_log: OpsLog) -> ChangeRecord:
    """Give `draft` its id and time, store it and log it; the caller holds the changes lock."""
    directory = _changes_dir(settings)
    now = datetime.now(UTC)
    change = dataclasses.replace(draft, id=next_id(directory, "CHG", now), recorded_at=utc_iso(now))
    write_json_atomic(directory / f"{change.id}.json", change.to_dict())
    gate_metrics = {
        k: v
        for k, v in change.why.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool)
    }
    ops_log.event(
        "change.recorded",
        f"{change.change_type} change {change.id} on {change.configuration_item}: "
        f"{change.what_from} -> {change.what_to}",
        component="change",
        configuration_item=change.configuration_item,
        actor=change.who,
        outcome="recorded",
        metrics=gate_metrics,
    )
    return change


def record_change(
    settings: Settings,
    change_type: str,
    configuration_item: str,
    who: str,
    what_from: str | None,
    what_to: str | None,
    why: Mapping[str, Any],
    summary: str,
    *,
    ops_log: OpsLog,
) -> ChangeRecord:
    """Record a change (e.g. a model promotion with its gate metrics in `why`), logged to the
    caller's `ops_log`."""
    if change_type not in CHANGE_TYPES:
        raise ValueError(f"change_type {change_type!r} must be one of {CHANGE_TYPES}")
    draft = ChangeRecord(
        id="",
        change_type=change_type,
        configuration_item=configuration_item,
        who=who,
        what_from=what_from,
        what_to=what_to,
        why=dict(why),
        summary=sanitize(summary),
        recorded_at="",
    )
    with locked(_changes_dir(settings) / ".lock"):
        return _store_change(settings, draft, ops_log)


def list_changes(settings: Settings, configuration_item: str | None = None) -> list[ChangeRecord]:
    """Change records, oldest first, optionally for one configuration item."""
    directory = settings.home / "changes"
    if not directory.exists():
        return []
    changes = [
        ChangeRecord(**json.loads(path.read_text(encoding="utf-8")))
        for path in directory.glob("CHG-*.json")
    ]
    return sorted(
        (c for c in changes if configuration_item in (None, c.configuration_item)),
        key=lambda change: (change.recorded_at, change.id),
    )


def _config_version(spec_sha: str, settings_sha: str) -> str:
    return f"spec:{spec_sha[:12]} settings:{settings_sha[:12]}"


def record_config_change_if_any(
    settings: Settings, spec_path: Path, *, ops_log: OpsLog, who: str | None = None
) -> ChangeRecord | None:
    """Record a `normal` change when the dataset spec or the non-secret settings changed.

    Compares hashes with the last recorded ones in `changes/config_state.json`; the first call
    records the baseline. Returns None when nothing changed.
    """
    spec_sha = hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()
    values = settings.public_values()
    settings_sha = hashlib.sha256(canonical_json(values).encode("ascii")).hexdigest()
    directory = _changes_dir(settings)
    state_path = directory / "config_state.json"
    with locked(directory / ".lock"):
        last = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else None
        if last and (last["spec_sha256"], last["settings_sha256"]) == (spec_sha, settings_sha):
            return None
        old_values: dict[str, Any] = last["settings"] if last else {}
        changed = {
            name: {"from": old_values.get(name), "to": values.get(name)}
            for name in sorted(set(values) | set(old_values))
            if old_values.get(name) != values.get(name)
        }
        spec_changed = last is None or last["spec_sha256"] != spec_sha
        previous = _config_version(last["spec_sha256"], last["settings_sha256"]) if last else None
        if last is None:
            summary = "configuration baseline recorded"
        else:
            parts = ["dataset spec changed"] if spec_changed else []
            if changed:
                parts.append(f"settings changed: {', '.join(changed)}")
            summary = "; ".join(parts)
        draft = ChangeRecord(
            id="",
            change_type="normal",
            configuration_item=CONFIG_CI,
            who=who or default_actor(),
            what_from=previous,
            what_to=_config_version(spec_sha, settings_sha),
            why={
                "spec_path": str(spec_path),
                "spec_sha256": spec_sha,
                "settings_sha256": settings_sha,
                "spec_changed": spec_changed,
                "changed_settings": changed if last else {},
            },
            summary=summary,
            recorded_at="",
        )
        change = _store_change(settings, draft, ops_log)
        state = {
            "spec_sha256": spec_sha,
            "settings_sha256": settings_sha,
            "settings": values,
            "change_id": change.id,
        }
        write_json_atomic(state_path, state)
    return change
