"""ITIL operations events: a hash-chained JSON-lines log, pseudonyms, and the state-file helpers.

The log lives under the state root (`$CHURN_HOME`), readable by the service group only:

    logs/                       0750
      ops-YYYY-MM-DD.jsonl      0640  one JSON event per line, one file per UTC day, append-only
      chain_heads.json          0640  last seq + hash per file (detects truncation; backed up)
      .ops.lock                 0640  flock held around "read chain head, append"
    anchors/ops-chain.json      0640  copy of the chain heads outside logs/ (see core.ops.anchor)
    secrets/pseudonym.key       0600  HMAC key generated once when CHURN_PSEUDONYM_KEY is unset;
                                      back it up with the state or pseudonyms stop matching

Incidents (`churn_platform.incidents`) and change records (`churn_platform.changes`) are stored
with the helpers here (`ensure_dir`, `locked`, `next_id`, `write_json_atomic`) and log through
`ops_log_scope`, so every state file is written, locked and named the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import math
import numbers
import os
import pwd
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from logging.handlers import SysLogHandler
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonEncoder, JsonFormatter

from churn_platform.core.ops.anchor import Link, anchor_document, compare, read_anchor
from churn_platform.settings import Settings

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64
DIR_MODE = 0o750
FILE_MODE = 0o640
LOCK_NAME = ".ops.lock"
HEADS_NAME = "chain_heads.json"
ANCHOR_FILE = Path("anchors") / "ops-chain.json"
LOG_FILE_RE = re.compile(r"^ops-(\d{4}-\d{2}-\d{2})\.jsonl$")

RECORD_FIELDS = (
    "schema_version", "ts", "seq", "level", "itil_event_type", "event_code", "message",
    "component", "configuration_item", "dagster_run_id", "asset_key", "partition",
    "mlflow_run_id", "model_version", "actor", "outcome", "metrics", "error_type",
    "error_message", "prev_hash", "hash",
)  # fmt: skip

_EVENT_CODE_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
_UNSAFE_CHARS_RE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_QUOTED_LITERAL_RE = re.compile(r"(?<!\w)'[^'\n]*'(?!\w)")


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a `Z`, so timestamps sort as plain strings."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sanitize(text: object, max_length: int = 2000) -> str:
    """Escape control, line-separator and bidi characters and cap the length.

    Why: a newline, ANSI escape or U+2028 in a message (often from an exception raised on bad
    input) could fake extra records or rewrite what an operator's terminal shows.
    """
    escaped = _UNSAFE_CHARS_RE.sub(_escape_char, str(text))
    if len(escaped) > max_length:
        return f"{escaped[:max_length]}...[{len(escaped) - max_length} more chars]"
    return escaped


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def describe_error(error: BaseException) -> tuple[str, str]:
    """The exception's type and a sanitized message with quoted literals redacted.

    Why redact: engines quote the offending *value* (Spark's CAST_INVALID_INPUT, Python's KeyError
    and ValueError), and that value is often a customer identifier. Full detail stays in Dagster.
    """
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return name, sanitize(_QUOTED_LITERAL_RE.sub("'<redacted>'", str(error)), max_length=1000)


def pseudonymize(value: object, key: str | bytes) -> str:
    """Keyed HMAC-SHA256 of an identifier, as hex.

    Why keyed: a plain hash of a short customer id can be reversed by hashing every possible id;
    the HMAC is stable for correlating events but meaningless without the key.
    """
    if not key:
        raise ValueError("pseudonym key is empty; set CHURN_PSEUDONYM_KEY or use pseudonym_key()")
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(key_bytes, str(value).encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym_key(settings: Settings) -> str:
    """CHURN_PSEUDONYM_KEY, else a random key generated once at `secrets/pseudonym.key` (0600).

    Why a stored key: pseudonyms must match across processes and restarts. Concurrent first calls
    agree because the key is published with `os.link`, which never overwrites.
    """
    if settings.pseudonym_key:
        return settings.pseudonym_key
    path = settings.home / "secrets" / "pseudonym.key"
    if not path.exists():
        ensure_dir(path.parent, 0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pseudonym.key.")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_hex(32).encode("ascii"))
            os.fsync(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.close(fd)
            os.unlink(tmp)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{path} has mode {mode:o}; the pseudonym key must be 0600")
    key = path.read_text(encoding="ascii").strip()
    if not key:
        raise ValueError(f"{path} is empty; delete it to generate a new key (pseudonyms change)")
    return key


def default_actor() -> str:
    """The OS user running this process, from the effective uid (not spoofable env vars)."""
    uid = os.geteuid()
    try:
        return f"user:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"user:uid{uid}"


def canonical_json(data: Any) -> str:
    """Sorted, compact, ASCII JSON: the exact bytes the record hash is computed over."""
    return json.dumps(
        data,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
        cls=JsonEncoder,
    )


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the record without its `hash` field."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def ensure_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create `path` with exactly `mode`; mkdir alone would apply the process umask."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)
    return path


def _fix_mode(fd: int, mode: int) -> os.stat_result:
    info = os.fstat(fd)
    if stat.S_IMODE(info.st_mode) != mode:
        os.fchmod(fd, mode)
    return info


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` in one step, so readers and crashes never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def locked(lock_path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an flock on `lock_path`; shared locks on a missing lock file lock nothing.

    Why flock: it is per open file, so it serializes threads, processes and OpsLog instances
    alike, and the kernel releases it if a holder dies.
    """
    if shared and not lock_path.exists():
        yield
        return
    if shared:
        fd = os.open(lock_path, os.O_RDONLY)
    else:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        _fix_mode(fd, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def next_id(directory: Path, prefix: str, now: datetime) -> str:
    """The next free `PREFIX-YYYYMMDD-NNNN` in `directory`; hold the directory's lock around
    allocating it and writing the file, or two writers get the same id."""
    stem = f"{prefix}-{now:%Y%m%d}"
    taken = [int(p.stem.rsplit("-", 1)[1]) for p in directory.glob(f"{stem}-*.json")]
    return f"{stem}-{max(taken, default=0) + 1:04d}"


@dataclass(frozen=True)
class ChainHead:
    """The last record appended to one log file, kept outside the file to detect truncation."""

    seq: int
    hash: str
    ts: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def chain_heads_path(log_dir: Path) -> Path:
    """Where the chain heads live, for the backup module to archive."""
    return Path(log_dir) / HEADS_NAME


def read_chain_heads(log_dir: Path) -> dict[str, ChainHead]:
    """Chain head per log file name; raises ValueError if the heads file was damaged."""
    path = chain_heads_path(log_dir)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            name: ChainHead(int(h["seq"]), str(h["hash"]), str(h["ts"])) for name, h in data.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a valid chain-heads file: {exc}") from exc


def anchor_path(settings: Settings) -> Path:
    """The chain anchor of a state root: outside `logs/`, so deleting that folder spares it."""
    return settings.home / ANCHOR_FILE


def _anchor_or_empty(path: Path) -> dict[str, Link]:
    """Writers go on over a damaged anchor, as over damaged heads; verify_logs reports it."""
    try:
        return read_anchor(path) or {}
    except ValueError:
        return {}


def _write_anchor(path: Path, links: Mapping[str, Link]) -> None:
    ensure_dir(path.parent)
    write_json_atomic(path, anchor_document(links))


def reanchor(settings: Settings) -> None:
    """Anchor the chain heads as they are now; only for a restore that replaced the logs on
    purpose (the events after the backup are in the folder the restore moved aside)."""
    with locked(ensure_dir(settings.logs) / LOCK_NAME):
        heads = read_chain_heads(settings.logs)
        _write_anchor(anchor_path(settings), {n: Link(h.seq, h.hash) for n, h in heads.items()})


def _chain_heads_or_empty(log_dir: Path) -> dict[str, ChainHead]:
    """Writers go on over damaged heads: an audit trail must not stop; verify_logs reports it."""
    try:
        return read_chain_heads(log_dir)
    except ValueError:
        return {}


def _write_chain_heads(log_dir: Path, heads: Mapping[str, ChainHead]) -> None:
    write_json_atomic(chain_heads_path(log_dir), {n: h.to_dict() for n, h in heads.items()})


def _last_record(path: Path) -> dict[str, Any] | None:
    """The parsed last line of a log file, read from the end (files grow all day)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        end = handle.seek(0, os.SEEK_END)
        block = 8192
        while True:
            start = max(0, end - block)
            handle.seek(start)
            body = handle.read(end - start).rstrip(b"\n")
            if b"\n" in body or start == 0:
                break
            block *= 4
    try:
        record = json.loads(body.rsplit(b"\n", 1)[-1])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _next_link(path: Path, head: ChainHead | None) -> tuple[int, str]:
    """The seq and prev_hash for the next record of `path`.

    The recorded head wins over the file, so a truncated or edited file stays visibly broken
    instead of being silently re-chained. One exception: a valid record just past the head means
    a crash hit between appending and updating the heads, and is adopted.
    """
    last = _last_record(path)
    if head is None:
        if (
            last is not None
            and isinstance(last.get("seq"), int)
            and isinstance(last.get("hash"), str)
        ):
            return last["seq"] + 1, last["hash"]
        return 1, GENESIS_HASH
    if (
        last is not None
        and last.get("seq") == head.seq + 1
        and last.get("prev_hash") == head.hash
        and last.get("hash") == record_hash(last)
    ):
        return last["seq"] + 1, last["hash"]
    return head.seq + 1, head.hash


def _append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        size = _fix_mode(fd, FILE_MODE).st_size
        data = line.encode("ascii") + b"\n"
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # never glue a record onto a torn last line
        if os.write(fd, data) != len(data):
            raise OSError(f"short write appending to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """Appends records to the day's file, each chained to its predecessor, under an flock.

    Why the lock: run workers, the daemon and the CLI append concurrently, and "read the head,
    append, update the head" must be one step or two records would claim the same predecessor.
    Errors propagate (no `handleError`): an audit trail with silent gaps is worse than a failure.
    """

    def __init__(self, log_dir: Path, anchor: Path) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.anchor = anchor
        self.setFormatter(_OpsJsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        ensure_dir(self.log_dir)
        with locked(self.log_dir / LOCK_NAME):
            now = datetime.now(UTC)
            path = self.log_dir / f"ops-{now:%Y-%m-%d}.jsonl"
            heads = _chain_heads_or_empty(self.log_dir)
            anchored = _anchor_or_empty(self.anchor)
            head = heads.get(path.name)
            if head is None and path.name in anchored:  # heads deleted: chain on, visibly
                head = ChainHead(anchored[path.name].seq, anchored[path.name].hash, "")
            seq, prev_hash = _next_link(path, head)
            record.__dict__.update(ts=utc_iso(now), seq=seq, prev_hash=prev_hash)
            line = self.format(record)
            entry = json.loads(line)
            _append_line(path, line)
            heads[path.name] = ChainHead(entry["seq"], entry["hash"], entry["ts"])
            _write_chain_heads(self.log_dir, heads)
            anchored[path.name] = Link(entry["seq"], entry["hash"])  # merged: never re-based
            _write_anchor(self.anchor, anchored)
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


@contextlib.contextmanager
def ops_log_scope(settings: Settings, ops_log: OpsLog | None) -> Iterator[OpsLog]:
    """`ops_log` if the caller has one, else an OpsLog for this root that is closed afterwards."""
    if ops_log is not None:
        yield ops_log
        return
    owned = OpsLog(settings)
    try:
        yield owned
    finally:
        owned.close()


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
    import dagster as dg  # only reached with a Dagster context, so dagster is already loaded

    try:
        return getattr(context, name, None)
    except dg.DagsterError:  # contexts of directly invoked assets (unit tests) have no run
        return None


def _dagster_fields(context: Any) -> dict[str, str]:
    """Run id, single asset key, partition and actor from an op, asset or sensor context."""
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


def prune_logs(
    settings: Settings, now: datetime | None = None, *, ops_log: OpsLog | None = None
) -> list[str]:
    """Delete log files older than `log_retention_days` and their chain heads; returns names.

    The pruning itself is logged (`logs.pruned`), so a missing old file is explained in the log.
    """
    log_dir = settings.logs
    if not log_dir.exists():
        return []
    cutoff = (now or datetime.now(UTC)).date() - timedelta(days=settings.log_retention_days)
    removed: list[str] = []
    with locked(log_dir / LOCK_NAME):
        heads = _chain_heads_or_empty(log_dir)
        anchored = _anchor_or_empty(anchor_path(settings))
        for path in sorted(log_dir.iterdir()):
            match = LOG_FILE_RE.match(path.name)
            if match and date.fromisoformat(match.group(1)) < cutoff:
                path.unlink()
                heads.pop(path.name, None)
                anchored.pop(path.name, None)
                removed.append(path.name)
        if removed:
            _write_chain_heads(log_dir, heads)
            _write_anchor(anchor_path(settings), anchored)
    if removed:
        with ops_log_scope(settings, ops_log) as ops:
            ops.event(
                "logs.pruned",
                f"Pruned operations log files dated before {cutoff}: {', '.join(removed)}",
                component="ops_log",
                configuration_item="ops_log",
                metrics={
                    "files_removed": len(removed),
                    "retention_days": settings.log_retention_days,
                },
            )
    return removed


@dataclass(frozen=True)
class FileCheck:
    """Verification of one log file: `line` is the first broken record (1-based), if any."""

    file: str
    records: int
    line: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class VerifyReport:
    """Result of `verify_logs` for every file in a log directory."""

    log_dir: str
    files: list[FileCheck]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"log_dir": self.log_dir, "ok": self.ok, "files": [f.to_dict() for f in self.files]}


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-JSON constant {name}")


class _DuplicateKeyError(ValueError):
    """A JSON object names one key twice."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Why: the hash covers the parsed record, where the last of two equal keys wins; a forged
    key inserted before the original would show in the raw line yet leave the hash intact."""
    record = dict(pairs)
    if len(record) != len(pairs):
        raise _DuplicateKeyError("duplicate key")
    return record


def _record_problem(record: Any, prev_hash: str, expected_seq: int) -> str | None:
    if not (
        isinstance(record, dict)
        and isinstance(record.get("seq"), int)
        and isinstance(record.get("prev_hash"), str)
        and isinstance(record.get("hash"), str)
    ):
        return "record lacks its chain fields (seq, prev_hash, hash)"
    if record["hash"] != record_hash(record):
        return "hash does not match the record's content: record edited"
    if record["prev_hash"] != prev_hash:
        return "prev_hash does not match the preceding record: deleted, inserted or reordered"
    if record["seq"] != expected_seq:
        return f"seq {record['seq']} where {expected_seq} was expected"
    return None


def _first_break(lines: list[bytes]) -> tuple[int | None, str | None, str, int]:
    """Walk the chain: (line, reason) of the first break or (None, None); last hash and seq."""
    prev_hash, expected_seq = GENESIS_HASH, 1
    for lineno, raw in enumerate(lines, start=1):
        try:
            record = json.loads(
                raw, parse_constant=_reject_constant, object_pairs_hook=_reject_duplicates
            )
        except _DuplicateKeyError:
            return lineno, "a key appears twice: record forged", prev_hash, 0
        except ValueError:
            return lineno, "not a valid JSON record (line altered, split or torn)", prev_hash, 0
        problem = _record_problem(record, prev_hash, expected_seq)
        if problem:
            return lineno, problem, prev_hash, 0
        prev_hash, expected_seq = record["hash"], record["seq"] + 1
    return None, None, prev_hash, expected_seq - 1


def _verify_file(path: Path, head: ChainHead | None) -> FileCheck:
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    count = len(lines)
    line, reason, last_hash, last_seq = _first_break(lines)
    if reason is not None:
        return FileCheck(path.name, count, line, reason)
    if head is None:
        return FileCheck(path.name, count, None, f"no chain head in {HEADS_NAME} for this file")
    if last_seq < head.seq:
        reason = f"truncated: file ends at seq {last_seq}, the chain head records seq {head.seq}"
        return FileCheck(path.name, count, count + 1, reason)
    if last_seq > head.seq:
        reason = f"records after seq {head.seq} were appended without updating the chain head"
        return FileCheck(path.name, count, head.seq + 1, reason)
    if last_hash != head.hash:
        return FileCheck(path.name, count, count, "last record differs from the chain head")
    return FileCheck(path.name, count)


def verify_logs(
    log_dir: Path, anchor: Path | None = None, archived: Mapping[str, Link] | None = None
) -> VerifyReport:
    """Check every ops-*.jsonl chain and its recorded head; reports the first break per file.

    Detects edits, deletions, insertions, reordering, truncation and deleted files. With the
    state root's `anchor` file, also a deleted heads file or logs folder; `archived` (the anchor
    in the newest backup) speaks when the anchor file is gone too. It cannot detect a rewrite
    that also recomputes every later hash, the heads and the anchor: the syslog copy is the
    anchor for that.
    """
    log_dir = Path(log_dir)
    checks: list[FileCheck] = []
    with locked(log_dir / LOCK_NAME, shared=True):
        try:
            heads = read_chain_heads(log_dir)
        except ValueError as exc:
            heads = {}
            checks.append(FileCheck(HEADS_NAME, 0, None, str(exc)))
        paths = sorted(p for p in log_dir.glob("ops-*.jsonl") if LOG_FILE_RE.match(p.name))
        checks.extend(_verify_file(path, heads.get(path.name)) for path in paths)
        if anchor is not None:
            checks.extend(_anchor_checks(anchor, heads, bool(paths), archived or {}))
    present = {path.name for path in paths}
    checks.extend(
        FileCheck(name, 0, None, f"listed in {HEADS_NAME} but missing: file deleted")
        for name in sorted(heads)
        if name not in present
    )
    return VerifyReport(str(log_dir), checks)


def _anchor_checks(
    anchor: Path, heads: Mapping[str, ChainHead], has_logs: bool, archived: Mapping[str, Link]
) -> list[FileCheck]:
    try:
        anchored = read_anchor(anchor)
    except ValueError as exc:
        return [FileCheck(anchor.name, 0, None, str(exc))]
    if anchored is None:
        if not (heads or has_logs or archived):
            return []  # a state root that never logged anything
        return [FileCheck(anchor.name, 0, None, f"chain anchor missing: {anchor} was deleted")]
    current = {name: Link(head.seq, head.hash) for name, head in heads.items()}
    return [FileCheck(name, 0, None, why) for name, why in compare(anchored, current).items()]


def format_verify_report(report: VerifyReport) -> str:
    """One line per log file, then a verdict."""
    if not report.files:
        return f"No operations log files in {report.log_dir}."
    lines = []
    for check in report.files:
        status = "OK" if check.ok else "BROKEN"
        where = f" line {check.line}" if check.line is not None else ""
        problem = "" if check.ok else f"{where}: {check.reason}"
        lines.append(f"{status:<6} {check.file} ({check.records} records){problem}")
    broken = sum(not check.ok for check in report.files)
    verdict = "all chains intact" if not broken else f"{broken} broken"
    lines.append(f"{len(report.files)} checked in {report.log_dir}: {verdict}")
    return "\n".join(lines)
