"""ITIL operations events: structured, hash-chained JSON lines, optionally forwarded to syslog.

One record per event, with fixed fields (`RECORD_FIELDS`) a SIEM can aggregate; the files, the
chain linking the records and its verification live in `core.ops.chain` and `core.ops.verify`.
Incidents (`core.ops.incidents`) and change records (`core.ops.changes`) log to the OpsLog
their caller passes: a run's or a sensor tick's `ops_log` resource, or a command's own.
Messages must not contain customer data: see `core.ops.privacy`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import numbers
import os
import pwd
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from logging.handlers import SysLogHandler
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from churn_platform.core.ops.chain import (
    anchor_path,
    append_record,
    record_hash,
    remove_files_before,
)
from churn_platform.core.ops.privacy import describe_error, pseudonym_key, pseudonymize, sanitize
from churn_platform.settings import Settings

SCHEMA_VERSION = 1

RECORD_FIELDS = (
    "schema_version", "ts", "seq", "level", "itil_event_type", "event_code", "message",
    "component", "configuration_item", "dagster_run_id", "asset_key", "partition",
    "mlflow_run_id", "model_version", "actor", "outcome", "metrics", "error_type",
    "error_message", "prev_hash", "hash",
)  # fmt: skip

_EVENT_CODE_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")


def default_actor() -> str:
    """The OS user running this process, from the effective uid (not spoofable env vars)."""
    uid = os.geteuid()
    try:
        return f"user:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"user:uid{uid}"


class _OpsJsonFormatter(JsonFormatter):
    """python-json-logger with a fixed field order; adds the record hash as the last field."""

    def __init__(self) -> None:
        fields = [
            "levelname" if name == "level" else name
            for name in RECORD_FIELDS
            if name not in ("schema_version", "hash")  # added as default / computed last
        ]
        super().__init__(
            fields,
            rename_fields={"levelname": "level"},
            defaults={"schema_version": SCHEMA_VERSION},
            json_serializer=functools.partial(json.dumps, separators=(",", ":"), allow_nan=False),
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for key, value in log_data.items():
            if isinstance(value, str):
                log_data[key] = sanitize(value)
        log_data["hash"] = record_hash(log_data)
        return log_data


class _ChainedFileHandler(logging.Handler):
    """Appends records to the day's file, each chained to its predecessor (`append_record`).

    Errors propagate (no `handleError`): an audit trail with silent gaps is worse than a failure.
    """

    def __init__(self, log_dir: Path, anchor: Path) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.anchor = anchor
        self.setFormatter(_OpsJsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        def render(ts: str, seq: int, prev_hash: str) -> str:
            record.__dict__.update(ts=ts, seq=seq, prev_hash=prev_hash)
            return self.format(record)

        path, line, entry = append_record(self.log_dir, self.anchor, render)
        record.__dict__.update(_ops_line=line, _ops_entry=entry, _ops_file=str(path))


class _ForwardFormatter(logging.Formatter):
    """Forwards the exact chained line, so the off-host copy can be checked against the file."""

    def format(self, record: logging.LogRecord) -> str:
        return record.__dict__["_ops_line"]


def _syslog_handler(address: str) -> SysLogHandler:
    if address.startswith("/"):
        handler = SysLogHandler(address=address)
    else:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(
                f"CHURN_SYSLOG_ADDRESS={address!r} is neither host:port nor a unix socket path"
            )
        handler = SysLogHandler(address=(host.strip("[]"), int(port)))
    handler.ident = "churn_platform.ops: "
    handler.setFormatter(_ForwardFormatter())
    return handler


@dataclass(frozen=True)
class OpsEvent:
    """One appended record and the file that holds it."""

    file: str
    record: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "record": self.record}


class OpsLog:
    """The operations log of one state root: structured, hash-chained, optionally forwarded.

    Uses a private `logging.Logger` rather than one from the global registry, because each
    instance writes to its own root and registry loggers would leak handlers between roots.
    Messages must not contain customer data: pass identifiers through `pseudonymize`.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._logger = logging.Logger("churn_platform.ops")  # not getLogger: see docstring
        self._logger.addHandler(_ChainedFileHandler(settings.logs, anchor_path(settings)))
        if settings.syslog_address:
            self._logger.addHandler(_syslog_handler(settings.syslog_address))
        self._key: str | None = None

    def event(
        self,
        code: str,
        message: str,
        *,
        level: int | str | None = None,
        component: str | None = None,
        configuration_item: str | None = None,
        outcome: str | None = None,
        metrics: Mapping[str, float] | None = None,
        actor: str | None = None,
        dagster_run_id: str | None = None,
        asset_key: object = None,
        partition: str | None = None,
        mlflow_run_id: str | None = None,
        model_version: str | int | None = None,
        error: BaseException | None = None,
        context: Any = None,
    ) -> OpsEvent:
        """Append one event; with a Dagster `context`, also summarize it in the run's event log.

        Run id, asset key, partition and actor (schedule, sensor, backfill) default to what the
        context knows. Level defaults to ERROR with an `error`, else INFO; outcome to
        failure/success; component to the first segment of `code`.
        """
        if not _EVENT_CODE_RE.fullmatch(code):
            raise ValueError(
                f"event code {code!r} must be dotted lowercase, e.g. training.completed"
            )
        levelno = _level(level, error)
        known = _dagster_fields(context) if context is not None else {}
        key = _asset_key_str(asset_key) or known.get("asset_key")
        error_type, error_message = describe_error(error) if error is not None else (None, None)
        fields = {
            "itil_event_type": _itil_event_type(levelno),
            "event_code": code,
            "component": component or code.split(".", 1)[0],
            "configuration_item": configuration_item or key,
            "dagster_run_id": dagster_run_id or known.get("dagster_run_id"),
            "asset_key": key,
            "partition": partition or known.get("partition"),
            "mlflow_run_id": mlflow_run_id,
            "model_version": None if model_version is None else str(model_version),
            "actor": actor or known.get("actor") or default_actor(),
            "outcome": outcome or ("failure" if error is not None else "success"),
            "metrics": _metrics(metrics),
            "error_type": error_type,
            "error_message": error_message,
        }
        record = self._logger.makeRecord(
            self._logger.name, levelno, __file__, 0, message, (), None, extra=fields
        )
        self._logger.handle(record)
        entry: dict[str, Any] = record.__dict__["_ops_entry"]
        if context is not None:
            context.log.log(levelno, _summary(entry))
        return OpsEvent(file=record.__dict__["_ops_file"], record=entry)

    def pseudonymize(self, value: object) -> str:
        """`pseudonymize` with this root's key (see `pseudonym_key`)."""
        if self._key is None:
            self._key = pseudonym_key(self.settings)
        return pseudonymize(value, self._key)

    def close(self) -> None:
        """Close the syslog socket, if any; the file handler holds nothing open between events."""
        for handler in list(self._logger.handlers):
            handler.close()
            self._logger.removeHandler(handler)

    def __enter__(self) -> OpsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _level(level: int | str | None, error: BaseException | None) -> int:
    if level is None:
        return logging.ERROR if error is not None else logging.INFO
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def _itil_event_type(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "exception"
    return "warning" if levelno >= logging.WARNING else "informational"


def _asset_key_str(asset_key: object) -> str | None:
    if asset_key is None:
        return None
    to_user_string = getattr(asset_key, "to_user_string", None)
    if to_user_string is not None:
        return str(to_user_string())
    if isinstance(asset_key, list | tuple):
        return "/".join(str(part) for part in asset_key)
    return str(asset_key)


def _metrics(metrics: Mapping[str, object] | None) -> dict[str, int | float | None]:
    """Numbers only, so a SIEM can aggregate them; NaN/inf become null to keep strict JSON."""
    result: dict[str, int | float | None] = {}
    for name, value in (metrics or {}).items():
        if not isinstance(value, numbers.Real):
            raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
        number = int(value) if isinstance(value, numbers.Integral) else float(value)
        result[sanitize(name, max_length=100)] = number if math.isfinite(number) else None
    return result


def _actor_from_tags(tags: Mapping[str, str]) -> str | None:
    for tag, kind in (
        ("dagster/schedule_name", "schedule"),
        ("dagster/sensor_name", "sensor"),
        ("dagster/backfill", "backfill"),
        ("user", "user"),
    ):
        if tags.get(tag):
            return f"{kind}:{tags[tag]}"
    return None


def _context_attr(context: Any, name: str) -> Any:
    """`context.<name>`, or None where the context does not know it.

    Contexts of directly invoked assets (unit tests) have no run and raise a Dagster error on
    `run`. The core never imports Dagster, so that error is recognised by its class name.
    """
    try:
        return getattr(context, name, None)
    except Exception as exc:
        if any(cls.__name__ == "DagsterError" for cls in type(exc).__mro__):
            return None
        raise


def _dagster_fields(context: Any) -> dict[str, str]:
    """Run id, single asset key, partition and actor from an op, asset or sensor context.

    Read by attribute from the context Dagster hands the caller, so the core needs no import.
    """
    fields: dict[str, str] = {}
    sensor_name = _context_attr(context, "sensor_name")
    if sensor_name:
        fields["actor"] = f"sensor:{sensor_name}"
    run = _context_attr(context, "run")
    if run is not None:
        fields["dagster_run_id"] = run.run_id
        actor = _actor_from_tags(run.tags)
        if actor:
            fields["actor"] = actor
    keys = _context_attr(context, "selected_asset_keys") or set()
    if len(keys) == 1:
        fields["asset_key"] = next(iter(keys)).to_user_string()
    if _context_attr(context, "has_partition_key"):
        fields["partition"] = context.partition_key
    return fields


def _summary(entry: Mapping[str, Any]) -> str:
    metrics = " ".join(f"{k}={v}" for k, v in (entry["metrics"] or {}).items())
    parts = [
        f"[ops] {entry['event_code']} outcome={entry['outcome']}",
        f"ci={entry['configuration_item']}" if entry["configuration_item"] else "",
        metrics,
        f"seq={entry['seq']}:",
        entry["message"],
    ]
    return " ".join(part for part in parts if part)


def prune_logs(settings: Settings, ops_log: OpsLog, now: datetime | None = None) -> list[str]:
    """Delete log files older than `log_retention_days` and their chain heads; returns names.

    The pruning itself is logged (`logs.pruned`), so a missing old file is explained in the log.
    """
    if not settings.logs.exists():
        return []
    cutoff = (now or datetime.now(UTC)).date() - timedelta(days=settings.log_retention_days)
    removed = remove_files_before(settings, cutoff)
    if removed:
        ops_log.event(
            "logs.pruned",
            f"Pruned operations log files dated before {cutoff}: {', '.join(removed)}",
            component="ops_log",
            configuration_item="ops_log",
            metrics={"files_removed": len(removed), "retention_days": settings.log_retention_days},
        )
    return removed
