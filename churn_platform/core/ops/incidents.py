"""ITIL incidents: one JSON file per incident, prioritised by an impact x urgency matrix.

incidents/INC-YYYYMMDD-NNNN.json   one incident per file, replaced atomically
incidents/.lock                    flock held around "find the open incident, write it"
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from churn_platform.core.ops.files import ensure_dir, locked, next_id, utc_iso, write_json_atomic
from churn_platform.core.ops.log import OpsLog, default_actor
from churn_platform.core.ops.privacy import sanitize
from churn_platform.settings import Settings

DEFAULT_PRIORITY_MATRIX: dict[str, dict[str, str]] = {
    "high": {"high": "P1", "medium": "P2", "low": "P3"},
    "medium": {"high": "P2", "medium": "P3", "low": "P4"},
    "low": {"high": "P3", "medium": "P4", "low": "P5"},
}


def load_priority_matrix(path: Path | None) -> dict[str, dict[str, str]]:
    """impact -> urgency -> priority: the YAML/JSON file `path` (CHURN_PRIORITY_MATRIX), or
    ITIL's 3x3 default without one.

    Why a file: the service desk owns priorities and changes them without a release. A matrix
    with holes is rejected here rather than when that combination first occurs at 3 a.m.
    """
    if path is None:
        return {impact: dict(row) for impact, row in DEFAULT_PRIORITY_MATRIX.items()}
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    example = "high: {high: P1, medium: P2, low: P3}"
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(row, dict) and row for row in data.values())
    ):
        raise ValueError(
            f"{path}: priority matrix must map impact -> urgency -> priority ({example})"
        )
    matrix = {
        str(impact).lower(): {str(u).lower(): str(p) for u, p in row.items()}
        for impact, row in data.items()
    }
    urgencies = {frozenset(row) for row in matrix.values()}
    if len(urgencies) != 1:
        raise ValueError(f"{path}: every impact must list the same urgencies ({example})")
    return matrix


@dataclass
class Incident:
    """An ITIL incident; `history` holds every status change with its time and actor."""

    id: str
    dedupe_key: str
    status: str
    priority: str
    impact: str
    urgency: str
    category: str
    configuration_item: str
    detected_by: str
    summary: str
    details: dict[str, Any]
    opened_at: str
    last_seen_at: str
    occurrences: int = 1
    resolved_at: str | None = None
    resolution: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _read_incident(path: Path) -> Incident:
    return Incident(**json.loads(path.read_text(encoding="utf-8")))


class IncidentStore:
    """Incidents as JSON files under `$CHURN_HOME/incidents/`, one per incident.

    Opening is idempotent per dedupe key while the incident is open, so a sensor that sees the
    same failure on every tick raises one incident (with an occurrence count), not hundreds.
    Opening and resolving are logged to `ops_log`, the caller's (a run's or a sensor tick's
    `ops_log` resource, a command's own); a store made without one only reads.
    """

    _ID_RE = re.compile(r"INC-\d{8}-\d{4,}")

    def __init__(
        self,
        settings: Settings,
        ops_log: OpsLog | None = None,
        priority_matrix: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.root = settings.incidents
        self.matrix = (
            {k: dict(v) for k, v in priority_matrix.items()}
            if priority_matrix is not None
            else load_priority_matrix(settings.priority_matrix)
        )
        self._ops_log = ops_log

    def priority(self, impact: str, urgency: str) -> str:
        """Priority for an impact and urgency from the matrix."""
        try:
            return self.matrix[impact.lower()][urgency.lower()]
        except KeyError:
            raise ValueError(
                f"no priority for impact={impact!r}, urgency={urgency!r}; known impacts: "
                f"{sorted(self.matrix)}, urgencies: {sorted(next(iter(self.matrix.values())))}"
            ) from None

    def open(
        self,
        dedupe_key: str,
        detected_by: str,
        category: str,
        configuration_item: str,
        impact: str,
        urgency: str,
        summary: str,
        details: Mapping[str, Any] | None = None,
    ) -> Incident:
        """Open an incident, or return the open one with the same `dedupe_key` (count bumped)."""
        ops, priority = self._log(), self.priority(impact, urgency)
        with self._lock():
            now = datetime.now(UTC)
            ts = utc_iso(now)
            for existing in self.list("open"):
                if existing.dedupe_key == dedupe_key:
                    existing.occurrences += 1
                    existing.last_seen_at = ts
                    self._save(existing)
                    return existing
            incident = Incident(
                id=next_id(self.root, "INC", now),
                dedupe_key=dedupe_key,
                status="open",
                priority=priority,
                impact=impact.lower(),
                urgency=urgency.lower(),
                category=category,
                configuration_item=configuration_item,
                detected_by=detected_by,
                summary=sanitize(summary),
                details=dict(details or {}),
                opened_at=ts,
                last_seen_at=ts,
                history=[{"ts": ts, "status": "open", "actor": detected_by, "note": ""}],
            )
            self._save(incident)
            ops.event(
                "incident.opened",
                f"Incident {incident.id} opened: {priority} {category} on {configuration_item}",
                level=logging.WARNING,
                component="incident",
                configuration_item=configuration_item,
                actor=detected_by,
                outcome="open",
            )
        return incident

    def resolve(self, incident_id: str, reason: str, *, actor: str | None = None) -> Incident:
        """Resolve one open incident by id (e.g. by an operator from the CLI)."""
        ops = self._log()
        with self._lock():
            incident = self.get(incident_id)
            if incident.status != "open":
                raise ValueError(f"{incident_id} is already {incident.status}")
            return self._resolve(incident, reason, actor or default_actor(), ops)

    def resolve_for(
        self, configuration_item: str, reason: str, *, actor: str | None = None
    ) -> list[Incident]:
        """Resolve every open incident of a CI, e.g. when that asset later materializes fine."""
        ops = self._log()
        with self._lock():
            return [
                self._resolve(incident, reason, actor or default_actor(), ops)
                for incident in self.list("open")
                if incident.configuration_item == configuration_item
            ]

    def get(self, incident_id: str) -> Incident:
        """One incident by id; the id is validated so CLI input cannot name other files."""
        if not self._ID_RE.fullmatch(incident_id):
            raise ValueError(f"{incident_id!r} is not an incident id like INC-20260101-0001")
        path = self.root / f"{incident_id}.json"
        if not path.exists():
            raise KeyError(f"no incident {incident_id} in {self.root}")
        return _read_incident(path)

    def _resolve(self, incident: Incident, reason: str, actor: str, ops: OpsLog) -> Incident:
        ts = utc_iso(datetime.now(UTC))
        incident.status = "resolved"
        incident.resolved_at = ts
        incident.resolution = sanitize(reason)
        incident.history.append(
            {"ts": ts, "status": "resolved", "actor": actor, "note": incident.resolution}
        )
        self._save(incident)
        ops.event(
            "incident.resolved",
            f"Incident {incident.id} resolved on {incident.configuration_item}",
            component="incident",
            configuration_item=incident.configuration_item,
            actor=actor,
            outcome="resolved",
        )
        return incident

    def _log(self) -> OpsLog:
        if self._ops_log is None:
            raise RuntimeError(
                "this IncidentStore was made without an ops log: it can list and show "
                "incidents, not open or resolve them (pass the caller's OpsLog)"
            )
        return self._ops_log

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        ensure_dir(self.root)
        return locked(self.root / ".lock")

    def _save(self, incident: Incident) -> None:
        write_json_atomic(self.root / f"{incident.id}.json", incident.to_dict())

    def list(self, status: str | None = None) -> list[Incident]:
        """All incidents, oldest first, optionally only those with `status` (open/resolved)."""
        paths = self.root.glob("INC-*.json") if self.root.exists() else ()
        incidents = [_read_incident(path) for path in paths]
        return sorted(
            (i for i in incidents if status is None or i.status == status),
            key=lambda incident: (incident.opened_at, incident.id),
        )


def _cell(text: object, width: int) -> str:
    clean = sanitize(text)
    return clean if len(clean) <= width else f"{clean[: width - 1]}~"


def format_incidents(incidents: Iterable[Incident]) -> str:
    """A fixed-width table of incidents for the terminal."""
    rows = list(incidents)
    if not rows:
        return "No incidents."
    lines = [
        f"{'ID':<18} {'PRI':<3} {'STATUS':<8} {'OPENED (UTC)':<19} {'SEEN':>4} {'CI':<28} SUMMARY"
    ]
    lines.extend(
        f"{i.id:<18} {i.priority:<3} {i.status:<8} {i.opened_at[:19]:<19} {i.occurrences:>4} "
        f"{_cell(i.configuration_item, 28):<28} {_cell(i.summary, 60)}"
        for i in rows
    )
    return "\n".join(lines)
