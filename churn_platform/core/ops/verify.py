"""Verifying the ops log: walk every file's hash chain and compare it with heads and anchor.

`churn-platform logs verify` runs this. It only reads, under the chain's lock held shared, so
it sees each file and its head as one writer left them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churn_platform.core.ops.anchor import Link, compare, read_anchor
from churn_platform.core.ops.chain import (
    GENESIS_HASH,
    HEADS_NAME,
    LOCK_NAME,
    LOG_FILE_RE,
    ChainHead,
    read_chain_heads,
    record_hash,
)
from churn_platform.core.ops.files import locked


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
