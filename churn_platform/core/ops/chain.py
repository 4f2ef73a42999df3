"""The ops log's hash chain: every record names its predecessor's hash, so edits show.

    logs/                       0750
      ops-YYYY-MM-DD.jsonl      0640  one JSON record per line, one file per UTC day, append-only
      chain_heads.json          0640  last seq + hash per file (detects truncation; backed up)
      .ops.lock                 0640  flock held around "read chain head, append"
    anchors/ops-chain.json      0640  copy of the chain heads outside logs/ (see core.ops.anchor)

This module writes those files: appending a linked record, pruning old files, re-anchoring
after a restore. `core.ops.verify` checks them; what a record says is `core.ops.log`'s business.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonEncoder

from churn_platform.core.ops.anchor import Link, anchor_document, read_anchor
from churn_platform.core.ops.files import (
    FILE_MODE,
    ensure_dir,
    fix_mode,
    locked,
    utc_iso,
    write_json_atomic,
)
from churn_platform.settings import Settings

GENESIS_HASH = "0" * 64
LOCK_NAME = ".ops.lock"
HEADS_NAME = "chain_heads.json"
ANCHOR_FILE = Path("anchors") / "ops-chain.json"
LOG_FILE_RE = re.compile(r"^ops-(\d{4}-\d{2}-\d{2})\.jsonl$")


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
        size = fix_mode(fd, FILE_MODE).st_size
        data = line.encode("ascii") + b"\n"
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # never glue a record onto a torn last line
        if os.write(fd, data) != len(data):
            raise OSError(f"short write appending to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def append_record(
    log_dir: Path, anchor: Path, render: Callable[[str, int, str], str]
) -> tuple[Path, str, dict[str, Any]]:
    """Append the line `render(ts, seq, prev_hash)` to today's file, linked to its predecessor.

    Why the lock: run workers, the daemon and the CLI append concurrently, and "read the head,
    append, update the head" must be one step or two records would claim the same predecessor.
    Returns the file, the line as written and its parsed record.
    """
    ensure_dir(log_dir)
    with locked(log_dir / LOCK_NAME):
        now = datetime.now(UTC)
        path = log_dir / f"ops-{now:%Y-%m-%d}.jsonl"
        heads = _chain_heads_or_empty(log_dir)
        anchored = _anchor_or_empty(anchor)
        head = heads.get(path.name)
        if head is None and path.name in anchored:  # heads deleted: chain on, visibly
            head = ChainHead(anchored[path.name].seq, anchored[path.name].hash, "")
        seq, prev_hash = _next_link(path, head)
        line = render(utc_iso(now), seq, prev_hash)
        entry = json.loads(line)
        _append_line(path, line)
        heads[path.name] = ChainHead(entry["seq"], entry["hash"], entry["ts"])
        _write_chain_heads(log_dir, heads)
        anchored[path.name] = Link(entry["seq"], entry["hash"])  # merged: never re-based
        _write_anchor(anchor, anchored)
    return path, line, entry


def remove_files_before(settings: Settings, cutoff: date) -> list[str]:
    """Delete the log files dated before `cutoff` with their heads and anchor entries."""
    log_dir = settings.logs
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
    return removed
